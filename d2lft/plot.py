"""Pictures: image grids (the book's show_images) and learning curves (matplotlib).

Works headless: matplotlib's Agg backend is chosen when no display is available.
"""

from __future__ import annotations

import os
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


def plot_history(
    histories: Any, path: PathLike | None = None, labels: Sequence[str] | None = None
) -> Any:
    """Learning curves (train loss, train acc, test acc per epoch) of one or more
    Histories; saves a PNG when `path` is given; returns the figure."""
    plt = _pyplot()
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    labels = labels or [f"{h.backend} lr={h.config.get('learning_rate')}" for h in histories]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for h, label in zip(histories, labels, strict=True):
        x = np.arange(1, h.epochs + 1)
        axes[0].plot(x, h.train_loss, marker="o", label=label)
        axes[1].plot(x, h.train_acc, marker="o", linestyle="--", label=f"{label} train")
        axes[1].plot(x, h.test_acc, marker="s", label=f"{label} test")
    axes[0].set(xlabel="epoch", ylabel="train loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    return fig


def _save_png(fig, path):
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)


def _display_image(img):
    """A path is decoded as training decodes it (RGB, EXIF orientation applied: see
    `d2lft.data.load_rgb`); anything else goes to to_numpy_image."""
    if isinstance(img, (str, os.PathLike)):
        return np.asarray(load_rgb(img))
    return to_numpy_image(img)


def plot_predictions(
    images: Sequence,
    labels: Sequence[str],
    probabilities: Sequence[float],
    true: Sequence[str | None] | None = None,
    path: PathLike | None = None,
    ncols: int = 4,
    scale: float = 2.2,
) -> Any:
    """A grid of images titled with the predicted class and its probability, and the
    true class when known (green when right, red when wrong). Images are paths, PIL
    images or arrays, shown in the order given. Saves a PNG when `path` is given;
    returns the figure."""
    plt = _pyplot()
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * scale, nrows * (scale + 0.35)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(_display_image(images[i]))
        title = f"{labels[i]} ({probabilities[i]:.2f})"
        color = "black"
        if true is not None and true[i] is not None:
            right = true[i] == labels[i]
            title += f"\ntrue: {true[i]}"
            color = "tab:green" if right else "tab:red"
        ax.set_title(title, fontsize=8, color=color)
    fig.tight_layout()
    _save_png(fig, path)
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
    _save_png(fig, path)
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
    _save_png(fig, path)
    return fig
