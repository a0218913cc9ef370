"""Datasets, the chapter's augmentations and loaders, MXNet/Gluon side."""
from __future__ import annotations

import os

from mxnet import gluon
from mxnet.gluon.data.vision import transforms

from ...data import check_image_folder

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def image_folder(path, transform=None):
    """The chapter's `gluon.data.vision.ImageFolderDataset` over one split folder.

    Items are (HxWx3 uint8 NDArray, class index). `transform`, if given, is applied
    to the image (`transform_first`).
    """
    check_image_folder(path)
    ds = gluon.data.vision.ImageFolderDataset(os.fspath(path), flag=1)
    return ds.transform_first(transform) if transform is not None else ds


def normalize():
    return transforms.Normalize(MEAN, STD)


def test_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def train_augs(image_size: int = 224):
    """RandomResizedCrop, RandomFlipLeftRight, ToTensor, ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomFlipLeftRight(),
        transforms.ToTensor(),
        normalize()])


def test_augs(image_size: int = 224):
    """Resize to image_size*256/224 square, CenterCrop, ToTensor, normalise."""
    return transforms.Compose([
        transforms.Resize(test_resize(image_size)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        normalize()])


def make_loaders(data_dir, batch_size, image_size=224, num_workers=None, seed=None,
                 shuffle=True):
    """(train_iter, test_iter) over `data_dir/train` and `data_dir/test`.

    MXNet's loader uses numpy's and Python's global random state for shuffling and
    augmentation; `train_fine_tuning(seed=...)` seeds both.
    """
    num_workers = 0 if num_workers is None else num_workers
    train = image_folder(os.path.join(data_dir, "train"), train_augs(image_size))
    test = image_folder(os.path.join(data_dir, "test"), test_augs(image_size))
    train_iter = gluon.data.DataLoader(train, batch_size, shuffle=shuffle,
                                       num_workers=num_workers)
    test_iter = gluon.data.DataLoader(test, batch_size, num_workers=num_workers)
    return train_iter, test_iter
