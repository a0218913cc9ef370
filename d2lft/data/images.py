"""Image files: which files are images, decoding them to 8-bit RGB, and the chapter's
normalisation constants and test resize. Backend-neutral (PIL, numpy).

Both backends decode with :func:`load_rgb` (PIL), so they see the same RGB pixels for
the same file (:data:`IMAGE_SUFFIXES`), whatever its mode, turned upright as its EXIF
orientation says (phone photos).
"""

from __future__ import annotations

import numpy as np

#: The file suffixes (case-insensitive) that both backends read as images.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


#: ImageNet mean and standard deviation (RGB), the chapter's normalisation
MEAN = [0.485, 0.456, 0.406]


STD = [0.229, 0.224, 0.225]


def test_resize(image_size: int) -> int:
    """The chapter's test-time resize for `image_size` crops: 256 for 224, scaled
    (``round(image_size * 256 / 224)``); the square image is then center-cropped."""
    return int(round(image_size * 256 / 224))


class BadImageError(ValueError):
    """An image file cannot be read; the message names the file."""


_SKIP_HINT = (
    "remove or replace the file, or pass skip_bad=True to skip unreadable images with a warning"
)


def check_image_file(path, deep=False):
    """Raise BadImageError naming `path` unless it opens as an image.

    The default reads only the header (about 60 us a file). `deep=True` also decodes
    it (JPEGs at 1/8 scale, about 0.6 ms a file), which catches truncated files.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if deep:
                im.draft("RGB", (1, 1))
                im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {path}: {err}; {_SKIP_HINT}") from err


def to_rgb(im):
    """`im` (any PIL mode) as an 8-bit RGB PIL image.

    16-bit and 32-bit modes are scaled to 8 bits (PIL's own convert clips them, which
    turns most 16-bit images white): 'I;16*' from 0..65535; 32-bit integers ('I') by
    the range their values need: 0..255 as they are, 0..65535 (16-bit data, as older
    Pillows open 16-bit PNGs) or else the whole positive 32-bit range 0..2**31-1;
    floats ('F') from 0..1 when no value exceeds 1, else from 0..255. Alpha is dropped,
    as torchvision and OpenCV do (premultiplied 'RGBa' and 'La' give their straight
    colours); palette, grayscale, CMYK, YCbCr, HSV and 1-bit modes use PIL's conversion.
    """
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode == "La":  # premultiplied alpha: PIL converts it to RGB only through LA
        im = im.convert("LA")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im)
        if im.mode.startswith("I;16"):
            arr = arr.astype(np.uint16) >> 8
        elif im.mode == "I":
            top = arr.max() if arr.size else 0
            if top > 65535:  # 32-bit data
                arr = arr * (255.0 / (2**31 - 1))
            elif top > 255:  # 16-bit data
                arr = arr / 257.0
        else:  # float images: 0..1 or 0..255
            arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im.convert("RGB")


#: The EXIF tag that says how a photo is to be turned for display (phones set it)
EXIF_ORIENTATION = 0x0112


def exif_orientation(im) -> int:
    """The EXIF orientation (1-8) of an open PIL image: 1 (upright as stored) when it
    has none, or an unreadable one."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def swaps_sides(orientation: int) -> bool:
    """Whether an EXIF orientation turns the image by 90 degrees (height <-> width)."""
    return orientation in (5, 6, 7, 8)


def upright(im):
    """`im` turned as its EXIF orientation says (a portrait phone photo is stored
    sideways with orientation 6 or 8); the same object when there is nothing to turn
    (the hotdog photos have no orientation tag)."""
    if exif_orientation(im) == 1:
        return im
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def load_rgb(path):
    """Decode the image file at `path` into an 8-bit RGB PIL image (see :func:`to_rgb`),
    turned upright as its EXIF orientation says (:func:`upright`).

    Raises BadImageError naming the file when it cannot be decoded (corrupt,
    truncated, not an image).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(upright(im))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(
            f"cannot read image {path}: {err}; {_SKIP_HINT} (with skip_bad="
            f"True files are decoded once when the dataset is built)"
        ) from err


def array_to_pil(arr):
    """A PIL RGB image from an HxW, HxWx1, HxWx3 or HxWx4 array (uint8, or floats in
    [0, 1] or [0, 255])."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        arr = arr.astype("float64")
        if not np.isfinite(arr).all():
            raise ValueError("the image array holds NaN or infinite values")
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype("uint8")
    return Image.fromarray(arr).convert("RGB")
