"""Datasets, the chapter's augmentations and loaders, MXNet/Gluon side."""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon.data.vision import transforms

from ...data.folders import held_out, list_images
from ...data.images import MEAN, STD, load_rgb, test_resize
from ...data.shards import rank_seed, sharded_batches
from ...data.shards import shard as shard_of
from ._npmode import array_fn
from .runtime import seed_everything


class ImageFolderDataset(gluon.data.vision.ImageFolderDataset):
    """Gluon's `ImageFolderDataset` listing and decoding images the d2lft way (shared
    with the PyTorch backend): the same suffixes (`d2lft.data.IMAGE_SUFFIXES`; Gluon's
    own reads only .jpg/.jpeg/.png), hidden files and folders skipped, each file's
    header checked (or, with `skip_bad=True`, unreadable files skipped with a
    warning), and every mode decoded to 8-bit RGB with PIL (`d2lft.data.load_rgb`,
    EXIF orientation applied), so both backends see the same pixels; errors name the
    file. Images are NDArrays of the mode they are read in (``mx.np`` arrays with
    numpy semantics active, as Gluon's own dataset gives)."""

    def __init__(self, root, flag=1, transform=None, *, skip_bad=False):
        self._skip_bad = skip_bad
        super().__init__(os.fspath(root), flag=flag, transform=transform)

    def _list_images(self, root):
        self.synsets, self.items = list_images(root, skip_bad=self._skip_bad)

    def __getitem__(self, idx):
        path, label = self.items[idx]
        img = load_rgb(path)
        arr = np.asarray(img.convert("L"))[:, :, None] if self._flag == 0 else np.asarray(img)
        img = array_fn()(arr, dtype="uint8")
        if self._transform is not None:
            return self._transform(img, label)
        return img, label


def image_folder(path, transform=None, *, skip_bad=False):
    """The chapter's `gluon.data.vision.ImageFolderDataset` over one split folder.

    Items are (HxWx3 uint8 NDArray, class index); see :class:`ImageFolderDataset`.
    `transform`, if given, is applied to the image (`transform_first`).
    """
    ds = ImageFolderDataset(path, flag=1, skip_bad=skip_bad)
    return ds.transform_first(transform) if transform is not None else ds


class RandomResizedCrop(transforms.RandomResizedCrop):
    """Gluon's RandomResizedCrop, safe for images of a few pixels: Gluon's sampler can
    round a crop of a tiny image (area under ~5 px) to 0 pixels wide, and OpenCV then
    fails. Such images take Gluon's own fallback (a center crop resized to `size`);
    all others go through Gluon's sampler unchanged."""

    MIN_AREA = 32

    def forward(self, x):
        if x.shape[0] * x.shape[1] < self.MIN_AREA:
            size, _, _, interp = self._args
            return mx.image.center_crop(x, size, interp)[0]
        return super().forward(x)


def normalize():
    return transforms.Normalize(MEAN, STD)


def train_augs(image_size: int = 224):
    """RandomResizedCrop, RandomFlipLeftRight, ToTensor, ImageNet normalisation."""
    return transforms.Compose(
        [
            RandomResizedCrop(image_size),
            transforms.RandomFlipLeftRight(),
            transforms.ToTensor(),
            normalize(),
        ]
    )


def test_augs(image_size: int = 224):
    """Resize to image_size*256/224 square, CenterCrop, ToTensor, normalise."""
    return transforms.Compose(
        [
            transforms.Resize(test_resize(image_size)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize(),
        ]
    )


class _Subset(gluon.data.Dataset):
    """The items `indices` of `dataset`, read when asked for."""

    def __init__(self, dataset, indices):
        self._dataset, self._indices = dataset, list(indices)

    def __len__(self):
        return len(self._indices)

    def __getitem__(self, i):
        return self._dataset[self._indices[i]]


class ShardedBatches:
    """A distributed worker's batches: each epoch a permutation from numpy's global
    generator (seeded alike on every worker), split into global batches, of which this
    rank keeps its shard (`d2lft.engine.dist.shard`). The random transforms then draw
    from streams of this rank's own (Python's, numpy's and MXNet's, seeded from the
    shared stream and the rank): otherwise every rank would apply the same sequence of
    crops and flips to its shard."""

    def __init__(self, n, batch_size, world, rank):
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank

    def __iter__(self):
        order = np.random.permutation(self.n).tolist()
        seed_everything(rank_seed(np.random.randint(2**31 - 1), self.rank))
        yield from sharded_batches(order, self.batch_size, self.world, self.rank)

    def __len__(self):
        return -(-self.n // self.batch_size)


def make_loaders(
    data_dir, batch_size, image_size=224, num_workers=None, seed=None, shuffle=True, shard=(1, 0)
):
    """(train_iter, test_iter) over `data_dir/train` and its held-out split (`test/`,
    else `val/` or `valid/`: `d2lft.data.folders.held_out`).

    MXNet's loader uses numpy's and Python's global random state for shuffling and
    augmentation; `train_fine_tuning(seed=...)` seeds both. `shard`: ``(world, rank)``
    of a distributed worker, which then reads its shard of every training batch and
    its part of the test set.
    """
    num_workers = 0 if num_workers is None else num_workers
    train = image_folder(os.path.join(data_dir, "train"), train_augs(image_size))
    test = image_folder(held_out(data_dir), test_augs(image_size))
    world, rank = shard
    if world > 1:
        sampler = ShardedBatches(len(train), batch_size, world, rank)
        train_iter = gluon.data.DataLoader(train, batch_sampler=sampler, num_workers=num_workers)
        mine = list(shard_of(range(len(test)), world, rank))
        test_iter = gluon.data.DataLoader(_Subset(test, mine), batch_size, num_workers=num_workers)
        return train_iter, test_iter
    train_iter = gluon.data.DataLoader(train, batch_size, shuffle=shuffle, num_workers=num_workers)
    test_iter = gluon.data.DataLoader(test, batch_size, num_workers=num_workers)
    return train_iter, test_iter
