"""Every Pillow mode becomes 8-bit RGB at the right level (d2lft.data.to_rgb): 16-bit
and 32-bit integer images are scaled (not clipped white), floats from 0..1 or 0..255,
alpha dropped, palettes and CMYK through PIL. Checked on images built in memory and on
files of each mode, through both decoders (the book loaders' `load_rgb` and the fast
pipeline's `decode_rgb`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from d2lft.data.decode_cache import decode_rgb
from d2lft.data.images import load_rgb, to_rgb


def gray(*levels):
    """The expected RGB row for gray levels."""
    return np.array([[[v, v, v] for v in levels]], np.uint8)


def from_array(values, mode):
    """A one-row image of `mode` holding `values` (PIL's own constructor for the mode)."""
    im = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        im.putpixel((x, 0), v)
    return im


def palette_image():
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 200, 10, 30, 5, 250, 120] + [0] * (256 * 3 - 9))
    for x, i in enumerate((1, 2, 0)):
        im.putpixel((x, 0), i)
    return im


#: (name, image, expected RGB row)
CASES = [
    ("1", lambda: from_array([0, 1, 255], "1"), gray(0, 255, 255)),
    ("L", lambda: from_array([0, 128, 255], "L"), gray(0, 128, 255)),
    ("LA", lambda: from_array([(0, 0), (128, 10), (255, 255)], "LA"), gray(0, 128, 255)),
    ("P", palette_image, np.array([[[200, 10, 30], [5, 250, 120], [0, 0, 0]]], np.uint8)),
    (
        "RGBA",
        lambda: from_array([(200, 100, 50, 0), (1, 2, 3, 255)], "RGBA"),
        np.array([[[200, 100, 50], [1, 2, 3]]], np.uint8),
    ),
    (
        "CMYK",
        lambda: from_array([(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)], "CMYK"),
        np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0]]], np.uint8),
    ),
    ("I 8-bit values", lambda: from_array([0, 128, 255], "I"), gray(0, 128, 255)),
    ("I 16-bit values", lambda: from_array([0, 257 * 100, 65535], "I"), gray(0, 100, 255)),
    (
        "I 32-bit values",
        lambda: from_array([0, 2**30, 2**31 - 1, 2**24], "I"),
        gray(0, 128, 255, 2),
    ),
    ("I;16", lambda: from_array([0, 256 * 100, 65535], "I;16"), gray(0, 100, 255)),
    ("I;16B", lambda: from_array([0, 256 * 100, 65535], "I;16B"), gray(0, 100, 255)),
    ("I;16L", lambda: from_array([0, 256 * 100, 65535], "I;16L"), gray(0, 100, 255)),
    ("F 0..1", lambda: from_array([0.0, 0.5, 1.0], "F"), gray(0, 128, 255)),
    ("F 0..255", lambda: from_array([0.0, 100.0, 255.0], "F"), gray(0, 100, 255)),
    ("RGB", lambda: from_array([(9, 8, 7)], "RGB"), np.array([[[9, 8, 7]]], np.uint8)),
    ("RGBX", lambda: from_array([(9, 8, 7, 0)], "RGBX"), np.array([[[9, 8, 7]]], np.uint8)),
    # premultiplied alpha: the straight colour (100 at alpha 128/255 is 199)
    (
        "RGBa",
        lambda: from_array([(100, 50, 20, 128)], "RGBa"),
        np.array([[[199, 99, 39]]], np.uint8),
    ),
    ("La", lambda: from_array([(100, 128), (7, 255)], "La"), gray(199, 7)),
    (
        "PA",
        lambda: palette_image().convert("PA"),
        np.array([[[200, 10, 30], [5, 250, 120], [0, 0, 0]]], np.uint8),
    ),
    ("YCbCr", lambda: from_array([(100, 128, 128)], "YCbCr"), gray(100)),
    ("HSV", lambda: from_array([(0, 0, 77)], "HSV"), gray(77)),
]


def test_every_pillow_mode_has_a_case():
    """Pillow's list of modes, each with a known answer above ('I;16N' is 'I;16L' or
    'I;16B', the machine's order; LAB goes through PIL's conversion, checked for an
    RGB result only)."""
    covered = {c[0].split()[0] for c in CASES} | {"I;16N", "LAB"}
    assert set(Image.MODES) <= covered, set(Image.MODES) - covered
    for mode in ("I;16N", "LAB"):
        out = to_rgb(Image.new(mode, (3, 2)))
        assert out.mode == "RGB" and out.size == (3, 2)


@pytest.mark.parametrize("name, make, want", CASES, ids=[c[0] for c in CASES])
def test_every_mode_scales_to_0_255(name, make, want):
    im = make()
    out = to_rgb(im)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), want, err_msg=f"mode {im.mode}")


#: files of each mode, saved where the format keeps the mode and the values exactly
FILES = [
    ("1", "png"),
    ("L", "png"),
    ("LA", "png"),
    ("P", "png"),
    ("RGBA", "png"),
    ("CMYK", "tif"),
    ("I 32-bit values", "tif"),
    ("I;16", "png"),
    ("F 0..1", "tif"),
]


@pytest.mark.parametrize("name, suffix", FILES, ids=[f[0] for f in FILES])
def test_files_of_every_mode_decode_alike_in_both_pipelines(tmp_path, name, suffix):
    _, make, want = next(c for c in CASES if c[0] == name)
    im = make()
    path = tmp_path / f"x.{suffix}"
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == im.mode  # the file really holds that mode
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), want)
    arr, size = decode_rgb(path)
    np.testing.assert_array_equal(arr, want)
    assert size == (1, want.shape[1])
