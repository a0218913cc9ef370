#!/usr/bin/env bash
# Set up (.venv with both frameworks), check lint and formatting (ruff), and run the
# whole suite, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q tests "$@"
