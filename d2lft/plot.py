"""Pictures: image grids (the book's show_images) and learning curves (matplotlib).

Works headless: matplotlib's Agg backend is chosen when no display is available.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._sys.atomic import atomic_path
from .data.images import load_rgb

PathLike = str | os.PathLike


def _pyplot():
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_numpy_image(img):
    """An HxWxC array for imshow from a PIL image, an MXNet NDArray (HWC), a torch
    tensor (CHW or HWC) or a numpy array. Framework objects are recognised by their
    methods, so no framework is imported here."""
    if hasattr(img, "asnumpy"):  # MXNet NDArray
        arr = img.asnumpy()
    elif hasattr(img, "detach"):  # torch tensor
        arr = img.detach().cpu().numpy()
    else:  # PIL image or array-like
        arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 1):
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return arr


def close(fig) -> None:
    """Close a figure made here (frees its memory; pyplot keeps every open figure)."""
    _pyplot().close(fig)


def show_images(
    imgs: Sequence,
    num_rows: int,
    num_cols: int,
    titles: Sequence[str] | None = None,
    scale: float = 1.5,
) -> Any:
    """Plot a grid of images (the book's `d2l.show_images`); returns the axes."""
    plt = _pyplot()
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs, strict=False)):  # spare axes stay blank
        ax.imshow(to_numpy_image(img), cmap="gray" if to_numpy_image(img).ndim == 2 else None)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i])
    return axes


#: Resolution of the PNGs written here (dots per inch of the figure sizes below)
DPI = 100
#: The longest side, in pixels, of a thumbnail in a prediction grid
THUMBNAIL = 192
RIGHT, WRONG = "\u2713", "\u2717"  # check mark and ballot x (DejaVu Sans draws both)


def _data_name(h) -> str:
    """A short name of a History's data: the data folder's name (a split's cache
    folder loses its hash) and the held-out split it was evaluated on."""
    folder = str(h.config.get("data_dir") or "")
    if not folder or folder == ".":
        return "your batches"
    name = re.sub(r"-[0-9a-f]{16}$", "", pathlib.PurePath(folder).name)
    split = h.config.get("eval_split")
    return f"{name} (evaluated on {split}/)" if split else name


def _held_out(histories) -> str:
    """The held-out curves' name in the legend: the split's own ('test', 'val'), or
    'held-out' when the runs were evaluated on differently named splits."""
    names = {str(h.config.get("eval_split") or "test") for h in histories}
    return names.pop() if len(names) == 1 else "held-out"


def _epoch_axis(ax, epochs: int) -> None:
    """Whole epochs on the x axis: every epoch up to 12, else MaxNLocator's integers;
    a margin of half an epoch (a 1-epoch run gets one tick, 1)."""
    from matplotlib.ticker import MaxNLocator

    epochs = max(int(epochs), 1)
    if epochs <= 12:
        ax.set_xticks(range(1, epochs + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, epochs + 0.5)


def plot_history(
    histories: Any,
    path: PathLike | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Learning curves of one or more Histories: train loss (left), train and test
    accuracy (right) per epoch. One colour per run, the same in both panels; train
    dashed, test solid; whole-number epochs; a title naming the backend(s) and the
    data (or `title`), and one legend under the panels. Saves a PNG when `path` is
    given; returns the figure."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    labels = labels or [f"{h.backend} lr={h.config.get('learning_rate')}" for h in histories]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.9))
    for i, (h, label) in enumerate(zip(histories, labels, strict=True)):
        color = f"C{i % 10}"
        x = np.arange(1, h.epochs + 1)
        kw = dict(color=color, marker="o", ms=4, lw=1.6)
        axes[0].plot(x, h.train_loss, linestyle="--", label=label, **kw)
        axes[1].plot(x, h.train_acc, linestyle="--", **kw)
        axes[1].plot(x, h.test_acc, linestyle="-", **{**kw, "marker": "s"})
    epochs = max((h.epochs for h in histories), default=1)
    axes[0].set(xlabel="epoch", ylabel="loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        _epoch_axis(ax, epochs)
    if title is None:
        backends = ", ".join(dict.fromkeys(str(h.backend) for h in histories))
        data = ", ".join(dict.fromkeys(_data_name(h) for h in histories))
        title = f"{backends} backend, data: {data}"
    fig.suptitle(title, fontsize=11)
    runs = [Line2D([], [], color=f"C{i % 10}", lw=2.5, label=lb) for i, lb in enumerate(labels)]
    styles = [
        Line2D([], [], color="0.35", linestyle="--", marker="o", ms=4, label="train"),
        Line2D([], [], color="0.35", linestyle="-", marker="s", ms=4, label=_held_out(histories)),
    ]
    handles = runs + styles
    ncol = min(len(handles), 4)
    rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.055 * rows, 1, 1))
    save_png(fig, path)
    return fig


def save_png(fig, path, photos=False):
    """Write `fig` as a PNG (atomically). `photos`: the figure is mostly photographs,
    which PNG keeps poorly: it is stored with an adaptive 256-colour palette
    (Floyd-Steinberg dithered), about a third of the bytes, with no visible loss at
    thumbnail size."""
    if path is None:
        return
    if not photos:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
        return
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    with Image.open(buf) as im:
        rgb = im.convert("RGB")
    palette = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
    small = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG", optimize=True)


def _display_image(img):
    """A path is decoded as training decodes it (RGB, EXIF orientation applied: see
    `d2lft.data.load_rgb`); anything else goes to to_numpy_image."""
    if isinstance(img, (str, os.PathLike)):
        return np.asarray(load_rgb(img))
    return to_numpy_image(img)


def thumbnail(arr, size=THUMBNAIL):
    """`arr` reduced (antialiased) so that its longest side is at most `size` pixels:
    a grid shows thumbnails, not full photos (smaller PNGs, no aliasing)."""
    if arr.ndim < 2 or max(arr.shape[:2]) <= size:
        return arr
    from PIL import Image

    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.BICUBIC)
    return np.asarray(im)


def _short_name(item, limit=24) -> str:
    """A file's name for under its thumbnail (shortened in the middle when long)."""
    if not isinstance(item, (str, os.PathLike)):
        return ""
    name = pathlib.PurePath(item).name
    # a name that is not UTF-8 (surrogate escapes) is shown with U+FFFD where it is not
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return name if len(name) <= limit else name[: limit // 2 - 1] + "\u2026" + name[-limit // 2 :]


def plot_predictions(
    images: Sequence,
    labels: Sequence[str],
    probabilities: Sequence[float],
    true: Sequence[str | None] | None = None,
    path: PathLike | None = None,
    ncols: int = 4,
    scale: float = 2.2,
) -> Any:
    """A grid of thumbnails titled with the predicted class and its probability, and
    when the true class is known, a check mark (right, green) or a cross (wrong, red)
    and the true class: the symbol says it without colour. File names go under their
    thumbnails. Images are paths, PIL images or arrays, shown in the order given.
    Saves a PNG when `path` is given (thumbnails at most THUMBNAIL pixels, DPI dots
    per inch, a 256-colour palette: a grid of 12 photos is about 240 KB, not 730);
    returns the figure."""
    plt = _pyplot()
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * scale, nrows * (scale + 0.6)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(thumbnail(_display_image(images[i])))
        title = f"{labels[i]} ({probabilities[i]:.2f})"
        color = "black"
        if true is not None and true[i] is not None:
            right = true[i] == labels[i]
            title = f"{RIGHT if right else WRONG} {title}\ntrue: {true[i]}"
            color = "tab:green" if right else "tab:red"
        ax.set_title(title, fontsize=8, color=color)
        name = _short_name(images[i])
        if name:
            ax.text(0.5, -0.03, name, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.tight_layout()
    save_png(fig, path, photos=True)
    return fig


def plot_confusion(confusion: Any, classes: Sequence[str], path: PathLike | None = None) -> Any:
    """A confusion matrix (rows: true class, columns: predicted class) with counts and
    row percentages. Saves a PNG when `path` is given; returns the figure."""
    plt = _pyplot()
    m = np.asarray(confusion)
    n = len(classes)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {m.shape} does not match {n} classes")
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, dtype="float64"), where=rows > 0)
    size = 1.6 + 0.9 * n
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), labels=classes, rotation=30, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"accuracy {np.trace(m) / max(m.sum(), 1):.3f} ({m.sum()} images)",
    )
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{m[i, j]}\n{frac[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if frac[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    save_png(fig, path)
    return fig


def plot_lr_sweep(
    rows: Sequence[dict], path: PathLike | None = None, metric: str = "test_acc"
) -> Any:
    """Accuracy against learning rate (log scale), one line per mode, from
    `d2lft.lr_sweep`'s rows; diverged runs are marked with an x at 0. Saves a PNG when
    `path` is given; returns the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["learning_rate"])
        ok = [r for r in rs if not r.get("diverged") and r.get(metric) is not None]
        (line,) = ax.plot(
            [r["learning_rate"] for r in ok],
            [r[metric] for r in ok],
            marker="o",
            label=f"{mode} ({rs[0].get('backend', '')})".replace(" ()", ""),
        )
        bad = [r for r in rs if r.get("diverged")]
        if bad:
            ax.plot(
                [r["learning_rate"] for r in bad],
                [0] * len(bad),
                "x",
                ms=9,
                color=line.get_color(),
                label=f"{mode}: diverged",
            )
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=metric.replace("_", " "), ylim=(-0.03, 1.03))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return fig
