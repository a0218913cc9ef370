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
from safetensors import safe_open

from .._sys.errors import naming, not_a_file
from .._sys.outputs import written
from .._version import __version__
from ..backends import _registry
from ..data.images import MEAN, STD, test_resize
from ..engine.callbacks import Callback
from ..engine.history import History
from ..engine.options import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..netinfo import attach, net_info
from .weights import ARCHS, canonical_arch, net_arch, read_params, save_params

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
            History.from_dict({"backend": self.backend, "devices": [], **self.info["history"]})
            if self.info.get("history")
            else History(backend=self.backend, devices=[])
        )

    def __str__(self):
        h = self.history
        acc = f", {h.eval_split} acc {h.test_acc[-1]:.3f}" if h.epochs else ""
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


#: what d2lft writes into a run folder (`checkpoint_dir`, the command's --out)
RUN_FILES = (FILE_NAME, "metrics.json", "learning_curve.png")


def is_checkpoint(path) -> bool:
    """Whether `path` is a d2lft checkpoint file (its header only is read)."""
    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            return INFO_KEY in (f.metadata() or {})
    except Exception:  # not a safetensors file at all
        return False


def check_checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
    """Refuse (CheckpointError), before any training, a `checkpoint_dir` where writing
    checkpoints would replace or mix with what is not d2lft's: an existing file that
    is not a d2lft checkpoint (your data, the training zip), or a folder holding files
    that d2lft did not write (anything but :data:`RUN_FILES`, the outputs d2lft
    recorded there unchanged, e.g. an exported model.onnx, hidden files and
    subfolders). A new folder, or one with d2lft's own outputs, is fine: a checkpoint
    replaces a checkpoint. Returns the checkpoint file's path."""
    path = pathlib.Path(path).expanduser()
    target = checkpoint_file(path)
    fix = "pass a new or empty folder (CLI: --out)"
    if path.is_dir():
        foreign = sorted(
            p.name
            for p in path.iterdir()
            if not p.name.startswith(".") and p.name not in RUN_FILES and not p.is_dir()
        )
        if foreign:
            ours = written(path)
            foreign = [n for n in foreign if n not in ours]
        if foreign:
            shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
            raise CheckpointError(
                f"d2lft will not write checkpoints into {path}: it holds files that d2lft "
                f"did not write ({shown}); {fix}"
            )
    if os.path.lexists(target) and not (target.is_file() and is_checkpoint(target)):
        what = "a file" if target.is_file() else "something"
        raise CheckpointError(
            f"d2lft will not write a checkpoint over {target}: it is {what} that is not "
            f"a d2lft checkpoint; {fix}"
        )
    return target


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
    why = not_a_file(target)
    if why:
        raise naming(
            FileNotFoundError(
                f"no checkpoint at {target}: {why}; pass a checkpoint file, or the folder "
                f"of a run that holds its {FILE_NAME}"
            ),
            "checkpoint",
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
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{target}: unreadable checkpoint metadata ({err})") from err
    version = info.get("checkpoint_version", 0) if isinstance(info, dict) else 0
    if _is_int(version) and version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{target} was written by a newer d2lft (checkpoint version "
            f"{info['checkpoint_version']}): upgrade d2lft"
        )
    problem = _metadata_problem(info, arrays)
    if problem:
        raise CheckpointError(
            f"{target}: a value recorded in this checkpoint is not valid: {problem}; "
            f"the file was edited or written by something else. Use an intact copy or "
            f"train again"
        )
    return Checkpoint(target, info, arrays)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metadata_problem(info, arrays) -> str:
    """What is wrong with a checkpoint's metadata (its types and ranges), '' if nothing:
    a hash proves the file is as written, not that the writer was d2lft."""
    if not isinstance(info, dict):
        return f"it is a JSON {type(info).__name__}, not an object"
    version = info.get("checkpoint_version", 0)
    if not _is_int(version) or version < 0:
        return f"checkpoint_version is {version!r}, not a whole number"
    if info.get("kind") not in ("finetune", "scratch"):
        return f"kind is {info.get('kind')!r}, not 'finetune' or 'scratch'"
    try:
        canonical_arch(info.get("arch"))
    except (ValueError, TypeError):
        return f"arch is {info.get('arch')!r}, not one of {ARCHS}"
    if info.get("backend") not in _registry.names():
        known = ", ".join(repr(b) for b in _registry.names())
        return f"backend is {info.get('backend')!r}, not one of {known}"
    epoch = info.get("epoch")
    if not _is_int(epoch) or epoch < 0:
        return f"epoch is {epoch!r}, not a whole number >= 0"
    size = info.get("image_size")
    if not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        return (
            f"image_size is {size!r}, not a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
        )
    classes = info.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes:
            return f"classes is {classes!r}, not a list of names"
        if not all(isinstance(c, str) for c in classes):
            return "classes holds something other than names"
        head = arrays.get("fc.weight")
        if head is not None and head.ndim == 2 and head.shape[0] != len(classes):
            return f"{len(classes)} class names for a head of {head.shape[0]} outputs"
    if not isinstance(info.get("preprocessing", {}), dict):
        return f"preprocessing is {info.get('preprocessing')!r}, not an object"
    return _config_problem(info.get("config", {})) or _history_problem(info.get("history"))


def _config_problem(config) -> str:
    """What is wrong with the recorded training settings that d2lft reads back (the
    held-out split's val_fraction, data folder and split name), '' if nothing."""
    if not isinstance(config, dict):
        return f"config is {config!r}, not an object"
    fraction = config.get("val_fraction")
    if fraction is not None and not (_is_number(fraction) and 0 < fraction < 1):
        return f"config.val_fraction is {fraction!r}, not a number between 0 and 1"
    for key in ("data_dir", "eval_split"):
        if config.get(key) is not None and not isinstance(config[key], str):
            return f"config.{key} is {config[key]!r}, not a path or a name"
    return ""


def _history_problem(h) -> str:
    if h is None:
        return ""
    if not isinstance(h, dict):
        return f"history is a JSON {type(h).__name__}, not an object"
    lengths = set()
    for key in ("train_loss", "train_acc", "held_out_acc" if "held_out_acc" in h else "test_acc"):
        values = h.get(key, [])
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            return f"history.{key} is not a list of numbers"
        lengths.add(len(values))
    if len(lengths) > 1:
        return "history's per-epoch lists differ in length"
    if not _is_int(h.get("num_examples", 0)) or h.get("num_examples", 0) < 0:
        return "history.num_examples is not a whole number >= 0"
    if not isinstance(h.get("config", {}), dict) or not isinstance(h.get("devices", []), list):
        return "history.config or history.devices has the wrong type"
    for key in ("examples_per_sec", "wall_seconds", "peak_host_mb", "peak_device_mb"):
        if h.get(key) is not None and not _is_number(h.get(key)):
            return f"history.{key} is not a number"
    if not isinstance(h.get("backend", ""), str):
        return "history.backend is not a name"
    try:
        History.from_dict({"backend": "", "devices": [], **h})
    except (TypeError, ValueError) as err:
        return f"history: {err}"
    return ""


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
    "RUN_FILES",
    "check_checkpoint_dir",
    "checkpoint_file",
    "is_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "resume_into",
    "save_checkpoint",
]
