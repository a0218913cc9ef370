"""Using a trained network: class names and probabilities for images, evaluation over
an image folder (accuracy, confusion matrix, worst mistakes), and their pictures.

Backend-neutral: the framework work (test transform, forward pass) is done by the
active backend's `predict` module; nothing here imports a framework. An ONNX model
exported by :func:`d2lft.export` (an :class:`d2lft.OnnxModel` or its ``.onnx``
path) is accepted in place of a network: onnxruntime runs it, with the test
transform in numpy/PIL, and neither framework is imported.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import _registry
from .data.folders import (
    EXPECTED_LAYOUT,
    DataLayoutError,
    _subfolders,
    check_image_folder,
    count_images,
    find_split_root,
    held_out_split,
)
from .data.images import IMAGE_SUFFIXES
from .data.split import _STAMP, _class_root, _unzip, resolve_images, source_paths
from .deploy.onnx import OnnxModel, is_onnx, load_onnx
from .engine import budget
from .engine.options import check_args
from .netinfo import has_info, net_info
from .plot import plot_confusion, plot_predictions

DEFAULT_IMAGE_SIZE = 224


def backend_predict(net=None):
    """The package of the backend that owns `net` (else of the active backend), checked
    against the active backend."""
    return _registry.for_net(net) if net is not None else _registry.current()


def _predict_proba(net, items, image_size, batch_size):
    """Class probabilities from the net's backend, or from onnxruntime (OnnxModel)."""
    if isinstance(net, OnnxModel):
        return net.predict_proba(items, image_size, batch_size)
    return backend_predict(net).predict_proba(
        net, items, image_size=image_size, batch_size=batch_size
    )


def _predict_folder(net, folder, image_size, batch_size):
    if isinstance(net, OnnxModel):
        return net.predict_folder(folder, image_size, batch_size)
    return backend_predict(net).predict_folder(
        net, folder, image_size=image_size, batch_size=batch_size
    )


def _known_classes(net):
    if is_onnx(net):
        return load_onnx(net).classes
    return net_info(net).classes if has_info(net) else None


def net_classes(net, classes=None):
    """The class names of `net`'s outputs: `classes` if given, else those that travel
    with the net (set by training or by a checkpoint), else 'class 0', 'class 1', ..."""
    if classes is None:
        classes = _known_classes(net)
    n = len(load_onnx(net).classes) if is_onnx(net) else backend_predict(net).num_outputs(net)
    if classes is None:
        return [f"class {i}" for i in range(n)]
    classes = [str(c) for c in classes]
    if len(classes) != n:
        raise ValueError(
            f"{len(classes)} class names given ({classes}) but the network has {n} outputs"
        )
    return classes


def _check_batch(image_size, batch_size, n_images) -> None:
    """`batch_size` checked, and the batches (at most `n_images` images) checked
    against the host's memory (:func:`d2lft.engine.budget.check_fits`)."""
    check_args(1.0, batch_size, 1, image_size)
    budget.check_fits(image_size, min(batch_size, max(n_images, 1)), training=False)


def net_image_size(net, image_size=None) -> int:
    if is_onnx(net):
        return load_onnx(net).check_image_size(image_size)
    if image_size is None:
        image_size = (net_info(net).image_size if has_info(net) else None) or DEFAULT_IMAGE_SIZE
    check_args(1.0, 1, 1, image_size)
    return image_size


@dataclasses.dataclass
class Prediction:
    """One image's prediction: the top class name, its probability, its index and all
    class probabilities (`probs`, in the order of `classes`)."""

    label: str
    probability: float
    index: int
    probs: np.ndarray
    classes: list
    source: str = ""

    def top(self, k=3):
        """The k most probable (class name, probability) pairs."""
        order = np.argsort(-self.probs)[:k]
        return [(self.classes[i], float(self.probs[i])) for i in order]

    def __str__(self):
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.label} ({self.probability:.3f})"

    def to_dict(self):
        return {
            "source": self.source,
            "label": self.label,
            "probability": self.probability,
            "index": self.index,
            "probabilities": {c: float(p) for c, p in zip(self.classes, self.probs, strict=True)},
        }


def _describe(item, i):
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"<image {i}>"


def _host_array(item):
    """A framework's array (MXNet NDArray of either mode, torch tensor) as numpy;
    anything else unchanged. Recognised by its methods: no framework is imported."""
    if hasattr(item, "asnumpy"):
        return item.asnumpy()
    if hasattr(item, "detach") and hasattr(item, "cpu"):
        return item.detach().cpu().numpy()
    return item


def _check_items(images):
    images = _host_array(images)
    if (
        isinstance(images, (str, os.PathLike))
        or hasattr(images, "convert")
        or (isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object)
    ):
        images = [images]  # one image
    items = [_host_array(item) for item in images]
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            p = pathlib.Path(item)
            if not p.is_file():
                raise FileNotFoundError(f"image {i}: {p} is not a file")
        elif not (hasattr(item, "convert") or isinstance(item, np.ndarray)):
            raise TypeError(
                f"image {i}: expected a path, a PIL image or an HxWx3 array, got "
                f"{type(item).__name__}"
            )
    return items


def predict(
    net: Any,
    images: Any,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
) -> list[Prediction]:
    """Class names and probabilities for `images` (one, or a list of paths, PIL images
    or HxWxC uint8 arrays: numpy, or the backend's own, as its datasets give them),
    through the chapter's test transform at the net's image size.

    Returns a list of :class:`Prediction` (label, probability, probs). Class names are
    the ones that travel with the net (:func:`d2lft.net_info`), unless `classes` is given.
    `net` may also be an ONNX model written by :func:`d2lft.export` (its path or
    :func:`d2lft.load_onnx`'s OnnxModel): then only onnxruntime is needed.
    """
    net = load_onnx(net) if is_onnx(net) else net  # read once
    names = net_classes(net, classes)
    size = net_image_size(net, image_size)
    items = _check_items(images)
    _check_batch(size, batch_size, len(items))
    probs = _predict_proba(net, items, size, batch_size)
    out = []
    for i, (item, p) in enumerate(zip(items, probs, strict=True)):
        k = int(np.argmax(p))
        out.append(Prediction(names[k], float(p[k]), k, p, names, _describe(item, i)))
    return out


def _check_split(split):
    """`split`: the name of one subfolder ('test', 'train', ...) or None."""
    if split is None:
        return None
    if (
        not isinstance(split, str)
        or not split.strip()
        or split.strip() in (".", "..")
        or any(sep in split for sep in ("/", "\\"))
    ):
        raise ValueError(
            f"split must name one subfolder of data_dir, e.g. 'test' or 'train', "
            f"or be None to score every image of a folder of class subfolders; "
            f"got {split!r}"
        )
    return split


def _no_split_error(path, split, found) -> DataLayoutError:
    return DataLayoutError(
        f"{path} has no {split}/ folder (found {found}), so there is no held-out {split!r} "
        f"split to evaluate; scoring the whole folder would count the training images too. "
        f"If you trained on this folder of class subfolders with val_fraction=F, pass the "
        f"same val_fraction=F (CLI: --val-fraction F) to score exactly the images that "
        f"training held out; or pass split=None (CLI: --split all) to score every image "
        f"of the folder (training images included)"
    )


def _split_folder(data_dir, split, val_fraction=None):
    """The folder of class subfolders to evaluate and, when it is a split made by
    :func:`d2lft.split_image_folder`, the split folder that holds it (else None).

    - `val_fraction`: the same deterministic split of a folder (or zip) of class
      subfolders that training made (`resolve_images(data_dir, val_fraction)`), its
      `split`;
    - else `data_dir/split` when `data_dir` holds train/ and test/ (or is a zip of such
      a folder), or at least a `split` subfolder; or `data_dir` itself when it is that
      split folder (e.g. `hotdog/test` with split='test'); split='test' is the
      held-out split, so it scores `val/` or `valid/` in a folder that has one of them
      and no `test/`;
    - `split=None`: every image of a folder (or zip) of class subfolders.
    Anything else is refused with a DataLayoutError that says what to pass.
    """
    if data_dir is None or data_dir == "":
        raise ValueError(f"data_dir must be a folder or a .zip archive, got {data_dir!r}")
    split = _check_split(split)
    if val_fraction is not None:
        if split is None:
            raise ValueError(
                "split=None scores every image of data_dir, which val_fraction "
                "would not change: drop val_fraction, or pass split='test' for "
                "the held-out images (or 'train')"
            )
        root = resolve_images(data_dir, val_fraction)
        folder = root / split
        if not folder.is_dir():
            raise DataLayoutError(
                f"the split of {data_dir} made with val_fraction="
                f"{val_fraction} has train/ and test/, not {split}/: pass "
                f"split='test' (the held-out images) or split='train'"
            )
        return folder, root
    path = pathlib.Path(data_dir).expanduser()
    if not path.exists():
        raise DataLayoutError(
            f"{path} does not exist; pass a folder (or a .zip) with "
            f"train/ and test/, or a folder of class subfolders with "
            f"val_fraction= or split=None. {EXPECTED_LAYOUT}"
        )
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DataLayoutError(
                f"{path} is a file but not a .zip archive; pass a folder or "
                f"a .zip archive. {EXPECTED_LAYOUT}"
            )
        extracted = _unzip(path)  # extracted once into the cache (as training does)
        shown, path = f"{path} (extracted to {extracted})", extracted
    else:
        shown = path
    if split is None:
        try:
            root = find_split_root(_class_root(path))
        except DataLayoutError:
            folder = _class_root(path)
            check_image_folder(folder)
            return folder, None
        raise DataLayoutError(
            f"{root} has train/ and {held_out_split(root)}/ folders: split=None (CLI: "
            f"--split all) is for ONE folder of class subfolders; pass "
            f"split='test' (the held-out images) or split='train' to score one of them"
        )
    try:
        root = find_split_root(path)
    except DataLayoutError:  # no train/ and test/: is there a `split`/?
        if not (path / split).is_dir():
            if path.name == split:  # the split folder itself, e.g. hotdog/test
                check_image_folder(path)
                return path, (path.parent if (path.parent / _STAMP).is_file() else None)
            raise _no_split_error(shown, split, _found(path)) from None
        root = path
    if split == "test" and not (root / "test").is_dir() and held_out_split(root):
        split = held_out_split(root)  # 'test' is the held-out split: val/ or valid/ here
    if not (root / split).is_dir():
        raise DataLayoutError(
            f"{root} has no {split}/ folder (found {_found(root)}): pass "
            f"split='test' or split='train'"
        )
    return root / split, (root if (root / _STAMP).is_file() else None)


def _found(folder) -> str:
    return ", ".join(s + "/" for s in _subfolders(folder)[:6]) or "no subfolders"


@dataclasses.dataclass
class Evaluation:
    """Predictions over an image folder: accuracy, confusion matrix, worst mistakes."""

    classes: list
    paths: list
    true: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    #: the folder of class subfolders that was scored
    folder: str = ""

    @property
    def accuracy(self) -> float:
        return float((self.true == self.pred).mean()) if len(self.true) else float("nan")

    @property
    def confusion(self) -> np.ndarray:
        """confusion[i, j] = number of images of class i predicted as class j."""
        n = len(self.classes)
        m = np.zeros((n, n), dtype="int64")
        np.add.at(m, (self.true, self.pred), 1)
        return m

    def order_worst_first(self):
        """Indices sorted by the probability given to the true class, lowest first:
        the most confident mistakes come first, then the least sure correct answers."""
        p_true = self.probs[np.arange(len(self.true)), self.true]
        return np.argsort(p_true, kind="stable")

    def mistakes(self):
        """(path, true class, predicted class, probability of the prediction) of every
        wrong prediction, worst first."""
        return [
            (
                self.paths[i],
                self.classes[self.true[i]],
                self.classes[self.pred[i]],
                float(self.probs[i, self.pred[i]]),
            )
            for i in self.order_worst_first()
            if self.true[i] != self.pred[i]
        ]

    def __str__(self):
        lines = [f"accuracy {self.accuracy:.3f} on {len(self.true)} images"]
        corner = "true \\ predicted"
        width = max([len(c) for c in self.classes] + [len(corner)])
        cols = [max(len(c), 5) for c in self.classes]
        head = "  ".join(f"{c:>{w}}" for c, w in zip(self.classes, cols, strict=True))
        lines.append(f"{corner:>{width}}  {head}")
        for c, row in zip(self.classes, self.confusion, strict=True):
            counts = "  ".join(f"{v:>{w}d}" for v, w in zip(row, cols, strict=True))
            lines.append(f"{c:>{width}}  {counts}")
        return "\n".join(lines)

    def to_dict(self):
        return {
            "accuracy": self.accuracy,
            "num_images": len(self.true),
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
            "mistakes": [
                dict(zip(("path", "true", "predicted", "probability"), m, strict=True))
                for m in self.mistakes()
            ],
        }

    def plot_predictions(self, path=None, n=16, ncols=4):
        """A grid of `n` images, worst mistakes first, titled with the predicted class,
        its probability and the true class; saves a PNG when `path` is given."""
        idx = self.order_worst_first()[:n]
        return plot_predictions(
            [self.paths[i] for i in idx],
            [self.classes[self.pred[i]] for i in idx],
            [float(self.probs[i, self.pred[i]]) for i in idx],
            true=[self.classes[self.true[i]] for i in idx],
            path=path,
            ncols=ncols,
        )

    def plot_confusion(self, path=None):
        """The confusion matrix as a picture; saves a PNG when `path` is given."""
        return plot_confusion(self.confusion, self.classes, path=path)


def evaluate(
    net: Any,
    data_dir: str | os.PathLike,
    *,
    split: str | None = "test",
    val_fraction: float | None = None,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
) -> Evaluation:
    """Predict every image of an image folder and compare with its class folder.

    `data_dir`: a folder with train/ and test/ (its `split` subfolder is scored), a
    zip of one, or that split folder itself (`hotdog/test`). The default
    `split='test'` is the held-out split: in a folder with train/ and val/ (or valid/)
    and no test/, that folder is scored (`Evaluation.folder` says which). A folder (or zip) of
    class subfolders that training split with `val_fraction=F`: pass the same
    `val_fraction=F` to score that split's `split` (by default the held-out test
    images, exactly those that training held out); or `split=None` to score every
    image of it (training images included). Without either, such a folder is refused
    (DataLayoutError). The folder's class names are matched to the net's class names
    by name (a folder may hold a subset of the net's classes). `Evaluation.paths`
    (and mistakes) name your own files, not the links of the split folder in the
    cache. `net` may also be an exported ONNX model (see :func:`predict`).
    """
    net = load_onnx(net) if is_onnx(net) else net  # read once
    names = net_classes(net, classes)
    size = net_image_size(net, image_size)
    folder, split_root = _split_folder(data_dir, split, val_fraction)
    _check_batch(size, batch_size, count_images(folder))
    probs, labels, paths, folder_classes = _predict_folder(net, folder, size, batch_size)
    if split_root is not None:
        paths = source_paths(paths, split_root)
    unknown = [c for c in folder_classes if c not in names]
    if (
        unknown
        and _known_classes(net) is None
        and classes is None
        and len(folder_classes) == len(names)
    ):
        names = list(folder_classes)  # an unnamed net: take the folder's names
        unknown = []
    if unknown:
        raise DataLayoutError(
            f"{folder} has class folder(s) {unknown} that the network does "
            f"not know; its classes are {names}"
        )
    remap = np.array([names.index(c) for c in folder_classes], dtype="int64")
    true = remap[labels.astype("int64")]
    return Evaluation(
        list(names),
        list(paths),
        true,
        probs.argmax(axis=1).astype("int64"),
        probs,
        folder=os.fspath(folder),
    )


def image_files(paths):
    """Image files named by `paths`: files as given, folders searched (sorted,
    subfolders included) for files with an image suffix."""
    out = []
    for p in paths:
        p = pathlib.Path(p).expanduser()
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and f.suffix.lower() in IMAGE_SUFFIXES
                    and not f.name.startswith(".")
                )
            )
        else:
            out.append(p)
    return out
