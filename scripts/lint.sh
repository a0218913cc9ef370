#!/usr/bin/env bash
# The lint and format check (ruff, configured in pyproject.toml); scripts/test.sh runs
# it before the tests. `ruff check --fix . && ruff format .` fixes most findings.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF=${RUFF:-.venv/bin/ruff}
"$RUFF" check .
"$RUFF" format --check .
