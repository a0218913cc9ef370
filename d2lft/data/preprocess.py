"""The chapter's test transform in numpy and PIL, with no framework: what an exported
ONNX model (:func:`d2lft.export`) needs in front of it.

It is the torch tab's ``test_augs`` step by step, on the same decoded pixels
(:func:`d2lft.data.images.load_rgb`): resize to a square of
``round(image_size * 256 / 224)`` with PIL's bilinear filter (what
``torchvision.transforms.Resize`` does to a PIL image), center crop ``image_size``
(torchvision's rounding of the offsets), scale to [0, 1] and normalise with the
ImageNet mean and std, in float32, as ``ToTensor`` and ``Normalize`` do. The MXNet
tab resizes with OpenCV's bilinear filter (no antialiasing) instead: the same recipe,
slightly different pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .images import MEAN, STD, array_to_pil, load_rgb, test_resize, to_rgb

#: How the test transform resizes, as written into exported models' metadata.
RESIZE_FILTER = "bilinear (PIL Image.BILINEAR, as torchvision.transforms.Resize on PIL images)"


def to_pil_rgb(item: Any):
    """An 8-bit RGB PIL image from a path, a PIL image or an HxW(xC) array."""
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item)
    if hasattr(item, "convert"):
        return to_rgb(item)
    return array_to_pil(item)


def center_offsets(size: int, crop: int) -> int:
    """torchvision's center-crop offset: ``int(round((size - crop) / 2.0))``."""
    return int(round((size - crop) / 2.0))


def test_transform(image: Any, image_size: int = 224) -> np.ndarray:
    """One image through the chapter's test transform: a (3, image_size, image_size)
    float32 array, normalised (see the module docstring)."""
    from PIL import Image

    im = to_pil_rgb(image)
    resize = test_resize(image_size)
    im = im.resize((resize, resize), Image.BILINEAR)
    o = center_offsets(resize, image_size)
    im = im.crop((o, o, o + image_size, o + image_size))
    x = np.asarray(im, dtype=np.float32) / np.float32(255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def test_batch(items: Sequence[Any], image_size: int = 224) -> np.ndarray:
    """Images through :func:`test_transform`, stacked: (N, 3, image_size, image_size)."""
    if not len(items):
        return np.zeros((0, 3, image_size, image_size), np.float32)
    return np.stack([test_transform(x, image_size) for x in items])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable), returned as float32."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
