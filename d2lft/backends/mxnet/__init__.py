"""The MXNet/Gluon backend (the chapter's MXNet tab)."""
NAME = "mxnet"

from ._compat import import_mxnet  # noqa: E402

import_mxnet()

from .data import image_folder, train_augs, test_augs, make_loaders  # noqa: E402,F401
from .models import ARCHS, DEFAULT_ARCH, build_finetune_net, build_scratch_net, head  # noqa: E402,F401
from .train import train_fine_tuning, all_devices, evaluate_accuracy  # noqa: E402,F401
