"""The Fine-Tuning chapter, torch tab, through d2lft.

python examples/finetune_torch.py                       # the book: hotdog.zip, ImageNet weights
python examples/finetune_torch.py --data-dir DIR --pretrained PATH --image-size 112 --epochs 1
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _chapter import main  # noqa: E402

if __name__ == "__main__":
    main("torch")
