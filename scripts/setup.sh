#!/usr/bin/env bash
# Create .venv (if missing) and install d2lft with both backends, the test tools and
# the documentation site's tools (mkdocs build --strict runs in the suite).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e ".[all,test,docs]"
# The book's package, for tests/test_book_oracle.py: its pins (old numpy, torch,
# requests, scipy) conflict with both backends, so without them; the `test` extra
# above brings what it imports (IPython, matplotlib-inline, pandas, requests).
.venv/bin/python -m pip install -q --no-deps "d2l==1.0.3"
