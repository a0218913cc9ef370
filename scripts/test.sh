#!/usr/bin/env bash
# Set up (.venv with both frameworks), check lint and formatting (ruff), and run the
# whole suite, offline, on the CPU (the CI command).
#
#   bash scripts/test.sh            # the full suite
#   bash scripts/test.sh --quick    # the quick tier: tests/conftest.py's QUICK table, no
#                                   # slow surface (setup only if .venv is missing)
#   bash scripts/test.sh -m torch   # further arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK="quick and not (slow or distributed or browser or notebooks or docs_site)"
if [ "${1:-}" = "--quick" ]; then
  shift
  [ -x .venv/bin/python ] || bash scripts/setup.sh
  bash scripts/lint.sh
  exec .venv/bin/python -m pytest -q tests -m "$QUICK" "$@"
fi
bash scripts/setup.sh
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q tests "$@"
