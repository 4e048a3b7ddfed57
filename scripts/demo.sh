#!/usr/bin/env bash
# Sets everything up, then runs a real build of the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/azbuild validate examples/*.toml
