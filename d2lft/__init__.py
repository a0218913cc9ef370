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

from ._backend import BACKENDS, get_backend, use, using
from ._backend import current as _current, for_net as _for_net
from .data import (DataLayoutError, DownloadError, HOTDOG_SHA1, HOTDOG_URL, download_hotdog,
                   resolve_data_dir as _resolve_data_dir)
from .history import History
from .plot import plot_history, show_images
from .training import TrainingDiverged, check_args as _check_args

__version__ = "0.1.0"

#: The learning rates of the book's two tabs (fine-tune / scratch).
BOOK_LEARNING_RATES = {
    "mxnet": {"finetune": 0.01, "scratch": 0.1},
    "torch": {"finetune": 5e-5, "scratch": 5e-4},
}

#: How each backend reduces the per-example losses before the gradient.
LOSS_REDUCTION = {"mxnet": "mean", "torch": "sum"}


def load_hotdog(root=None, *, url=None, sha1=None):
    """Download (once) the hotdog data and return `(train_imgs, test_imgs)`, the active
    backend's image-folder datasets of raw images, as in the chapter."""
    folder = download_hotdog(root, url=url, sha1=sha1)
    backend = _current()
    return backend.image_folder(folder / "train"), backend.image_folder(folder / "test")


def image_folder(path, transform=None):
    """The active backend's image-folder dataset over one split folder."""
    return _current().image_folder(path, transform)


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


def build_finetune_net(num_classes=2, pretrained=True, arch=None):
    """Pretrained ResNet-18 features and a new Xavier-initialised head with a 10x
    learning-rate multiplier. `pretrained`: True (the framework's ImageNet weights),
    a weights file path, or False. `arch=None` is the chapter's choice for the active
    backend (MXNet `resnet18_v2`, torch `resnet18`)."""
    return _current().build_finetune_net(num_classes=num_classes, pretrained=pretrained,
                                          arch=arch)


def build_scratch_net(num_classes=2, arch=None):
    """The same architecture with random initialisation (the chapter's scratch_net)."""
    return _current().build_scratch_net(num_classes=num_classes, arch=arch)


def train_fine_tuning(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
                      data_dir=None, image_size=224, devices=None, seed=None,
                      num_workers=None, verbose=True):
    """Train `net` the way the active backend's tab of the chapter does and return a
    :class:`History`.

    `data_dir`: a folder (or .zip) with `train/<class>/` and `test/<class>/`; default
    the hotdog data (downloaded once). `devices`: default all GPUs, else the CPU.
    `param_group=False` trains every layer at `learning_rate` (the book's scratch run).
    `seed` makes shuffling, augmentation and initialisation repeatable.
    The two backends scale gradients differently (see :func:`equivalent_lr`).
    """
    _check_args(learning_rate, batch_size, num_epochs, image_size)
    backend = _for_net(net)
    folder = _resolve_data_dir(data_dir) if data_dir is not None else download_hotdog()
    return backend.train_fine_tuning(net, learning_rate, batch_size, num_epochs, param_group,
                                     data_dir=folder, image_size=image_size, devices=devices,
                                     seed=seed, num_workers=num_workers, verbose=verbose)


def equivalent_lr(learning_rate, *, batch_size, from_backend, to_backend):
    """The learning rate that makes `to_backend`'s SGD step equal `from_backend`'s.

    The MXNet tab averages the per-example losses over the batch
    (`trainer.step(batch_size)`); the PyTorch tab sums them (`l.sum().backward()`).
    With weight decay applied the same way, torch_lr = mxnet_lr / batch_size.
    """
    for b in (from_backend, to_backend):
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; valid backends are {BACKENDS}")
    _check_args(learning_rate, batch_size, 1)
    if from_backend == to_backend:
        return learning_rate
    return learning_rate / batch_size if from_backend == "mxnet" else learning_rate * batch_size


__all__ = [
    "BACKENDS", "BOOK_LEARNING_RATES", "LOSS_REDUCTION", "DataLayoutError", "DownloadError",
    "HOTDOG_SHA1", "HOTDOG_URL", "History", "TrainingDiverged", "build_finetune_net",
    "build_scratch_net", "download_hotdog", "equivalent_lr", "get_backend", "image_folder",
    "load_hotdog", "plot_history", "show_images", "test_augs", "train_augs",
    "train_fine_tuning", "use", "using",
]
