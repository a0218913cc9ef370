"""ONNX: a trained network as one portable file, and prediction from that file with
onnxruntime alone (no torch, no MXNet).

:func:`export` writes the network in evaluation mode with the backend's own
exporter (torch: ``torch.onnx.export``; MXNet: ``mx.onnx.export_model``), names its
input ``input`` (N x 3 x S x S float32, normalised; N free) and its output
``logits`` (N x classes; softmax gives the probabilities), and documents the
preprocessing in the file's metadata (``metadata_props``):

    d2lft            JSON: everything below, plus the arch, kind, class names, the
                     backend that trained it and the one that exported it, the
                     checkpoint it came from, d2lft's version
    classes          JSON list of the class names, in output order
    image_size       S, the center crop (and the input's height and width)
    test_resize      R = round(S * 256 / 224): resize to R x R first (bilinear)
    mean, std        JSON lists (RGB), applied after scaling pixels to [0, 1]

:class:`OnnxModel` (:func:`load_onnx`) reads such a file and applies the same test
transform in numpy/PIL (:mod:`d2lft.data.preprocess`); ``d2lft.predict`` and
``d2lft.evaluate`` accept it, or the ``.onnx`` path, in place of a network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .._sys.atomic import atomic_path
from .._sys.errors import naming, not_a_file
from .._version import __version__
from ..backends import _registry
from ..data.folders import list_images
from ..data.images import MEAN, STD, test_resize
from ..data.preprocess import RESIZE_FILTER, softmax, test_batch
from ..engine.options import check_args
from ..netinfo import net_info

SUFFIX = ".onnx"
METADATA_KEY = "d2lft"
FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install 'd2lft[onnx]'  (onnx and onnxruntime)"


class OnnxError(ValueError):
    """A file is not an ONNX model exported by d2lft, or cannot be run."""


def _import(name):
    try:
        if name == "onnx":
            import onnx as module
        else:
            import onnxruntime as module
    except ImportError as err:
        raise ImportError(f"{name} is not installed ({err}): {INSTALL_HINT}") from err
    return module


# --------------------------------------------------------------------------- export


def preprocessing(image_size: int) -> dict:
    """The test transform an exported model expects, as written into its metadata."""
    return {
        "decode": "8-bit RGB (alpha dropped; 16-bit scaled to 8 bits)",
        "resize": [test_resize(image_size), test_resize(image_size)],
        "resize_filter": RESIZE_FILTER,
        "center_crop": [image_size, image_size],
        "center_crop_offset": "int(round((resize - crop) / 2))",
        "scale": "pixel / 255 (float32)",
        "mean": MEAN,
        "std": STD,
        "normalise": "(x - mean) / std per RGB channel",
        "layout": "NCHW",
        "dtype": "float32",
    }


def _metadata(net, exporter: str) -> dict:
    info = net_info(net)
    package = _registry.package_of(net)
    n = package.num_outputs(net)
    classes = list(info.classes) if info.classes else [f"class {i}" for i in range(n)]
    image_size = check_args(1.0, 1, 1, info.image_size or 224)[3]
    ck = info.checkpoint
    return {
        "format_version": FORMAT_VERSION,
        "d2lft_version": __version__,
        "arch": info.arch,
        "kind": info.kind,
        "trained_with": ck.backend if ck is not None else info.backend,
        "exported_from": _registry.backend_of(net),
        "exporter": exporter,
        "classes": classes,
        "image_size": image_size,
        "preprocessing": preprocessing(image_size),
        "input": INPUT_NAME,
        "output": f"{OUTPUT_NAME} (N x {n}); softmax over axis 1 gives the probabilities",
        "checkpoint": (
            {
                "path": str(ck.path),
                "epoch": ck.epoch,
                "backend": ck.backend,
                "test_acc": ck.history.test_acc[-1] if ck.history.epochs else None,
            }
            if ck is not None
            else None
        ),
    }


def _rename(graph, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name == old:
            vi.name = new


def _finish(model, meta: dict) -> None:
    """One input and one output with d2lft's names (parameters are initializers, not
    inputs), and the metadata."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    for i in [i for i in graph.input if i.name in weights]:
        graph.input.remove(i)
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxError(
            f"the exporter wrote {len(inputs)} inputs and {len(graph.output)} outputs; "
            f"expected one of each"
        )
    _rename(graph, inputs[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    props = {
        METADATA_KEY: json.dumps(meta, sort_keys=True),
        "classes": json.dumps(meta["classes"]),
        "image_size": str(meta["image_size"]),
        "test_resize": str(test_resize(meta["image_size"])),
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
    }
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    s, r = meta["image_size"], test_resize(meta["image_size"])
    model.doc_string = (
        f"d2lft {meta['kind']} {meta['arch']} ({meta['classes']}), trained with "
        f"{meta['trained_with']}. Input '{INPUT_NAME}': N x 3 x {s} x {s} float32: decode "
        f"to 8-bit RGB, resize to {r} x {r} (bilinear), center crop {s} x {s}, scale "
        f"to [0, 1], subtract mean {MEAN} and divide by std {STD} per channel. Output "
        f"'{OUTPUT_NAME}': softmax over axis 1 gives the class probabilities."
    )


def export(net: Any, path: str | os.PathLike, *, format: Literal["onnx"] = "onnx") -> pathlib.Path:
    """Write `net` (a d2lft network of either backend) to `path` (``.onnx``) as an
    ONNX model whose metadata documents its preprocessing and class names (see the
    module docstring); returns the path. The file is written atomically. Predict
    from it with ``d2lft.predict(path, images)``, which needs only onnxruntime."""
    if format != "onnx":
        raise ValueError(f"format must be 'onnx', got {format!r}")
    target = pathlib.Path(path).expanduser()
    if target.suffix.lower() != SUFFIX:
        raise ValueError(f"the ONNX file's name must end with {SUFFIX}, got {target}")
    net_info(net)  # a d2lft network, else TypeError saying how to get one
    onnx = _import("onnx")
    package = _registry.package_of(net)
    image_size = check_args(1.0, 1, 1, net_info(net).image_size or 224)[3]
    with tempfile.TemporaryDirectory(prefix="d2lft-export-") as tmp:
        raw = pathlib.Path(tmp) / "raw.onnx"
        exporter = package.export_onnx(net, raw, image_size)
        model = onnx.load(os.fspath(raw))
    _finish(model, _metadata(net, exporter))
    onnx.checker.check_model(model)
    with atomic_path(target) as tmp:
        onnx.save(model, os.fspath(tmp))
    return target


# --------------------------------------------------------------------------- running


@dataclasses.dataclass(eq=False)
class OnnxModel:
    """An ONNX model exported by d2lft, run by onnxruntime. `info`: its d2lft
    metadata (class names, image size, preprocessing, arch, backends, checkpoint).

    Pass it (or the file's path) to ``d2lft.predict`` / ``d2lft.evaluate`` like a
    network; :meth:`logits` runs a preprocessed batch. onnxruntime's ``run`` is
    thread-safe, so one OnnxModel may serve concurrent requests.
    """

    path: pathlib.Path
    info: dict
    session: Any = dataclasses.field(repr=False)

    classes = property(lambda self: list(self.info["classes"]))
    image_size = property(lambda self: int(self.info["image_size"]))
    arch = property(lambda self: self.info["arch"])
    kind = property(lambda self: self.info["kind"])
    trained_with = property(lambda self: self.info["trained_with"])

    def __str__(self):
        return (
            f"{self.path}: {self.kind} {self.arch} (trained with {self.trained_with}, "
            f"ONNX), {len(self.classes)} classes {self.classes}, image size {self.image_size}"
        )

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The model's output for a batch already through the test transform
        (N x 3 x S x S float32)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        s = self.image_size
        if X.ndim != 4 or X.shape[1:] != (3, s, s):
            raise ValueError(f"expected a batch of shape (N, 3, {s}, {s}), got {X.shape}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: X})[0]

    def predict_proba(
        self, items: Sequence[Any], image_size: int | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Class probabilities (N x classes) for paths, PIL images or arrays."""
        self.check_image_size(image_size)
        out = [
            softmax(self.logits(test_batch(items[i : i + batch_size], self.image_size)))
            for i in range(0, len(items), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_folder(self, folder, image_size: int | None = None, batch_size: int = 32):
        """(probabilities, label indices, paths, class names) over one split folder."""
        classes, samples = list_images(folder)
        paths = [p for p, _ in samples]
        probs = self.predict_proba(paths, image_size, batch_size)
        return probs, np.array([i for _, i in samples], "int64"), paths, classes

    def check_image_size(self, image_size: int | None) -> int:
        """The model's image size; ValueError when `image_size` asks for another."""
        if image_size is not None and image_size != self.image_size:
            raise ValueError(
                f"{self.path} was exported for {self.image_size} px inputs; "
                f"image_size={image_size} is not possible (export again from the checkpoint)"
            )
        return self.image_size


def is_onnx(obj: Any) -> bool:
    """Whether `obj` is an :class:`OnnxModel` or a path ending with ``.onnx``."""
    if isinstance(obj, OnnxModel):
        return True
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).lower().endswith(SUFFIX)


def load_onnx(path: str | os.PathLike) -> OnnxModel:
    """An :class:`OnnxModel` from a ``.onnx`` file written by :func:`d2lft.export`
    (needs onnxruntime only: ``pip install 'd2lft[onnx]'``)."""
    if isinstance(path, OnnxModel):
        return path
    target = pathlib.Path(path).expanduser()
    why = not_a_file(target)
    if why:
        raise naming(
            FileNotFoundError(f"no ONNX model at {target}: {why}; export one with d2lft export"),
            "checkpoint",
        )
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(
            os.fspath(target), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own exception types
        raise OnnxError(
            f"{target} cannot be read as an ONNX model ({str(err).strip()[:200]}); it may be "
            f"truncated: export it again"
        ) from err
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise OnnxError(
            f"{target} has no {METADATA_KEY!r} metadata, so its preprocessing and class "
            f"names are unknown: export the model with d2lft export (or d2lft.export)"
        )
    try:
        info = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise OnnxError(f"{target}: unreadable {METADATA_KEY!r} metadata ({err})") from err
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise OnnxError(f"{target} was exported by a newer d2lft: upgrade d2lft")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise OnnxError(f"{target}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
    return OnnxModel(target, info, session)
