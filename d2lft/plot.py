"""Pictures: image grids (the book's show_images) and learning curves (matplotlib).

Works headless: matplotlib's Agg backend is chosen when no display is available.
"""
from __future__ import annotations

import os

import numpy as np


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
    if hasattr(img, "asnumpy"):          # MXNet NDArray
        arr = img.asnumpy()
    elif hasattr(img, "detach"):          # torch tensor
        arr = img.detach().cpu().numpy()
    else:                                 # PIL image or array-like
        arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 1):
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return arr


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """Plot a grid of images (the book's `d2l.show_images`); returns the axes."""
    plt = _pyplot()
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        ax.imshow(to_numpy_image(img), cmap="gray" if to_numpy_image(img).ndim == 2 else None)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i])
    return axes


def plot_history(histories, path=None, labels=None):
    """Learning curves (train loss, train acc, test acc per epoch) of one or more
    Histories; saves a PNG when `path` is given; returns the figure."""
    plt = _pyplot()
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    labels = labels or [f"{h.backend} lr={h.config.get('learning_rate')}" for h in histories]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for h, label in zip(histories, labels):
        x = np.arange(1, h.epochs + 1)
        axes[0].plot(x, h.train_loss, marker="o", label=label)
        axes[1].plot(x, h.train_acc, marker="o", linestyle="--", label=f"{label} train")
        axes[1].plot(x, h.test_acc, marker="s", label=f"{label} test")
    axes[0].set(xlabel="epoch", ylabel="train loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        from ._io import atomic_path
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    return fig
