#!/usr/bin/env bash
# Sets everything up, then runs a real build of the bundled example:
# a Debian 12 image made Azure-ready, exported as RAW and fixed VHD, and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/azbuild validate examples/*.toml
image=$(bash scripts/make-cloud-image.sh | tail -n 1)
exec .venv/bin/azbuild build examples/cloud-image.toml --var "image=$image" --force "$@"
