"""Deterministic batches that both backends see bit for bit identically.

`train_fine_tuning(..., deterministic=True)` uses these instead of the chapter's
loaders. They remove every source of difference between the two engines' input
pipelines:

* no augmentation: training images get the test transform (resize to
  ``image_size * 256/224`` square, centre crop, ImageNet normalisation);
* one decoder and one resampler for both: PIL decodes (MXNet's own loader uses
  OpenCV) and resizes with PIL's bilinear filter, in numpy (float32);
* the shuffle order comes from ``numpy.random.default_rng((seed, epoch))``, not
  from either framework's random stream.

Backend-neutral: numpy and PIL only. A backend turns the numpy batches into its
own arrays with a `convert` function.
"""

from __future__ import annotations

import os

import numpy as np

from .folders import held_out, list_images
from .images import MEAN as _MEAN
from .images import STD as _STD
from .images import load_rgb, test_resize
from .shards import shard

MEAN = np.array(_MEAN, dtype=np.float32)
STD = np.array(_STD, dtype=np.float32)


def preprocess(path, image_size: int) -> np.ndarray:
    """One image file -> float32 CHW array: PIL decode to RGB, bilinear resize to a
    ``image_size*256/224`` square, centre crop `image_size`, scale to [0, 1],
    normalise with the ImageNet mean and std."""
    from PIL import Image

    im = load_rgb(path)
    size = test_resize(image_size)
    im = im.resize((size, size), Image.BILINEAR)
    top = left = int(round((size - image_size) / 2.0))
    im = im.crop((left, top, left + image_size, top + image_size))
    a = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    a = (a - MEAN) / STD
    return np.ascontiguousarray(a.transpose(2, 0, 1))


class FixedBatches:
    """Re-iterable batches ``(X, y)`` over one split folder: X float32
    ``[n, 3, image_size, image_size]``, y int64 ``[n]``; each pass converted with
    `convert` (e.g. ``torch.from_numpy``).

    `shuffle`: a new order every pass (epoch), drawn from `seed` and the pass
    number, identical in both backends. The last batch may be smaller unless
    `drop_last`. Decoded images are cached when `cache` (the default for up to 2,000
    images)."""

    def __init__(
        self,
        folder,
        batch_size,
        image_size=224,
        *,
        shuffle=False,
        seed=0,
        drop_last=False,
        convert=None,
        cache=None,
        shard=(1, 0),
    ):
        self.classes, self.samples = list_images(folder)
        self.world, self.rank = shard
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.folder = os.fspath(folder)
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.convert = convert or (lambda a: a)
        self.cache = len(self.samples) <= 2000 if cache is None else cache
        self._images = {}
        self.epoch = 0

    def __len__(self):
        n, b = len(self.samples), self.batch_size
        if not self.shuffle:
            n = len(shard(range(n), self.world, self.rank))
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch):
        """Pass `epoch`'s example order: shuffled (training) the same on every
        distributed worker, whose batches are then its shards of the global ones; in
        order (testing), of which a worker reads its contiguous part."""
        n = len(self.samples)
        if not self.shuffle:
            return shard(np.arange(n), self.world, self.rank)
        return np.random.default_rng((self.seed, epoch)).permutation(n)

    def _image(self, i):
        if i in self._images:
            return self._images[i]
        a = preprocess(self.samples[i][0], self.image_size)
        if self.cache:
            self._images[i] = a
        return a

    def batches(self, epoch):
        """The numpy batches of pass `epoch` (without `convert`)."""
        idx = self.order(epoch)
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            if self.shuffle:
                chunk = shard(chunk, self.world, self.rank)
            X = np.stack([self._image(i) for i in chunk])
            y = np.array([self.samples[i][1] for i in chunk], dtype=np.int64)
            yield X, y

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        for X, y in self.batches(epoch):
            yield self.convert(X), self.convert(y)


def fixed_loaders(data_dir, batch_size, image_size=224, seed=0, convert=None, shard=(1, 0)):
    """(train_iter, test_iter) of :class:`FixedBatches` over ``data_dir/train``
    (shuffled from `seed`) and ``data_dir/test`` (in order); `shard`: ``(world, rank)``
    of a distributed worker."""
    seed = 0 if seed is None else seed
    train = FixedBatches(
        os.path.join(data_dir, "train"),
        batch_size,
        image_size,
        shuffle=True,
        seed=seed,
        convert=convert,
        shard=shard,
    )
    test = FixedBatches(
        held_out(data_dir), batch_size, image_size, shuffle=False, convert=convert, shard=shard
    )
    return train, test
