"""The MXNet/Gluon backend (the chapter's MXNet tab): the functions of
:class:`d2lft.backends.Backend`, from this package's modules.

Every function exported here serves a caller in classic MXNet or in numpy mode
(``npx.set_np()``, as the book's MXNet chapters run): it runs in classic mode and
leaves the caller's mode as it was; networks come back in the caller's mode (see
:mod:`._npmode`)."""

from ._compat import import_mxnet

import_mxnet()  # before any module of this package imports mxnet: threads, numpy check

from . import data as _data  # noqa: E402
from . import export as _export  # noqa: E402
from . import inference as _inference  # noqa: E402
from . import models as _models  # noqa: E402
from . import runners as _runners  # noqa: E402
from . import runtime as _runtime  # noqa: E402
from . import weights as _weights  # noqa: E402
from ._npmode import builder, entry, runner_entry  # noqa: E402

ARCHS = _models.ARCHS
DEFAULT_ARCH = _models.DEFAULT_ARCH

image_folder = entry(_data.image_folder)
make_loaders = entry(_data.make_loaders)
test_augs = entry(_data.test_augs)
train_augs = entry(_data.train_augs)
head_arrays = entry(_inference.head_arrays)
predict_folder = entry(_inference.predict_folder)
predict_proba = entry(_inference.predict_proba)
set_head_rows = entry(_inference.set_head_rows)
build_finetune_net = builder(_models.build_finetune_net)
build_scratch_net = builder(_models.build_scratch_net)
head = entry(_models.head)
imagenet_classes = entry(_models.imagenet_classes)
num_outputs = entry(_models.num_outputs)
evaluate_accuracy = entry(_runners.evaluate_accuracy)
make_runner = runner_entry(_runners.make_runner)
all_devices = entry(_runtime.all_devices)
export_onnx = entry(_export.export_onnx)
join_job = entry(_runtime.join_job)
resolve_precision = entry(_runtime.resolve_precision)
seed_everything = entry(_runtime.seed_everything)
seed_framework = entry(_runtime.seed_framework)
load_state_arrays = entry(_weights.load_state_arrays)
logits = entry(_weights.logits)
read_native_weights = entry(_weights.read_native_weights)
state_arrays = entry(_weights.state_arrays)

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
