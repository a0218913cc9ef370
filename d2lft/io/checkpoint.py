"""Checkpoints: a trained network with everything needed to use it or to go on training.

A checkpoint is one d2lft parameter file (safetensors, no pickle; see
:mod:`d2lft.weights`), so `d2lft.load_params` reads its parameters in either backend.
Its metadata adds two keys:

    d2lft_checkpoint         JSON: kind ('finetune' or 'scratch'), arch, backend, epoch
                             (completed epochs), class names, image size, the
                             preprocessing (mean, std, test resize), the training
                             config (learning rate, batch size, seed, ...), the
                             History so far and the optimizer
    d2lft_checkpoint_sha256  SHA-256 over every array (name, dtype, shape, bytes) and
                             that JSON

Writing is atomic (a temporary file renamed into place), so a checkpoint on disk is
always complete: after Ctrl-C the last completed epoch's checkpoint is there. Reading
recomputes the hash and refuses a file whose contents do not match it.

The chapter's optimizer is plain SGD (no momentum): it keeps no per-parameter state,
so parameters + completed epochs + the seed determine how training continues; with
`seed=` each epoch's shuffling and augmentation are seeded from (seed, epoch), and
`resume=` reproduces the run that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._version import __version__
from ..backends import _registry
from ..data.images import MEAN, STD, test_resize
from ..engine.callbacks import Callback
from ..engine.history import History
from ..netinfo import attach, net_info
from .weights import net_arch, read_params, save_params

INFO_KEY = "d2lft_checkpoint"
HASH_KEY = "d2lft_checkpoint_sha256"
FILE_NAME = "checkpoint.safetensors"
CHECKPOINT_VERSION = 1
#: training settings that must match for `resume=` to reproduce an uninterrupted run
REPRODUCIBILITY_KEYS = (
    "learning_rate",
    "batch_size",
    "param_group",
    "image_size",
    "seed",
    "weight_decay",
    "loss_reduction",
)


class CheckpointError(ValueError):
    """A file is not a d2lft checkpoint, or its contents do not match its hash."""


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint file holds (`arrays`: canonical name -> numpy array)."""

    path: pathlib.Path
    info: dict
    arrays: dict = dataclasses.field(repr=False, default_factory=dict)

    kind = property(lambda self: self.info["kind"])
    arch = property(lambda self: self.info["arch"])
    backend = property(lambda self: self.info["backend"])
    epoch = property(lambda self: self.info["epoch"])
    classes = property(lambda self: self.info["classes"])
    image_size = property(lambda self: self.info["image_size"])
    config = property(lambda self: self.info.get("config", {}))

    @property
    def history(self) -> History:
        return (
            History.from_dict(self.info["history"])
            if self.info.get("history")
            else History(backend=self.backend, devices=[])
        )

    def __str__(self):
        h = self.history
        acc = f", test acc {h.test_acc[-1]:.3f}" if h.epochs else ""
        return (
            f"{self.path}: {self.kind} {self.arch} ({self.backend}), epoch {self.epoch}"
            f"{acc}, {len(self.classes or [])} classes {self.classes}, image size "
            f"{self.image_size}"
        )


def content_hash(arrays: dict, info_json: str) -> str:
    """SHA-256 over the arrays (sorted by name: name, dtype, shape, bytes) and the
    checkpoint JSON."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    h.update(info_json.encode())
    return h.hexdigest()


def checkpoint_file(path) -> pathlib.Path:
    """`path` itself, or `path/checkpoint.safetensors` when `path` is a folder (or
    names no file with a suffix, e.g. a --out folder)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir() or (not path.exists() and path.suffix == ""):
        return path / FILE_NAME
    return path


def save_checkpoint(
    net: Any,
    path: str | os.PathLike,
    *,
    epoch: int = 0,
    history: History | None = None,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    config: dict | None = None,
) -> pathlib.Path:
    """Write `net` and what goes with it to `path` (a file, or a folder that gets
    `checkpoint.safetensors`), atomically. Class names and image size default to the
    ones that travel with the net (:func:`d2lft.net_info`); `config` to the History's.
    Returns the file's path."""
    info = net_info(net)
    owner, package = _registry.backend_of(net), _registry.package_of(net)
    target = checkpoint_file(path)
    if history is not None and config is None:
        config = dict(history.config)
    config = dict(config or {})
    image_size = image_size or config.get("image_size") or info.image_size or 224
    classes = classes if classes is not None else info.classes
    info = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "d2lft_version": __version__,
        "kind": info.kind,
        "arch": net_arch(net),
        "backend": owner,
        "epoch": int(epoch),
        "classes": list(classes) if classes is not None else None,
        "image_size": int(image_size),
        "preprocessing": {
            "mean": MEAN,
            "std": STD,
            "test_resize": test_resize(image_size),
            "test_crop": int(image_size),
            "train": "RandomResizedCrop + flip",
        },
        "config": config,
        "optimizer": {
            "name": "sgd",
            "momentum": 0.0,
            "weight_decay": config.get("weight_decay"),
            "state": "none (plain SGD keeps no per-parameter state)",
        },
        "history": history.to_dict() if history is not None else None,
    }
    info_json = json.dumps(info, sort_keys=True, default=str)  # e.g. paths in the config
    arrays = package.state_arrays(net)
    meta = {INFO_KEY: info_json, HASH_KEY: content_hash(arrays, info_json)}
    return save_params(net, target, metadata=meta)


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint (a file, or a folder holding `checkpoint.safetensors`) and
    check its contents against the recorded hash (CheckpointError when they differ)."""
    target = checkpoint_file(path)
    if not target.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {target}: pass a checkpoint file or the "
            f"folder that holds {FILE_NAME} (checkpoint_dir= or --out)"
        )
    try:
        arrays, meta = read_params(target)
    except ValueError as err:
        raise CheckpointError(
            f"{target} cannot be read as a checkpoint ({err}); it may be "
            f"truncated or not a d2lft file: use an intact copy"
        ) from err
    if INFO_KEY not in meta:
        raise CheckpointError(
            f"{target} is a parameter file, not a d2lft checkpoint (no "
            f"{INFO_KEY!r} metadata): load it with d2lft.load_params(net, "
            f"path) or build_finetune_net(pretrained=path)"
        )
    info_json = meta[INFO_KEY]
    if verify:
        recorded = meta.get(HASH_KEY)
        actual = content_hash(arrays, info_json)
        if recorded != actual:
            raise CheckpointError(
                f"{target}: its contents do not match the hash recorded in it (recorded "
                f"{str(recorded)[:16]}..., actual {actual[:16]}...): the file was modified "
                f"or corrupted after it was written; refusing to load it. Use an intact copy "
                f"or train again"
            )
    try:
        info = json.loads(info_json)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{target}: unreadable checkpoint metadata ({err})") from err
    if info.get("checkpoint_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{target} was written by a newer d2lft (checkpoint version "
            f"{info['checkpoint_version']}): upgrade d2lft"
        )
    return Checkpoint(target, info, arrays)


def _build(ck: Checkpoint):
    package = _registry.current()
    n = len(ck.classes) if ck.classes else ck.arrays["fc.weight"].shape[0]
    if ck.kind == "finetune":
        return package.build_finetune_net(n, False, ck.arch)
    return package.build_scratch_net(n, ck.arch)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """A network for the ACTIVE backend rebuilt from a checkpoint written by either
    backend; its :func:`d2lft.net_info` holds the class names, the image size and the
    checkpoint itself."""
    ck = read_checkpoint(path)
    net = _build(ck)
    _registry.package_of(net).load_state_arrays(net, ck.arrays, source=str(ck.path))
    _attach(net, ck)
    return net


def _attach(net, ck: Checkpoint):
    info = net_info(net)
    info.classes = list(ck.classes) if ck.classes else None
    info.image_size = ck.image_size
    info.checkpoint = ck
    attach(net, info)


def resume_into(net, path, history: History) -> int:
    """Load a checkpoint's parameters into `net` and its History's epochs into
    `history`; return the number of completed epochs. Warns when a setting that the
    exact continuation depends on differs from the checkpoint's."""
    ck = read_checkpoint(path)
    if ck.arch != net_arch(net):
        raise CheckpointError(
            f"{ck.path} holds a {ck.arch} network but this one is "
            f"{net_arch(net)}: build it with arch={ck.arch!r}"
        )
    classes = net_info(net).classes
    if ck.classes and classes not in (None, ck.classes):
        raise CheckpointError(
            f"{ck.path} was trained on classes {ck.classes} but this data has {classes}"
        )
    _registry.package_of(net).load_state_arrays(net, ck.arrays, source=str(ck.path))
    differ = {
        k: (ck.config.get(k), history.config.get(k))
        for k in REPRODUCIBILITY_KEYS
        if k in ck.config and k in history.config and ck.config.get(k) != history.config.get(k)
    }
    if differ:
        warnings.warn(
            f"resuming {ck.path} with different settings "
            + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
            + "; the result will differ from an uninterrupted run",
            stacklevel=3,
        )
    old = ck.history
    history.train_loss[:0] = old.train_loss
    history.train_acc[:0] = old.train_acc
    history.test_acc[:0] = old.test_acc
    history.num_examples += old.num_examples
    history.config["resumed_from"] = {"path": str(ck.path), "epoch": ck.epoch}
    _attach(net, ck)
    return int(ck.epoch)


class Checkpointer(Callback):
    """Writes a checkpoint of the run's network into `folder` after every epoch
    (atomically: after Ctrl-C or a kill the last complete one is there)."""

    def __init__(self, folder):
        self.folder = folder

    def on_epoch_end(self, state):
        save_checkpoint(state.net, self.folder, epoch=state.epoch + 1, history=state.history)


__all__ = [
    "CHECKPOINT_VERSION",
    "FILE_NAME",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "checkpoint_file",
    "load_checkpoint",
    "read_checkpoint",
    "resume_into",
    "save_checkpoint",
]
