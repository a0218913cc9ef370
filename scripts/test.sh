#!/usr/bin/env bash
# Set up (.venv with both frameworks), check lint and formatting (ruff), and run the
# whole suite, offline, on the CPU (the CI command).
#
#   bash scripts/test.sh            # the full suite (a worker per processor, at most 4)
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
# The full suite, one test file per worker (pytest-xdist, --dist loadfile: a file's
# module fixtures are built once and its tests stay in order): a worker per processor,
# at most 4, since each one holds both frameworks (about 1.5 GB). D2LFT_TEST_WORKERS=0
# runs it in this one process.
WORKERS=${D2LFT_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
if [ "$WORKERS" -gt 1 ]; then
  exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile tests "$@"
fi
exec .venv/bin/python -m pytest -q tests "$@"
