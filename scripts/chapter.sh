#!/usr/bin/env bash
# Set up .venv and run the chapter's experiment in both backends (fine-tune, scratch,
# comparison). Extra arguments go to both examples, e.g.
#   bash scripts/chapter.sh --data-dir ~/hotdog --pretrained none --image-size 112 --epochs 1
# The install (scripts/setup.sh) runs once: again only when setup.cfg, pyproject.toml
# or setup.sh change, or when .venv's d2lft is not this checkout's (delete
# .venv/.d2lft-installed to force it). Stopped (Ctrl-C, SIGTERM), it keeps the finished
# runs' results in runs/chapter/ and exits with status 130.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.d2lft-installed
want=$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
  && .venv/bin/python -c 'import os, sys, d2lft; r = os.path.realpath
sys.exit(os.path.dirname(r(d2lft.__file__)) != r(os.path.join(sys.argv[1], "d2lft")))' \
    "$(pwd -P)" 2>/dev/null; then
  echo "chapter.sh: .venv is installed (rm $stamp to reinstall)"
else
  bash scripts/setup.sh
  echo "$want" >"$stamp"
fi
.venv/bin/python examples/finetune_torch.py --out runs/chapter "$@"
.venv/bin/python examples/finetune_mxnet.py --out runs/chapter "$@"
