"""The PyTorch backend (the chapter's PyTorch tab)."""
import sys

import torch as _torch

from ..._threads import torch_default_threads

NAME = "torch"

if "mxnet" in sys.modules:  # MXNet's import left OpenMP at 1 thread: give torch its default
    _torch.set_num_threads(torch_default_threads())

from .data import image_folder, train_augs, test_augs, make_loaders  # noqa: E402,F401
from .models import ARCHS, DEFAULT_ARCH, build_finetune_net, build_scratch_net, head  # noqa: E402,F401
from .train import train_fine_tuning, all_devices, evaluate_accuracy, param_groups  # noqa: E402,F401
