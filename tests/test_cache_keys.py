"""The decode cache never hands back an array made for other settings: every parameter
that changes a cached array is part of its key, in both backends, in memory and on
disk. A second fast run at another image_size over the same files gets its own test
crops and its own training images (not the first run's); torch's and MXNet's test
crops (their own resize) never mix; a file changed in place is decoded again."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from d2lft.backends import _registry
from d2lft.data import decode_cache as dc

#: (decode_cache, on_disk): the memory cache, a folder's packs, the per-batch disk store
WHERES = [("memory", False), ("folder", False), ("folder", True)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training and test images larger than the decode bound of both sizes used."""
    return make_image_folder(
        tmp_path_factory.mktemp("keys") / "d", n_train=2, n_test=2, size=(120, 100)
    )


def fastdata(backend):
    return _registry.load(backend).fastdata


def build(backend, data, size, cache, on_disk):
    mod = fastdata(backend)
    if backend == "torch":
        return mod.FastData(data, size, 2, "cpu", 0, cache, on_disk=on_disk)
    return mod.FastData(data, size, 2, 0, cache, on_disk=on_disk)


def crops_of(fd):
    return np.stack([fd.test.image(k) for k in range(len(fd.test))])


@pytest.mark.parametrize("where, on_disk", WHERES)
def test_a_second_run_at_another_size_decodes_its_own(
    backend, data, tmp_path, monkeypatch, where, on_disk
):
    cache = str(tmp_path / "cache") if where == "folder" else "memory"
    mod = fastdata(backend)
    first = build(backend, data, 32, cache, on_disk)
    assert first.test.image(0).shape == (32, 32, 3)
    monkeypatch.setattr(dc, "_DISK", {})  # a second process: only the disk is shared
    for size in (48, 32):
        fd = build(backend, data, size, cache, on_disk)
        paths = mod.split_samples(os.path.join(data, "test"))[0]
        want = np.stack([mod.book_test_uint8(p, size)[0] for p in paths])
        np.testing.assert_array_equal(crops_of(fd), want, err_msg=f"size {size}")
        # training images: stored with their short side at the decode bound of this size
        assert min(fd.train.image(0).shape[:2]) == dc.default_max_short(size)


def test_the_two_backends_test_crops_never_mix(data):
    """Each backend resizes with its own library: a torch run's test crops are not an
    MXNet run's (or the other way round) over the same files and size."""
    got = {}
    for backend in ("torch", "mxnet", "torch"):
        try:
            mod = fastdata(backend)
        except ImportError as err:  # pragma: no cover - a framework missing
            pytest.skip(str(err))
        paths = mod.split_samples(os.path.join(data, "test"))[0]
        store = mod.test_store(paths, 40)
        want = np.stack([mod.book_test_uint8(p, 40)[0] for p in paths])
        np.testing.assert_array_equal(
            np.stack([store.image(k) for k in range(len(store))]), want, err_msg=backend
        )
        got[backend] = want
    assert not np.array_equal(got["torch"], got["mxnet"])  # the check above can tell


@pytest.mark.parametrize("where, on_disk", WHERES)
def test_a_file_changed_in_place_is_decoded_again(tmp_path, where, on_disk):
    """Same path, same size in bytes, new pixels and a new mtime: new pixels."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    path = folder / "a.ppm"
    Image.new("RGB", (20, 16), (10, 20, 30)).save(path)
    cache = dc.get_cache(str(tmp_path / "cache") if where == "folder" else "memory")
    load = cache.load_on_disk if on_disk else cache.load
    first = load([path], "train-test-key", dc.decode_rgb)
    assert tuple(first.image(0)[0, 0]) == (10, 20, 30)
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    Image.new("RGB", (20, 16), (200, 100, 0)).save(path)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert path.stat().st_size == size
    again = load([path], "train-test-key", dc.decode_rgb)
    assert tuple(again.image(0)[0, 0]) == (200, 100, 0)
