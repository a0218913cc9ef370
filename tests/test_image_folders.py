"""Image folders in both backends: odd image modes, suffixes, bad files, tiny images,
empty and single-class folders. All images are generated here, a few pixels each."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

import d2lft
from d2lft.backends import _registry as _backend
from d2lft.data import IMAGE_SUFFIXES, BadImageError, DataLayoutError


def _both():
    """The torch and mxnet backend packages (skip when one is missing)."""
    try:
        return _backend.load("torch"), _backend.load("mxnet")
    except ImportError as err:  # pragma: no cover - environment without a framework
        pytest.skip(str(err))


def pixels(backend, item):
    """An item's image as an HxWxC uint8 numpy array, whichever backend made it."""
    img = item[0]
    return np.asarray(img) if backend == "torch" else img.asnumpy()


def samples(ds):
    """[(path, label)] of a dataset of either backend."""
    return [(str(p), int(y)) for p, y in (ds.samples if hasattr(ds, "samples") else ds.items)]


def _save16_rgb_png(path, value):
    cv2 = pytest.importorskip("cv2")
    assert cv2.imwrite(str(path), np.full((6, 5, 3), value, np.uint16))


# Each case: (file name, writer(path), expected RGB of every pixel)
MODE_CASES = [
    (
        "rgb.jpg",
        lambda p: Image.new("RGB", (5, 6), (200, 100, 50)).save(p, quality=100),
        None,
    ),  # JPEG: compared across backends only
    ("gray.png", lambda p: Image.new("L", (5, 6), 77).save(p), (77, 77, 77)),
    ("gray_alpha.png", lambda p: Image.new("LA", (5, 6), (90, 0)).save(p), (90, 90, 90)),
    ("rgba.png", lambda p: Image.new("RGBA", (5, 6), (10, 20, 30, 0)).save(p), (10, 20, 30)),
    (
        "palette.png",
        lambda p: (
            Image.new("RGB", (5, 6), (204, 102, 51))
            .convert("P", palette=Image.Palette.ADAPTIVE)
            .save(p)
        ),
        (204, 102, 51),
    ),
    ("palette_transparent.gif", lambda p: Image.new("P", (5, 6), 0).save(p, transparency=0), None),
    ("bilevel.png", lambda p: Image.new("1", (5, 6), 1).save(p), (255, 255, 255)),
    (
        "cmyk.jpg",
        lambda p: Image.new("CMYK", (5, 6), (0, 0, 0, 0)).save(p, quality=100),
        (255, 255, 255),
    ),
    (
        "gray16.png",
        lambda p: Image.fromarray(np.full((6, 5), 0x8000, np.uint16)).save(p),
        (128, 128, 128),
    ),  # PIL's own convert('RGB') would clip this to 255 (white)
    (
        "gray16.tif",
        lambda p: Image.fromarray(np.full((6, 5), 0x4000, np.uint16)).save(p),
        (64, 64, 64),
    ),
    ("rgb16.png", lambda p: _save16_rgb_png(p, (0x1000, 0x8000, 0xFF00)), (255, 128, 16)),
    (
        "float.tif",
        lambda p: Image.fromarray(np.full((6, 5), 0.5, np.float32)).save(p),
        (128, 128, 128),
    ),
    ("rgb.webp", lambda p: Image.new("RGB", (5, 6), (1, 2, 3)).save(p, lossless=True), (1, 2, 3)),
    ("rgb.bmp", lambda p: Image.new("RGB", (5, 6), (4, 5, 6)).save(p), (4, 5, 6)),
    ("rgb.ppm", lambda p: Image.new("RGB", (5, 6), (7, 8, 9)).save(p), (7, 8, 9)),
    ("gray.pgm", lambda p: Image.new("L", (5, 6), 33).save(p), (33, 33, 33)),
    ("UPPER.JPEG", lambda p: Image.new("RGB", (5, 6), (9, 9, 9)).save(p, "JPEG"), None),
]


@pytest.fixture(scope="module")
def mode_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for name, write, _ in MODE_CASES:
            write(root / cls / name)
    return root


def test_every_mode_becomes_the_same_rgb_in_both_backends(mode_folder):
    torch_b, mx_b = _both()
    t_ds, m_ds = torch_b.image_folder(mode_folder), mx_b.image_folder(mode_folder)
    assert samples(t_ds) == samples(m_ds)
    assert len(t_ds) == 2 * len(MODE_CASES), "every suffix is read by both backends"
    expected = {name: rgb for name, _, rgb in MODE_CASES}
    for i, (path, _) in enumerate(samples(t_ds)):
        t_img, m_img = pixels("torch", t_ds[i]), pixels("mxnet", m_ds[i])
        assert t_ds[i][0].mode == "RGB"
        assert t_img.shape == (6, 5, 3) and t_img.dtype == np.uint8, path
        assert m_img.shape == (6, 5, 3) and m_img.dtype == np.uint8, path
        np.testing.assert_array_equal(t_img, m_img, err_msg=path)
        want = expected[pathlib.Path(path).name]
        if want is not None:
            assert (t_img == np.array(want, np.uint8)).all(), (path, t_img[0, 0], want)


def test_suffixes_hidden_files_and_subfolders_are_listed_alike(tmp_path):
    torch_b, mx_b = _both()
    root = tmp_path / "train"
    for cls in ("cat", "dog"):
        (root / cls / "nested").mkdir(parents=True)
        Image.new("RGB", (6, 6), (1, 2, 3)).save(root / cls / "0.JPG", "JPEG")
        Image.new("RGB", (6, 6), (1, 2, 3)).save(root / cls / "1.gif")
        Image.new("RGB", (6, 6), (1, 2, 3)).save(root / cls / "nested" / "2.png")
        (root / cls / "notes.txt").write_text("not an image: ignored")
        (root / cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / cls / "._0.JPG").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS debris
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (6, 6)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "__MACOSX").mkdir()
    t_ds, m_ds = torch_b.image_folder(root), mx_b.image_folder(root)
    assert t_ds.classes == m_ds.synsets == ["cat", "dog"]
    names = [pathlib.Path(p).relative_to(root).as_posix() for p, _ in samples(t_ds)]
    assert names == [
        "cat/0.JPG",
        "cat/1.gif",
        "cat/nested/2.png",
        "dog/0.JPG",
        "dog/1.gif",
        "dog/nested/2.png",
    ]
    assert samples(t_ds) == samples(m_ds)
    assert {".jpg", ".png", ".gif", ".webp", ".bmp", ".tif"} <= set(IMAGE_SUFFIXES)


@pytest.fixture
def bad_folder(tmp_path):
    """2 classes; class `a` holds a text file, an empty file and a truncated JPEG
    among good images."""
    root = make_image_folder(tmp_path / "d", n_train=3, n_test=1, size=(32, 32)) / "train"
    a = root / "hotdog"
    (a / "1_text.jpg").write_text("this is not an image")
    (a / "2_empty.png").write_bytes(b"")
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    big.save(a / "3_truncated.jpg", quality=95)
    whole = (a / "3_truncated.jpg").read_bytes()
    (a / "3_truncated.jpg").write_bytes(whole[: len(whole) * 3 // 4])  # header intact
    return root


def _dataset_with_only(folder, keep):
    for f in (folder / "hotdog").iterdir():
        if f.name != "0.jpg" and f.name not in keep:
            f.unlink()


@pytest.mark.parametrize("bad", ["1_text.jpg", "2_empty.png"])
def test_non_image_is_an_error_naming_the_file(bad_folder, backend, bad):
    _dataset_with_only(bad_folder, {bad})
    with pytest.raises(BadImageError) as err:
        d2lft.image_folder(bad_folder)
    assert str(bad_folder / "hotdog" / bad) in str(err.value)
    assert "skip_bad=True" in str(err.value)


def test_truncated_image_is_an_error_naming_the_file_when_read(bad_folder, backend):
    _dataset_with_only(bad_folder, {"3_truncated.jpg"})
    ds = d2lft.image_folder(bad_folder, d2lft.test_augs(16))  # the header is fine
    index = [p for p, _ in samples(getattr(ds, "_data", ds))].index(
        str(bad_folder / "hotdog" / "3_truncated.jpg")
    )
    ds[0]  # good images still load
    with pytest.raises(BadImageError) as err:
        ds[index]
    assert str(bad_folder / "hotdog" / "3_truncated.jpg") in str(err.value)


def test_skip_bad_leaves_unreadable_files_out_with_a_warning(bad_folder, backend):
    with pytest.warns(UserWarning, match="skipped 3 unreadable image") as rec:
        ds = d2lft.image_folder(bad_folder, skip_bad=True)
    msg = str(rec[0].message)
    for bad in ("1_text.jpg", "2_empty.png", "3_truncated.jpg"):
        assert bad in msg
    assert len(ds) == 6
    names = [pathlib.Path(p).name for p, _ in samples(ds)]
    assert not any(n.startswith(("1_", "2_", "3_")) for n in names)
    for i in range(len(ds)):
        assert pixels(backend, ds[i]).shape == (32, 32, 3)


def test_skip_bad_through_load_hotdog(bad_folder, backend, monkeypatch, tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    root = bad_folder.parent
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, "hotdog/" + p.relative_to(root).as_posix())
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hotdog.zip").write_bytes(buf.getvalue())  # placed by hand
    import hashlib

    digest = hashlib.sha1(buf.getvalue()).hexdigest()
    kw = dict(url="http://127.0.0.1:1/hotdog.zip", sha1=digest)
    with pytest.raises(BadImageError):
        d2lft.load_hotdog(tmp_path / "cache", **kw)
    with pytest.warns(UserWarning, match="skipped 3"):
        train, test = d2lft.load_hotdog(tmp_path / "cache", skip_bad=True, **kw)
    assert (len(train), len(test)) == (6, 2)


def test_a_class_with_only_bad_files_is_a_layout_error(tmp_path, backend):
    root = make_image_folder(tmp_path / "d", n_train=1, n_test=1, size=(8, 8)) / "train"
    (root / "hotdog" / "0.jpg").write_text("broken")
    with pytest.raises(DataLayoutError, match="no readable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d2lft.image_folder(root, skip_bad=True)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (2, 40)])
def test_images_smaller_than_the_crop(tmp_path, backend, size):
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=0, size=size) / "train"
    Image.fromarray(np.full(size, 128, np.uint16)).save(root / "hotdog" / "x16.png")
    Image.new("L", size[::-1], 9).save(root / "not-hotdog" / "gray.png")
    for augs, passes in ((d2lft.train_augs(32), 12), (d2lft.test_augs(32), 1)):
        ds = d2lft.image_folder(root, augs)
        for i in list(range(len(ds))) * passes:  # random crops: several draws each
            x = ds[i][0]
            assert tuple(x.shape) == (3, 32, 32)
            arr = x.numpy() if backend == "torch" else x.asnumpy()
            assert np.isfinite(arr).all()


def test_empty_class_folder_is_an_error_naming_it(tmp_path, backend):
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=0, size=(8, 8)) / "train"
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataLayoutError) as err:
        d2lft.image_folder(root)
    assert str(root / "empty") in str(err.value) and "holds no image" in str(err.value)


def test_split_folder_without_class_folders(tmp_path, backend):
    root = tmp_path / "train"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "0.jpg")
    with pytest.raises(DataLayoutError, match="one subfolder per class"):
        d2lft.image_folder(root)


def test_single_class_dataset_works_but_training_needs_two(tmp_path, backend):
    root = make_image_folder(tmp_path / "d", n_train=3, n_test=2, size=(8, 8), classes=("only",))
    ds = d2lft.image_folder(root / "train")
    assert len(ds) == 3 and {y for _, y in samples(ds)} == {0}
    net = d2lft.build_scratch_net()
    with pytest.raises(DataLayoutError, match="at least 2 classes"):
        d2lft.train_fine_tuning(
            net,
            0.01,
            batch_size=2,
            num_epochs=1,
            data_dir=root,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )


def test_more_classes_than_the_head_has_outputs(tmp_path, backend):
    root = make_image_folder(
        tmp_path / "d", n_train=2, n_test=1, size=(8, 8), classes=("a", "b", "c")
    )
    net = d2lft.build_scratch_net(num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        d2lft.train_fine_tuning(
            net,
            0.01,
            batch_size=2,
            num_epochs=1,
            data_dir=root,
            image_size=16,
            run=d2lft.RunSpec(verbose=False),
        )


def test_odd_modes_train_through_the_loaders(tmp_path, backend):
    """Grayscale, 16-bit, CMYK and palette files go through the chapter's loaders as
    3-channel batches."""
    backend_pkg = _backend.load(backend)
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=1, size=(10, 12))
    for split in ("train", "test"):
        Image.fromarray(np.full((9, 7), 40000, np.uint16)).save(root / split / "hotdog" / "g.png")
        Image.new("CMYK", (7, 9), (0, 50, 0, 0)).save(root / split / "not-hotdog" / "c.jpg")
        Image.new("P", (7, 9), 3).save(root / split / "not-hotdog" / "p.gif")
    train_iter, test_iter = backend_pkg.make_loaders(
        root, batch_size=4, image_size=16, num_workers=0
    )
    for it, n in ((train_iter, 7), (test_iter, 5)):
        shapes = [tuple(X.shape) for X, _ in it]
        assert [s[0] for s in shapes] == [4, n - 4]
        assert {s[1:] for s in shapes} == {(3, 16, 16)}
