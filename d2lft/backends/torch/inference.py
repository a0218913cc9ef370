"""Prediction, PyTorch side: the chapter's test transform, softmax, the head's rows.

The same functions exist in `d2lft.backends.mxnet.predict`; the backend-neutral
`d2lft.predict` module calls them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ...data.images import array_to_pil, load_rgb, to_rgb, upright
from .data import image_folder, test_augs
from .models import head, num_outputs


def load_image(path) -> Image.Image:
    """Decode an image file the way the backend's dataset does (8-bit RGB PIL image;
    an unreadable file raises BadImageError naming it)."""
    return load_rgb(path)


def _to_pil(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(upright(item))  # a photo opened by hand: EXIF orientation too
    if isinstance(item, np.ndarray):
        return array_to_pil(item)
    return load_image(item)


def device_of(net):
    try:
        return next(net.parameters()).device
    except StopIteration:  # pragma: no cover - a net without parameters
        return torch.device("cpu")


def _forward_probs(net, X):
    with torch.no_grad():
        return torch.softmax(net(X.to(device_of(net))).float(), dim=1).cpu().numpy()


def predict_proba(net, items, image_size=224, batch_size=32) -> np.ndarray:
    """Class probabilities (N x num_classes, numpy) for images given as paths, PIL
    images or HxWx3 uint8 arrays, through the chapter's test transform."""
    transform = test_augs(image_size)
    was_training = net.training
    net.eval()
    out = []
    try:
        for start in range(0, len(items), batch_size):
            X = torch.stack([transform(_to_pil(x)) for x in items[start : start + batch_size]])
            out.append(_forward_probs(net, X))
    finally:
        net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, num_outputs(net)), "float32")


def predict_folder(net, folder, image_size=224, batch_size=32):
    """(probabilities, label indices, paths, class names) over one split folder,
    read exactly as training reads its test set."""
    ds = image_folder(folder, test_augs(image_size))
    loader = torch.utils.data.DataLoader(ds, batch_size)
    was_training = net.training
    net.eval()
    probs, labels = [], []
    try:
        for X, y in loader:
            probs.append(_forward_probs(net, X))
            labels.append(y.numpy())
    finally:
        net.train(was_training)
    paths = [p for p, _ in ds.samples]
    return np.concatenate(probs), np.concatenate(labels), paths, list(ds.classes)


def head_arrays(layer):
    """(weight, bias) of a classifier layer as numpy arrays."""
    return (layer.weight.detach().cpu().numpy().copy(), layer.bias.detach().cpu().numpy().copy())


def set_head_rows(net, rows):
    """Overwrite rows of the head: `rows` maps a target row index to (weight row, bias)."""
    fc = head(net)
    with torch.no_grad():
        for dst, (w, b) in rows.items():
            fc.weight[dst] = torch.as_tensor(np.asarray(w), dtype=fc.weight.dtype)
            fc.bias[dst] = float(b)
