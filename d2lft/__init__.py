"""d2lft: the Fine-Tuning chapter of *Dive into Deep Learning*, one API, two engines.

    import d2lft
    d2lft.use('mxnet')            # or 'torch'
    train_imgs, test_imgs = d2lft.load_hotdog()
    net = d2lft.build_finetune_net()
    d2lft.train_fine_tuning(net, 0.01)

This module is the whole public API. Importing it imports neither framework: the
active backend (`d2lft.backends.mxnet` or `d2lft.backends.torch`) is imported when a
function first needs it.
"""
from __future__ import annotations

from ._backend import BACKENDS, get_backend, seed, use, using
from ._backend import current as _current, for_net as _for_net
from ._backend import _seed_framework
from .data import (BadImageError, DataLayoutError, DownloadError, HOTDOG_SHA1, HOTDOG_URL,
                   download_hotdog, check_image_folder as _check_image_folder,
                   resolve_data_dir as _resolve_data_dir)
from .history import History
from .plot import plot_history, show_images
from .training import TrainingDiverged, check_args as _check_args
from .training import check_speed_options as _check_speed_options
from . import weights as _weights
from .weights import read_params
from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, read_checkpoint,
                         save_checkpoint)
from .head_init import init_head_from_source
from .plot import plot_confusion, plot_lr_sweep, plot_predictions
from .predict import Evaluation, Prediction, evaluate, predict
from .split import class_names, resolve_images as _resolve_images, split_image_folder
from .sweep import lr_sweep

__version__ = "0.1.0"

#: The learning rates of the book's two tabs (fine-tune / scratch).
BOOK_LEARNING_RATES = {
    "mxnet": {"finetune": 0.01, "scratch": 0.1},
    "torch": {"finetune": 5e-5, "scratch": 5e-4},
}

#: How each backend reduces the per-example losses before the gradient.
LOSS_REDUCTION = {"mxnet": "mean", "torch": "sum"}

#: The weight decay of both tabs (SGD, `wd` / `weight_decay`).
BOOK_WEIGHT_DECAY = 0.001


def load_hotdog(root=None, *, url=None, sha1=None, skip_bad=False):
    """Download (once) the hotdog data and return `(train_imgs, test_imgs)`, the active
    backend's image-folder datasets of raw images, as in the chapter.
    `skip_bad=True` leaves unreadable images out with a warning (see :func:`image_folder`)."""
    folder = download_hotdog(root, url=url, sha1=sha1)
    backend = _current()
    return (backend.image_folder(folder / "train", skip_bad=skip_bad),
            backend.image_folder(folder / "test", skip_bad=skip_bad))


def image_folder(path, transform=None, *, skip_bad=False):
    """The active backend's image-folder dataset over one split folder
    (`path/<class>/*.jpg`). Both backends read the same files
    (`d2lft.data.IMAGE_SUFFIXES`) as 8-bit RGB. An unreadable image raises
    :class:`BadImageError` naming it (its header is checked here, its body when it is
    read); `skip_bad=True` decodes every image now and leaves unreadable ones out with
    a warning."""
    return _current().image_folder(path, transform, skip_bad=skip_bad)


def _check_size(image_size):
    _check_args(1.0, 1, 1, image_size)


def train_augs(image_size=224):
    """The chapter's training augmentation (RandomResizedCrop, flip, normalise)."""
    _check_size(image_size)
    return _current().train_augs(image_size)


def test_augs(image_size=224):
    """The chapter's test transform (resize to image_size*256/224, center crop)."""
    _check_size(image_size)
    return _current().test_augs(image_size)


def _seed_build(backend, seed):
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        _seed_framework(backend, seed)


def build_finetune_net(num_classes=2, pretrained=True, arch=None, *, seed=None):
    """Pretrained ResNet-18 features and a new Xavier-initialised head with a 10x
    learning-rate multiplier. `pretrained`: True (the framework's ImageNet weights),
    a weights file path, or False. `arch=None` is the chapter's choice for the active
    backend (MXNet `resnet18_v2`, torch `resnet18`). `seed`: seed the framework's
    generator first, so the new head (and random features) are the same every time
    (else they come from the generator's state: see :func:`seed`). Every parameter is
    initialised when this returns (MXNet's deferred initialisation is completed)."""
    backend = _current()
    _seed_build(backend, seed)
    return backend.build_finetune_net(num_classes=num_classes, pretrained=pretrained,
                                      arch=arch)


def build_scratch_net(num_classes=2, arch=None, *, seed=None):
    """The same architecture with random initialisation (the chapter's scratch_net);
    `seed` as in :func:`build_finetune_net`."""
    backend = _current()
    _seed_build(backend, seed)
    return backend.build_scratch_net(num_classes=num_classes, arch=arch)


def train_fine_tuning(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
                      data_dir=None, image_size=224, devices=None, seed=None,
                      num_workers=None, verbose=True, weight_decay=None, deterministic=False,
                      val_fraction=None, checkpoint_dir=None, resume=None,
                      pipeline="book", freeze=False, precision="auto", compile=False,
                      decode_cache="memory", feature_passes=1):
    """Train `net` the way the active backend's tab of the chapter does and return a
    :class:`History`.

    `data_dir`: a folder (or .zip) with `train/<class>/` and `test/<class>/`; default
    the hotdog data (downloaded once). `devices`: default all GPUs, else the CPU.
    `param_group=False` trains every layer at `learning_rate` (the book's scratch run).
    `seed` makes shuffling and augmentation repeatable; the initial weights were fixed
    when the net was built (the builders' `seed=`). To repeat a whole run exactly,
    either call ``d2lft.seed(n)`` once at the top of the script, or pass `seed=` to the
    builder and here.
    The two backends scale gradients differently (see :func:`equivalent_sgd`).
    `weight_decay`: default the book's 0.001 (:data:`BOOK_WEIGHT_DECAY`).
    `deterministic=True` feeds both backends the same batches: no augmentation (train
    images get the test transform), one shared PIL decode-resize-crop pipeline, and a
    shuffle order drawn from `seed` (default 0) by numpy, so that with the same weights
    (:func:`save_params` / :func:`load_params`) and :func:`equivalent_sgd` settings the
    two engines' loss curves agree step by step (see docs/parity.md).

    Your own images: `data_dir` may also be a folder (or .zip) of class subfolders
    with `val_fraction=0.2` (a deterministic split, see :func:`split_image_folder`).
    The data's class names and `image_size` travel with the net (`net.classes`,
    `net.image_size`, then checkpoints and :func:`predict`).
    `checkpoint_dir`: write a checkpoint there after every epoch (atomically; after
    Ctrl-C the last complete one is kept). `resume`: a checkpoint file or folder (or
    True: `checkpoint_dir`) to continue from; with the same `seed` and settings the
    result equals the uninterrupted run's.

    Speed (docs/speed.md): `pipeline='fast'` decodes each image once
    (`decode_cache`: 'memory', 'disk', a folder, or None), draws the book's
    RandomResizedCrop + flip per sample but resizes in batches (on the GPU there),
    evaluates on the book's exact test batches, and uses channels_last (torch), bf16
    autocast where the hardware has it (`precision='auto'|'fp32'|'bf16'`) and, with
    `compile=True`, torch.compile. `pipeline='book'` (default) is the chapter's loop.
    `freeze=True` (exercise 3) trains only the head, the backbone in eval mode; with
    `pipeline='fast'` the backbone's features are computed once for the test set and
    `feature_passes` times (augmented passes, reused in turn) for the training set.
    The History records `trained_params`, `peak_host_mb` and `peak_device_mb`.
    During the call freed memory stays in the heap (glibc; `D2LFT_RETAIN_HEAP=0` turns
    it off, `History.config['retain_heap']` says whether it was on), so the CPU steps do
    not page-fault their activations in anew; malloc's defaults return afterwards.
    """
    _check_speed_options(pipeline, freeze, precision, feature_passes, deterministic,
                         compile)
    learning_rate, batch_size, num_epochs, image_size = _check_args(
        learning_rate, batch_size, num_epochs, image_size)
    backend = _for_net(net)
    if val_fraction is not None:
        if data_dir is None:
            raise ValueError("val_fraction needs data_dir= (a folder of class subfolders)")
        folder = _resolve_images(data_dir, val_fraction)
    else:
        folder = _resolve_data_dir(data_dir) if data_dir is not None else download_hotdog()
    _check_head_fits(backend, net, folder)
    _attach_data_info(net, folder, image_size)
    if resume is True:
        if checkpoint_dir is None:
            raise ValueError("resume=True continues from checkpoint_dir=, which is not set")
        resume = checkpoint_dir
    from ._heap import retain
    with retain() as retained:  # freed blocks reused, not mapped again (docs/speed.md)
        history = backend.train_fine_tuning(
            net, learning_rate, batch_size, num_epochs, param_group, data_dir=folder,
            image_size=image_size, devices=devices, checkpoint_dir=checkpoint_dir,
            resume=resume, seed=seed, num_workers=num_workers, verbose=verbose,
            weight_decay=_check_wd(weight_decay), deterministic=bool(deterministic),
            pipeline=pipeline, freeze=bool(freeze), precision=precision,
            compile=bool(compile), decode_cache=decode_cache, feature_passes=feature_passes)
    history.config["retain_heap"] = retained
    history.config["val_fraction"] = val_fraction
    return history


def _attach_data_info(net, folder, image_size):
    """Class names and image size travel with the net (to checkpoints and predict)."""
    from .predict import backend_predict
    classes = _check_image_folder(folder / "train")
    if backend_predict(net).num_outputs(net) == len(classes):
        net.classes = classes
    net.image_size = image_size


def _check_wd(weight_decay):
    if weight_decay is None:
        return BOOK_WEIGHT_DECAY
    import math
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0 (the book uses "
                         f"{BOOK_WEIGHT_DECAY}), got {weight_decay!r}")
    return float(weight_decay)


def _check_head_fits(backend, net, folder):
    """A clear error, before any training, when the data has more classes than the
    network has outputs (labels would index past the head)."""
    classes = _check_image_folder(folder / "train")
    try:
        layer = backend.head(net)
    except Exception:  # not one of d2lft's nets: nothing to compare with
        return
    outputs = getattr(layer, "out_features", getattr(layer, "_units", None))
    if isinstance(outputs, int) and len(classes) > outputs:
        raise ValueError(f"the data in {folder} has {len(classes)} classes {classes} but the "
                         f"network's head has {outputs} outputs: build the network with "
                         f"num_classes={len(classes)}")


def equivalent_lr(learning_rate, *, batch_size, from_backend, to_backend):
    """The learning rate that makes `to_backend`'s *gradient* step equal
    `from_backend`'s: torch_lr = mxnet_lr / batch_size.

    The MXNet tab averages the per-example losses over the batch
    (`trainer.step(batch_size)`); the PyTorch tab sums them (`l.sum().backward()`).
    Both engines multiply weight decay by the learning rate, so this alone leaves
    the decay term `batch_size` times weaker (or stronger): for whole SGD steps that
    agree, use :func:`equivalent_sgd`, which scales the weight decay too.
    """
    return equivalent_sgd(learning_rate, 0.0, batch_size=batch_size,
                          from_backend=from_backend, to_backend=to_backend)[0]


def equivalent_sgd(learning_rate, weight_decay=BOOK_WEIGHT_DECAY, *, batch_size,
                   from_backend, to_backend):
    """`(learning_rate, weight_decay)` for `to_backend` that make its SGD step equal
    `from_backend`'s, batch for batch.

    MXNet: w -= lr_mx * (mean_i g_i + wd_mx * w);  torch: w -= lr_t * (sum_i g_i + wd_t * w).
    They agree when lr_t = lr_mx / B and wd_t = wd_mx * B (B = `batch_size`); the
    head's 10x multiplier scales both sides alike. A last, smaller batch of b < B
    examples breaks the match (MXNet divides by b): use batch counts that divide
    the data, or drop the last batch. Example: the MXNet tab's (0.01, 0.001) at
    B=128 is torch's (7.8125e-05, 0.128).
    """
    for b in (from_backend, to_backend):
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; valid backends are {BACKENDS}")
    learning_rate, batch_size, _, _ = _check_args(learning_rate, batch_size, 1)
    weight_decay = _check_wd(weight_decay)
    if from_backend == to_backend:
        return learning_rate, weight_decay
    if from_backend == "mxnet":
        return learning_rate / batch_size, weight_decay * batch_size
    return learning_rate * batch_size, weight_decay / batch_size


def save_params(net, path, metadata=None):
    """Write all of `net`'s parameters and BatchNorm statistics (either backend) to
    `path`: a safetensors file with canonical names and str->str `metadata` (arch,
    backend, format version added), written atomically. Returns the path.
    A file saved by one backend loads into the other (:func:`load_params`)."""
    return _weights.save_params(net, path, metadata)


def load_params(net, path):
    """Set all of `net`'s parameters and BatchNorm statistics from `path`: a file from
    :func:`save_params` (either backend), a torch state_dict or a Gluon .params file.
    A missing, extra or misshapen parameter raises ValueError naming it, changing
    nothing. Returns `net`. (:func:`read_params` returns the arrays and metadata.)"""
    return _weights.load_params(net, path)


__all__ = [
    "BACKENDS", "BOOK_LEARNING_RATES", "BOOK_WEIGHT_DECAY", "LOSS_REDUCTION", "BadImageError", "DataLayoutError",
    "DownloadError",
    "HOTDOG_SHA1", "HOTDOG_URL", "History", "TrainingDiverged", "build_finetune_net",
    "build_scratch_net", "download_hotdog", "equivalent_lr", "get_backend", "image_folder",
    "load_hotdog", "plot_history", "show_images", "test_augs", "train_augs",
    "train_fine_tuning", "use", "using", "seed",
    "equivalent_sgd", "load_params", "read_params", "save_params",
    "Checkpoint", "CheckpointError", "Evaluation", "Prediction", "class_names", "evaluate",
    "init_head_from_source", "load_checkpoint", "lr_sweep", "plot_confusion", "plot_lr_sweep",
    "plot_predictions", "predict", "read_checkpoint", "save_checkpoint", "split_image_folder",
]
