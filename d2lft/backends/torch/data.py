"""Datasets, the chapter's augmentations and loaders, PyTorch side."""
from __future__ import annotations

import os

import torch
import torchvision
from torchvision import transforms

from ...data import check_image_folder

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def image_folder(path, transform=None):
    """The chapter's `torchvision.datasets.ImageFolder` over one split folder.

    Items are (PIL RGB image, class index); every image mode (grayscale, palette,
    RGBA, CMYK, 16-bit) is converted to RGB by torchvision's default loader.
    """
    check_image_folder(path)
    return torchvision.datasets.ImageFolder(os.fspath(path), transform=transform)


def normalize():
    return transforms.Normalize(MEAN, STD)


def test_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def train_augs(image_size: int = 224):
    """RandomResizedCrop, horizontal flip, ToTensor, ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize()])


def test_augs(image_size: int = 224):
    """Resize to image_size*256/224 square, center crop, ToTensor, normalise."""
    size = test_resize(image_size)
    return transforms.Compose([
        transforms.Resize([size, size]),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        normalize()])


def default_num_workers() -> int:
    """Loader processes: none on a 2-core machine (they would take the compute
    threads' cores), else up to 8, leaving a core for the main process."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n <= 2 else min(8, n - 1)


def make_loaders(data_dir, batch_size, image_size=224, num_workers=None, seed=None,
                 shuffle=True, pin_memory=False):
    """(train_iter, test_iter) over `data_dir/train` and `data_dir/test`."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    train = image_folder(os.path.join(data_dir, "train"), train_augs(image_size))
    test = image_folder(os.path.join(data_dir, "test"), test_augs(image_size))
    kw = dict(num_workers=num_workers, pin_memory=pin_memory,
              persistent_workers=num_workers > 0)
    train_iter = torch.utils.data.DataLoader(train, batch_size, shuffle=shuffle,
                                             generator=generator, **kw)
    test_iter = torch.utils.data.DataLoader(test, batch_size, **kw)
    return train_iter, test_iter
