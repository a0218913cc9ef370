"""The PyTorch backend (the chapter's PyTorch tab): the functions of
:class:`d2lft.backends.Backend`, from this package's modules."""

import sys

import torch as _torch

from ..._sys.threads import torch_default_threads

if "mxnet" in sys.modules:  # MXNet's import left OpenMP at 1 thread: give torch its default
    _torch.set_num_threads(torch_default_threads())

from .data import image_folder, make_loaders, test_augs, train_augs  # noqa: E402
from .export import export_onnx  # noqa: E402
from .inference import head_arrays, predict_folder, predict_proba, set_head_rows  # noqa: E402
from .models import (
    ARCHS,
    DEFAULT_ARCH,
    build_finetune_net,
    build_scratch_net,  # noqa: E402
    head,
    imagenet_classes,
    num_outputs,
)
from .runners import evaluate_accuracy, make_runner  # noqa: E402
from .runtime import (
    all_devices,
    join_job,
    param_groups,
    resolve_precision,  # noqa: E402
    seed_everything,
    seed_framework,
)
from .weights import load_state_arrays, logits, read_native_weights, state_arrays  # noqa: E402

__all__ = [
    "ARCHS",
    "DEFAULT_ARCH",
    "all_devices",
    "build_finetune_net",
    "build_scratch_net",
    "evaluate_accuracy",
    "export_onnx",
    "head",
    "head_arrays",
    "image_folder",
    "imagenet_classes",
    "join_job",
    "load_state_arrays",
    "logits",
    "make_loaders",
    "make_runner",
    "num_outputs",
    "param_groups",
    "predict_folder",
    "predict_proba",
    "read_native_weights",
    "resolve_precision",
    "seed_everything",
    "seed_framework",
    "set_head_rows",
    "state_arrays",
    "test_augs",
    "train_augs",
]
