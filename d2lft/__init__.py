"""d2lft: the Fine-Tuning chapter of *Dive into Deep Learning*, one API, two engines.

    import d2lft
    d2lft.use('mxnet')            # or 'torch'
    train_imgs, test_imgs = d2lft.load_hotdog()
    net = d2lft.build_finetune_net()
    d2lft.train_fine_tuning(net, 0.01)

This module re-exports the whole public API and nothing else; importing it imports
neither framework (a backend's package is imported when a function first needs it).
The code lives in: `api` (the chapter's functions), `data` (hub, folders, images,
splits, the fast pipeline's decoded images), `engine` (options, the epoch loop,
callbacks, History), `io` (portable weights, checkpoints), `inference` (predict,
evaluate), `deploy` (ONNX export and prediction with onnxruntime alone; the local
web page of `d2lft serve`), `exercises` (lr sweeps, head initialisation), `plot`,
`backends` (the registry and one package per framework) and `cli`.
"""

from ._version import __version__
from .api import (
    book_learning_rate,
    build_finetune_net,
    build_scratch_net,
    equivalent_lr,
    equivalent_sgd,
    image_folder,
    load_hotdog,
    load_params,
    loss_reduction,
    plan_run,
    save_params,
    test_augs,
    train_augs,
    train_fine_tuning,
    train_on_batches,
)
from .backends import BackendSpec, backend_of, get_backend, register, seed, use, using
from .backends import names as _backend_names
from .backends import specs as _backend_specs
from .data.folders import DataLayoutError
from .data.hub import HOTDOG_SHA1, HOTDOG_URL, DownloadError, download_hotdog
from .data.images import BadImageError
from .data.split import class_names, split_image_folder
from .deploy.onnx import OnnxError, OnnxModel, export, load_onnx
from .deploy.serve import serve
from .engine.callbacks import Callback, EarlyStopping, RunState
from .engine.history import History
from .engine.loop import TrainingDiverged
from .engine.options import (
    BOOK_WEIGHT_DECAY,
    AutoPipeline,
    BookLoop,
    FastPipeline,
    FixedBatches,
    RunSpec,
    TrainPlan,
)
from .exercises.head_init import init_head_from_source
from .exercises.sweep import lr_sweep
from .inference import Evaluation, Prediction, evaluate, predict
from .io.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .io.weights import read_params
from .netinfo import NetInfo, net_info
from .plot import plot_confusion, plot_history, plot_lr_sweep, plot_predictions, show_images

#: The registered backends' names (see :func:`d2lft.backends.register`).
BACKENDS = _backend_names()
#: The learning rates of the book's two tabs (fine-tune / scratch), from the registry.
BOOK_LEARNING_RATES = {
    s.name: {"finetune": s.lr_finetune, "scratch": s.lr_scratch} for s in _backend_specs()
}
#: How each backend reduces the per-example losses before the gradient.
LOSS_REDUCTION = {s.name: s.loss_reduction for s in _backend_specs()}

__all__ = [
    "BACKENDS",
    "BOOK_LEARNING_RATES",
    "BOOK_WEIGHT_DECAY",
    "LOSS_REDUCTION",
    "HOTDOG_SHA1",
    "HOTDOG_URL",
    "AutoPipeline",
    "BackendSpec",
    "BadImageError",
    "BookLoop",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "DataLayoutError",
    "DownloadError",
    "EarlyStopping",
    "Evaluation",
    "FastPipeline",
    "FixedBatches",
    "History",
    "NetInfo",
    "OnnxError",
    "OnnxModel",
    "Prediction",
    "RunSpec",
    "RunState",
    "TrainPlan",
    "TrainingDiverged",
    "__version__",
    "backend_of",
    "book_learning_rate",
    "build_finetune_net",
    "build_scratch_net",
    "class_names",
    "download_hotdog",
    "equivalent_lr",
    "equivalent_sgd",
    "evaluate",
    "export",
    "get_backend",
    "image_folder",
    "init_head_from_source",
    "load_checkpoint",
    "load_hotdog",
    "load_onnx",
    "load_params",
    "loss_reduction",
    "lr_sweep",
    "net_info",
    "plan_run",
    "plot_confusion",
    "plot_history",
    "plot_lr_sweep",
    "plot_predictions",
    "predict",
    "read_checkpoint",
    "read_params",
    "register",
    "save_checkpoint",
    "save_params",
    "seed",
    "serve",
    "show_images",
    "split_image_folder",
    "test_augs",
    "train_augs",
    "train_fine_tuning",
    "train_on_batches",
    "use",
    "using",
]
