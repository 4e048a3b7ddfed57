#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, types, unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check builder distros tests bench
.venv/bin/mypy
exec .venv/bin/pytest -ra --durations=30 "$@"
