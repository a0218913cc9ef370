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
from ..engine.options import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_args
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
    (needs onnxruntime only: ``pip install 'd2lft[onnx]'``).

    Everything prediction relies on is checked here, once, so that a file that was
    edited or comes from elsewhere is refused before any image is read (OnnxError, one
    line naming the file and the field): the metadata's types and ranges, its format
    version, the class names against the graph's number of outputs, and the image
    size against the graph's input."""
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
            f"{target} cannot be read as an ONNX model ({' '.join(str(err).split())[:200]}); "
            f"it may be "
            f"truncated: export it again"
        ) from err
    info = _checked_metadata(target, session.get_modelmeta().custom_metadata_map)
    _check_graph(target, info, session)
    return OnnxModel(target, info, session)


def _shown(value: Any) -> str:
    """`value` as JSON (null, "2", [1, 2]), cut to a readable length."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _edited(target, what: str) -> OnnxError:
    return OnnxError(
        f"{target}: {what}; the file was edited or not written by d2lft, so no prediction "
        f"is made from it: export it again (d2lft export)"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checked_metadata(target: pathlib.Path, meta: dict) -> dict:
    """The file's d2lft metadata, every field that prediction uses checked (type,
    range, and agreement with the plain `classes` and `image_size` entries); OnnxError
    naming the file and the field otherwise."""
    if METADATA_KEY not in meta:
        raise OnnxError(
            f"{target} has no {METADATA_KEY!r} metadata, so its preprocessing and class "
            f"names are unknown: export the model with d2lft export (or d2lft.export)"
        )
    try:
        info = json.loads(meta[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError) as err:
        raise _edited(target, f"its {METADATA_KEY!r} metadata is not JSON ({err})") from err
    key = METADATA_KEY
    if not isinstance(info, dict):
        raise _edited(target, f"metadata field {key} is {_shown(info)}, not a JSON object")
    version = info.get("format_version")
    if not _is_int(version) or version < 1:
        raise _edited(target, f"{key}.format_version is {_shown(version)}, not a whole number")
    if version > FORMAT_VERSION:
        raise OnnxError(
            f"{target} was exported by a newer d2lft ({key}.format_version {version}; this "
            f"d2lft reads {FORMAT_VERSION}): upgrade d2lft"
        )
    classes = info.get("classes")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise _edited(target, f"{key}.classes is {_shown(classes)}, not a list of class names")
    size = info.get("image_size")
    if not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise _edited(
            target,
            f"{key}.image_size is {_shown(size)}, not a whole number of pixels from "
            f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}",
        )
    for field in ("arch", "kind", "trained_with", "exporter"):
        if not isinstance(info.get(field), str):
            raise _edited(target, f"{key}.{field} is {_shown(info.get(field))}, not a name")
    if not isinstance(info.get("checkpoint"), (dict, type(None))):
        raise _edited(target, f"{key}.checkpoint is {_shown(info['checkpoint'])}, not an object")
    plain = {"classes": classes, "image_size": size}
    for field, value in plain.items():
        if field not in meta:
            continue
        try:
            agrees = json.loads(meta[field]) == value
        except (json.JSONDecodeError, RecursionError):
            agrees = False
        if not agrees:
            raise _edited(
                target,
                f"metadata field {field} is {_shown(meta[field])} but {key}.{field} is "
                f"{_shown(value)}",
            )
    return info


def _check_graph(target: pathlib.Path, info: dict, session) -> None:
    """The graph takes N x 3 x S x S float32 (S: the metadata's image size) and gives
    N x len(classes) logits; OnnxError otherwise. Sizes the graph leaves open are
    found by running it once on a blank image."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = ([i.name for i in inputs], [o.name for o in outputs])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise OnnxError(
            f"{target}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, found "
            f"inputs {names[0]} and outputs {names[1]}: export the model with d2lft export"
        )
    s, n = info["image_size"], len(info["classes"])
    want_in = [None, 3, s, s]
    given_in, given_out = list(inputs[0].shape or []), list(outputs[0].shape or [])
    if inputs[0].type != "tensor(float)" or len(given_in) != 4:
        raise OnnxError(
            f"{target}: the graph's input is {inputs[0].type} {given_in}, not float32 "
            f"N x 3 x {s} x {s}: export the model with d2lft export"
        )
    if _is_int(given_in[1]) and given_in[1] != 3:
        raise OnnxError(
            f"{target}: the graph's input takes {given_in[1]} channels ({given_in}), not 3 "
            f"(RGB): export the model with d2lft export"
        )
    for want, got in zip(want_in, given_in, strict=True):
        if want is not None and _is_int(got) and got != want:
            raise _edited(
                target,
                f"the graph's input takes {given_in[2]} x {given_in[3]} pixel images "
                f"({given_in}) but {METADATA_KEY}.image_size is {s}",
            )
    if (
        not all(_is_int(d) for d in given_in[1:])
        or len(given_out) != 2
        or not _is_int(given_out[1])
    ):
        try:  # sizes left open: run it once
            out = session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((1, 3, s, s), np.float32)})[0]
        except Exception as err:  # onnxruntime's own exception types
            raise _edited(
                target,
                f"the graph does not run on a 1 x 3 x {s} x {s} input ({METADATA_KEY}.image_size "
                f"{s}): {' '.join(str(err).split())[:160]}",
            ) from err
        given_out = [None, *out.shape[1:]] if out.ndim == 2 else list(out.shape)
    if len(given_out) != 2 or given_out[1] != n:
        count = given_out[1] if len(given_out) == 2 else f"shape {given_out}"
        raise _edited(
            target,
            f"the graph gives {count} outputs per image but {METADATA_KEY}.classes names "
            f"{n} ({_shown(info['classes'])})",
        )
