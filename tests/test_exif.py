"""Phone photos: a portrait photo is stored sideways with an EXIF orientation tag. Every
decoder (the datasets of both backends, the fast pipeline's store, the torch GPU
decoder's routing, predict, the pictures) turns it upright; images without the tag
(the hotdog data) decode exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import d2lft
from d2lft.data.decode_cache import decode_rgb
from d2lft.data.images import exif_orientation, load_rgb

W, H = 48, 32  # as stored in the file: landscape


def stored_pixels():
    """A stored image with a distinct corner: red left half, blue right half, and a
    green top-left block, so any turn or flip is visible."""
    arr = np.zeros((H, W, 3), "uint8")
    arr[:, : W // 2] = (220, 30, 30)
    arr[:, W // 2 :] = (30, 30, 220)
    arr[:8, :8] = (30, 220, 30)
    return arr


def save_tagged(path, orientation, arr=None, fmt="JPEG"):
    im = Image.fromarray(stored_pixels() if arr is None else arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, fmt, exif=exif.tobytes(), quality=95)
    return path


UPRIGHT = {  # what a viewer shows for each orientation (PIL's transposes)
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    5: Image.Transpose.TRANSPOSE,
}


def expected(path, orientation):
    with Image.open(path) as im:  # the decoded file, turned as a viewer would
        im = im.convert("RGB")
        method = UPRIGHT[orientation]
        return np.asarray(im if method is None else im.transpose(method))


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_decoders_turn_photos_upright(tmp_path, orientation):
    path = save_tagged(tmp_path / "photo.jpg", orientation)
    with Image.open(path) as im:
        assert exif_orientation(im) == orientation
    want = expected(path, orientation)
    turned = orientation in (5, 6, 7, 8)
    assert want.shape == ((W, H, 3) if turned else (H, W, 3))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), want)
    arr, orig = decode_rgb(path)  # the fast pipeline's store
    np.testing.assert_array_equal(arr, want)
    assert orig == want.shape[:2]
    # the store's size bound applies to the upright image (short side 16 -> 8)
    small, orig = decode_rgb(path, max_short=16)
    assert orig == want.shape[:2]
    assert small.shape[:2] == tuple(s // 2 for s in want.shape[:2])


def test_large_rotated_jpeg_takes_the_dct_shortcut_the_right_way_round(tmp_path):
    big = np.kron(stored_pixels(), np.ones((8, 8, 1), "uint8"))  # 256 x 384, stored
    path = save_tagged(tmp_path / "big.jpg", 6, big)
    arr, orig = decode_rgb(path, max_short=64)
    assert orig == (384, 256) and arr.shape == (96, 64, 3)
    # upright: the green block is top-right (a 90-degree clockwise turn)
    assert arr[2, -3, 1] > 150 and arr[2, 2, 1] < 100


def test_gpu_decoder_sends_rotated_photos_to_pil(tmp_path):
    pytest.importorskip("torchvision")
    from d2lft.backends.torch.gpu_decode import _read, decode_batch

    plain = save_tagged(tmp_path / "plain.jpg", 1)
    rotated = save_tagged(tmp_path / "rotated.jpg", 6)
    assert _read(plain)[0] is not None  # goes to nvJPEG (decode_jpeg)
    assert _read(rotated) == (None, None)  # decode_jpeg ignores EXIF: PIL instead
    (arr, orig), _ = decode_batch([rotated, plain], device="cpu", workers=1)
    np.testing.assert_array_equal(arr, expected(rotated, 6))
    assert orig == (W, H)


@pytest.fixture
def portrait_folder(tmp_path):
    """Classes of sideways-stored portrait photos (orientation 6)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                arr = np.clip(stored_pixels() + rng.normal(0, 5, (H, W, 3)), 0, 255)
                save_tagged(root / split / c / f"{i}.jpg", 6, arr.astype("uint8"))
    return root


def test_datasets_and_predict_see_upright_photos(backend, portrait_folder, tmp_path):
    path = portrait_folder / "train" / "a" / "0.jpg"
    want = expected(path, 6)
    img = d2lft.image_folder(portrait_folder / "train")[0][0]
    arr = np.asarray(img.asnumpy() if hasattr(img, "asnumpy") else img)
    np.testing.assert_array_equal(arr, want)
    net = d2lft.build_scratch_net(seed=0)
    by_path = d2lft.predict(net, path, image_size=32)[0]
    by_array = d2lft.predict(net, want, image_size=32)[0]
    with Image.open(path) as opened:  # a PIL image opened by hand: turned too
        by_pil = d2lft.predict(net, opened, image_size=32)[0]
    np.testing.assert_allclose(by_path.probs, by_array.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_pil.probs, by_array.probs, rtol=1e-5, atol=1e-6)
    sideways = np.asarray(Image.open(path).convert("RGB"))  # what ignoring the tag gives
    assert sideways.shape != want.shape


def test_prediction_grid_shows_photos_upright(portrait_folder):
    from d2lft import plot

    path = portrait_folder / "test" / "b" / "1.jpg"
    fig = plot.plot_predictions([path], ["b"], [0.9])
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape[:2] == expected(path, 6).shape[:2]
    plot.close(fig)
