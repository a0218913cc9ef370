"""The fast pipeline's data, MXNet side (docs/speed.md).

* every image is decoded once (:mod:`d2lft.data.decode_cache`) instead of once per
  epoch;
* training crops are drawn as Gluon's ``RandomResizedCrop`` draws them
  (``mx.image.random_size_crop``: 10 tries, then its ``center_crop`` fallback) on each
  image's original size, and resized with the same call (``mx.image.imresize``,
  OpenCV bilinear), so a crop of an image stored at its original size is
  pixel-identical to the book's; flips and normalisation run on the whole batch;
* evaluation batches are the book's test transform (Gluon ``Resize`` to 256/224*s
  square, ``CenterCrop``) computed once per image and kept as uint8: equal to the
  book's batches.
"""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
from mxnet.gluon.data.vision import transforms

from ...data.crops import (
    epoch_draws,
    fallback_crops,
    run_seed,
    sample_resized_crops,
)
from ...data.decode_cache import get_cache, train_store
from ...data.folders import held_out
from ...data.images import load_rgb
from ...data.shards import shard_bounds
from ...engine.loop import epoch_seed
from .data import MEAN, STD, image_folder, test_resize

MIN_AREA = 32  # images smaller than this take Gluon's fallback (see data.RandomResizedCrop)


def split_samples(folder):
    """(paths, labels) of one split folder, in the book dataset's order."""
    ds = image_folder(folder)
    return [p for p, _ in ds.items], np.array([t for _, t in ds.items], dtype=np.int32)


def book_test_uint8(path, image_size):
    """The MXNet tab's test transform up to ToTensor, as uint8 HxWx3: Gluon's own
    ``Resize(s)`` and ``CenterCrop`` on the dataset's decoded image."""
    arr = np.asarray(load_rgb(path))
    tf = transforms.Compose(
        [transforms.Resize(test_resize(image_size)), transforms.CenterCrop(image_size)]
    )
    out = tf(mx.nd.array(arr, dtype="uint8")).asnumpy()
    return np.ascontiguousarray(out, dtype=np.uint8), arr.shape[:2]


def test_store(paths, image_size, decode_cache="memory", on_disk=False):
    # MXNet's frontend is not thread-safe: decode in this thread
    cache = get_cache(decode_cache)
    load = cache.load_on_disk if on_disk else cache.load
    return load(
        paths, f"mxnet-test-{image_size}", lambda p: book_test_uint8(p, image_size), threads=False
    )


def normalize_batch(x_u8, mean, std):
    """uint8 NHWC NDArray -> float32 NCHW, as ToTensor + Normalize compute it."""
    x = x_u8.astype("float32") / 255.0
    return ((x - mean) / std).transpose((0, 3, 1, 2))


def sample_crops(rng, heights, widths, size):
    """Gluon RandomResizedCrop's boxes (top, left, h, w) for a batch."""
    top, left, h, w = sample_resized_crops(rng, heights, widths, fallback="gluon", out_size=size)
    H, W = np.asarray(heights), np.asarray(widths)
    tiny = H * W < MIN_AREA
    if tiny.any():
        fh, fw = fallback_crops(H[tiny], W[tiny], None, "gluon", size)
        h[tiny], w[tiny] = fh, fw
        top[tiny], left[tiny] = (H[tiny] - fh) // 2, (W[tiny] - fw) // 2
    return top, left, h, w


def crop_resize(store, idx, top, left, h, w, flips, size):
    """Per sample: the crop (mapped into the stored image, rounded to whole pixels
    when the image is stored smaller) resized by ``mx.image.imresize`` (bilinear),
    then flipped; returns a uint8 (B, size, size, 3) NDArray."""
    outs = []
    for k, i in enumerate(idx):
        img = store.image(int(i))
        (sh, sw), (oh, ow) = store.shapes[i], store.orig[i]
        if sh == oh and sw == ow:
            y0, x0, y1, x1 = int(top[k]), int(left[k]), int(top[k] + h[k]), int(left[k] + w[k])
        else:
            fy, fx = sh / oh, sw / ow
            y0 = min(int(round(top[k] * fy)), sh - 1)
            x0 = min(int(round(left[k] * fx)), sw - 1)
            y1 = max(min(int(round((top[k] + h[k]) * fy)), sh), y0 + 1)
            x1 = max(min(int(round((left[k] + w[k]) * fx)), sw), x0 + 1)
        crop = mx.nd.array(img[y0:y1, x0:x1], dtype="uint8")
        if crop.shape[0] != size or crop.shape[1] != size:
            crop = mx.image.imresize(crop, size, size, interp=1)
        outs.append(mx.nd.flip(crop, axis=1) if flips[k] else crop)
    return mx.nd.stack(*outs)


class FastData:
    """Decoded train and test stores and the batches of the fast pipeline."""

    def __init__(
        self,
        data_dir,
        image_size,
        batch_size,
        seed=None,
        decode_cache="memory",
        shard=(1, 0),
        on_disk=False,
    ):
        self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
        self.world, self.rank = shard
        self.rng = np.random.default_rng(run_seed(seed))
        train_paths, self.train_labels = split_samples(os.path.join(data_dir, "train"))
        test_paths, self.test_labels = split_samples(held_out(data_dir))
        self.train = train_store(train_paths, image_size, decode_cache, on_disk=on_disk)
        self.test = test_store(test_paths, image_size, decode_cache, on_disk)
        self.mean = mx.nd.array(MEAN).reshape((1, 1, 1, 3))
        self.std = mx.nd.array(STD).reshape((1, 1, 1, 3))

    def set_epoch(self, epoch):
        """Draw epoch `epoch`'s shuffle and crops from (seed, epoch) alone."""
        if self.seed is not None:
            self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))

    @property
    def num_train(self):
        return len(self.train_labels)

    def _draw(self, b):
        o = self.train.orig[b]
        top, left, h, w = sample_crops(self.rng, o[:, 0], o[:, 1], self.image_size)
        flips = self.rng.random(len(b)) < 0.5
        return top, left, h, w, flips

    def train_batches(self, shuffle=True, sharded=True):
        """One epoch of (X float32 NCHW NDArray, y int32 NDArray) (a distributed
        worker's shards of the batches unless `sharded=False`)."""
        world = self.world if sharded else 1
        for b, draws in epoch_draws(
            self.rng, self.num_train, self.batch_size, self._draw, shuffle, (world, self.rank)
        ):
            u8 = crop_resize(self.train, b, *draws, self.image_size)
            yield (
                normalize_batch(u8, self.mean, self.std),
                mx.nd.array(self.train_labels[b], dtype="int32"),
            )

    def test_batches(self):
        """This worker's part of the test set (all of it outside a distributed run)."""
        lo, hi = shard_bounds(len(self.test_labels), self.world, self.rank)
        for s in range(lo, hi, self.batch_size):
            e = min(s + self.batch_size, hi)
            u8 = mx.nd.array(self.test.rows(s, e), dtype="uint8")
            yield (
                normalize_batch(u8, self.mean, self.std),
                mx.nd.array(self.test_labels[s:e], dtype="int32"),
            )
