"""Datasets, the chapter's augmentations and loaders, PyTorch side."""

from __future__ import annotations

import functools
import os

import torch
import torchvision
from torchvision import transforms

from ...data.folders import held_out, list_images
from ...data.images import MEAN, STD, load_rgb, test_resize
from ...data.shards import rank_seed, sharded_batches
from ...data.shards import shard as shard_of
from .runtime import seed_everything


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's `ImageFolder` listing and decoding images the d2lft way (shared
    with the MXNet backend): the same suffixes (`d2lft.data.IMAGE_SUFFIXES`), hidden
    files and folders skipped, each file's header checked (or, with `skip_bad=True`,
    unreadable files skipped with a warning), and every mode (grayscale, palette,
    RGBA, CMYK, 16-bit) decoded to 8-bit RGB by `d2lft.data.load_rgb`, whose errors
    name the file."""

    def __init__(self, root, transform=None, target_transform=None, *, skip_bad=False):
        self._skip_bad = skip_bad
        super().__init__(
            os.fspath(root),
            transform=transform,
            target_transform=target_transform,
            loader=load_rgb,
        )

    def find_classes(self, directory):
        classes, self._listed = list_images(directory, skip_bad=self._skip_bad)
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(
        self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False
    ):
        listed, self._listed = self._listed, None
        return list(listed)


def image_folder(path, transform=None, *, skip_bad=False):
    """The chapter's `torchvision.datasets.ImageFolder` over one split folder.

    Items are (PIL RGB image, class index); see :class:`ImageFolder`.
    """
    return ImageFolder(path, transform=transform, skip_bad=skip_bad)


def normalize():
    return transforms.Normalize(MEAN, STD)


def train_augs(image_size: int = 224):
    """RandomResizedCrop, horizontal flip, ToTensor, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize(),
        ]
    )


def test_augs(image_size: int = 224):
    """Resize to image_size*256/224 square, center crop, ToTensor, normalise."""
    size = test_resize(image_size)
    return transforms.Compose(
        [
            transforms.Resize([size, size]),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize(),
        ]
    )


def default_num_workers() -> int:
    """Loader processes: none on a 2-core machine (they would take the compute
    threads' cores), else up to 8, leaving a core for the main process."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n <= 2 else min(8, n - 1)


def _rank_worker_init(rank: int, worker_id: int) -> None:
    """A loader process of rank `rank`: its transforms' own stream (torch seeds worker
    `worker_id` from a base seed that is the same on every rank)."""
    seed_everything(rank_seed(torch.initial_seed() % 2**63, rank))


class ShardedBatchSampler(torch.utils.data.Sampler):
    """A distributed worker's batches: each epoch the permutation RandomSampler would
    draw from `generator` (the same on every worker), split into global batches, of
    which this rank keeps its shard (`d2lft.engine.dist.shard`). The random transforms
    then draw from a stream of this rank's own (seeded from `generator` and the rank):
    otherwise every rank would apply the same sequence of crops and flips to its
    shard."""

    def __init__(self, n, batch_size, world, rank, generator):
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.generator = generator

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        base = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        seed_everything(rank_seed(base, self.rank))  # the crops of a loader without processes
        yield from sharded_batches(order, self.batch_size, self.world, self.rank)

    def __len__(self):
        return -(-self.n // self.batch_size)


def make_loaders(
    data_dir,
    batch_size,
    image_size=224,
    num_workers=None,
    seed=None,
    shuffle=True,
    pin_memory=False,
    shard=(1, 0),
):
    """(train_iter, test_iter) over `data_dir/train` and its held-out split (`test/`,
    else `val/` or `valid/`: `d2lft.data.folders.held_out`). `shard`: ``(world, rank)``
    of a distributed worker, which then reads its shard of every training batch (`seed`
    required) and its part of the test set."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    train = image_folder(os.path.join(data_dir, "train"), train_augs(image_size))
    test = image_folder(held_out(data_dir), test_augs(image_size))
    # persistent workers keep their random state from epoch to epoch; with a seed each
    # epoch's workers are seeded afresh from the loader's generator (reseeded per epoch
    # by train_fine_tuning), which is what makes resume= exact
    kw = dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0 and seed is None,
    )
    world, rank = shard
    if world > 1:
        sampler = ShardedBatchSampler(len(train), batch_size, world, rank, generator)
        train_iter = torch.utils.data.DataLoader(
            train,
            batch_sampler=sampler,
            worker_init_fn=functools.partial(_rank_worker_init, rank),
            **kw,
        )
        train_iter.generator = generator  # reseeded per epoch, as a plain loader's
        mine = list(shard_of(range(len(test)), world, rank))
        test_iter = torch.utils.data.DataLoader(
            torch.utils.data.Subset(test, mine), batch_size, **kw
        )
        return train_iter, test_iter
    train_iter = torch.utils.data.DataLoader(
        train, batch_size, shuffle=shuffle, generator=generator, **kw
    )
    test_iter = torch.utils.data.DataLoader(test, batch_size, **kw)
    return train_iter, test_iter
