"""Prediction, MXNet side: the chapter's test transform, softmax, the head's rows.

The same functions exist in `d2lft.backends.torch.predict`; the backend-neutral
`d2lft.predict` module calls them.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import gluon
from PIL import Image

from ...data.images import array_to_pil, load_rgb, to_rgb, upright
from .data import image_folder, test_augs
from .models import head, num_outputs


def load_image(path):
    """Decode an image file the way the backend's dataset does, as an HxWx3 uint8
    NDArray (RGB; an unreadable file raises BadImageError naming it)."""
    return mx.nd.array(np.asarray(load_rgb(path)), dtype="uint8")


def _to_nd(item):
    if isinstance(item, Image.Image):
        # a photo opened by hand: EXIF orientation too
        return mx.nd.array(np.asarray(to_rgb(upright(item))), dtype="uint8")
    if isinstance(item, np.ndarray):
        return mx.nd.array(np.asarray(array_to_pil(item)), dtype="uint8")
    return load_image(item)


def device_of(net):
    for p in net.collect_params().values():
        try:
            return p.list_ctx()[0]
        except (RuntimeError, AssertionError):  # deferred initialisation
            continue
    return mx.cpu()


def _forward_probs(net, X):
    return mx.nd.softmax(net(X.as_in_context(device_of(net))), axis=1).asnumpy()


def predict_proba(net, items, image_size=224, batch_size=32) -> np.ndarray:
    """Class probabilities (N x num_classes, numpy) for images given as paths, PIL
    images or HxWx3 uint8 arrays, through the chapter's test transform."""
    transform = test_augs(image_size)
    out = []
    for start in range(0, len(items), batch_size):
        X = mx.nd.stack(*[transform(_to_nd(x)) for x in items[start : start + batch_size]])
        out.append(_forward_probs(net, X))
    return np.concatenate(out) if out else np.zeros((0, num_outputs(net)), "float32")


def predict_folder(net, folder, image_size=224, batch_size=32):
    """(probabilities, label indices, paths, class names) over one split folder,
    read exactly as training reads its test set."""
    raw = image_folder(folder)
    loader = gluon.data.DataLoader(raw.transform_first(test_augs(image_size)), batch_size)
    probs, labels = [], []
    for X, y in loader:
        probs.append(_forward_probs(net, X))
        labels.append(y.asnumpy().astype("int64"))
    paths = [p for p, _ in raw.items]
    return np.concatenate(probs), np.concatenate(labels), paths, list(raw.synsets)


def head_arrays(layer):
    """(weight, bias) of a classifier layer as numpy arrays."""
    mx.nd.waitall()  # MXNet/MKLDNN may still be reordering weights after a forward pass
    return layer.weight.data().asnumpy().copy(), layer.bias.data().asnumpy().copy()


def set_head_rows(net, rows):
    """Overwrite rows of the head: `rows` maps a target row index to (weight row, bias)."""
    layer = head(net)
    mx.nd.waitall()  # see head_arrays
    w = layer.weight.data().asnumpy()
    b = layer.bias.data().asnumpy()
    if w.shape[1] == 0:
        raise RuntimeError("the head's input size is not known yet; run one forward pass first")
    for dst, (wr, br) in rows.items():
        w[dst] = np.asarray(wr)
        b[dst] = float(br)
    layer.weight.set_data(mx.nd.array(w))
    layer.bias.set_data(mx.nd.array(b))
