#!/usr/bin/env bash
# Set up .venv and run the chapter's experiment in both backends (fine-tune, scratch,
# comparison). Extra arguments go to both examples, e.g.
#   bash scripts/chapter.sh --data-dir ~/hotdog --pretrained none --image-size 112 --epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/finetune_torch.py --out runs/chapter "$@"
.venv/bin/python examples/finetune_mxnet.py --out runs/chapter "$@"
