#!/usr/bin/env bash
# Create .venv (if missing) and install d2lft with both backends, its extras (onnx,
# serve), the test tools and the documentation site's tools (mkdocs build --strict runs
# in the suite); and, as root, Debian's Chromium for the browser tests.
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
# A headless browser for tests/test_serve.py (Debian's Chromium, driven by Playwright):
# installed when missing and this runs as root with apt-get (CI); otherwise, or when
# the install fails, that one test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium fonts-dejavu-core >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
           && apt-get install -y -qq chromium fonts-dejavu-core >/dev/null 2>&1; } \
      || echo "setup.sh: could not install chromium: the browser test will be skipped" >&2
  else
    echo "setup.sh: no chromium (as root: apt-get install chromium): the browser test" \
      "will be skipped" >&2
  fi
fi
