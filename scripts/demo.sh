#!/usr/bin/env bash
# Sets everything up, then runs a real build of the bundled demo: the whole ISO
# path. A Debian 12 test installer ISO is built (once, cached), its installer runs
# unattended with the preseed azbuild renders, and the installed system is made
# Azure-ready, exported as RAW and fixed VHD, and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/azbuild validate examples/*.toml
iso=$(bash scripts/make-test-installer-iso.sh | tail -n 1)
dir=$(dirname "$iso")
# SHA256SUMS lists the printed (versioned) name and the stable azbuild-test-installer.iso.
exec .venv/bin/azbuild build examples/demo.toml --var "iso=$iso" \
  --var "checksum=file:$dir/SHA256SUMS" --force "$@"
