#!/usr/bin/env bash
# Set up (.venv with both frameworks) and run the whole suite, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q tests "$@"
