"""Decoding the training images on the GPU (nvJPEG through `torchvision.io.decode_jpeg`).

On a GPU the fast pipeline's one-time decoding of the training JPEGs with PIL is most
of its wall time (H200: 2.4-3.1 s of 3.8-4.8 s for the chapter's 5 epochs). On CUDA
devices `FastData` therefore decodes the training store with :func:`decode_batch`:

* every file is read and its header checked with PIL (no decoding): only baseline
  8-bit RGB or grayscale JPEGs that end with the end-of-image marker and carry no EXIF
  rotation go to the GPU; everything else (PNG, CMYK, truncated files, phone photos
  stored sideways, ...) goes through the CPU path
  (`d2lft.decode_cache.decode_rgb`, which also names unreadable files);
* the JPEGs are decoded in batches on the device, their short side reduced to the
  store's bound with an antialiased bilinear resize (as PIL's resize does), and copied
  to the host store in one transfer.

Pixel values differ from libjpeg-turbo + PIL by interpolation and IDCT rounding (a
level or two); the crop distribution is unchanged (drawn on the original size, which
the header gives). The test store keeps the book's exact PIL transform (decoded in the
background while training starts). ``D2LFT_GPU_DECODE=0`` turns this off.
"""

from __future__ import annotations

import concurrent.futures
import io
import os

import torch

from ...data.decode_cache import decode_rgb, reduced_size
from ...data.images import exif_orientation

#: JPEGs decoded per `decode_jpeg` call (bounds the device memory of one batch)
CHUNK = 256


def enabled(device) -> bool:
    """True when `device` is a CUDA device and GPU decoding is not turned off."""
    device = torch.device(device)
    if device.type != "cuda" or os.environ.get("D2LFT_GPU_DECODE", "1").strip() == "0":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:  # pragma: no cover - very old torchvision
        return False
    return True


def _read(path):
    """(bytes, (h, w)) of a JPEG that can go to the device, else (None, None)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            # EXIF-rotated photos go to PIL, which turns them upright (decode_rgb)
            ok = im.format == "JPEG" and im.mode in ("RGB", "L") and exif_orientation(im) == 1
            w, h = im.size
    except Exception:  # not an image PIL can even open: the CPU path names it
        return None, None
    if not ok or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None, None
    return data, (h, w)


def _resize(x, size):
    """uint8 CxHxW -> uint8 HxWx3 at `size` (antialiased bilinear, PIL-like)."""
    if tuple(x.shape[1:]) != tuple(size):
        x = torch.nn.functional.interpolate(
            x[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0)


def decode_batch(paths, max_short=None, device="cuda", workers=8):
    """``[(uint8 HxWx3 array, (orig_h, orig_w)), ...]`` for `paths`, the JPEGs decoded
    on `device` (any device `torchvision.io.decode_jpeg` takes: 'cpu' in the tests),
    the other files by `decode_rgb`; short sides reduced to `max_short`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    paths = [os.fspath(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as ex:
        heads = list(ex.map(_read, paths))
    gpu = [k for k, (data, _) in enumerate(heads) if data is not None]
    out = [None] * len(paths)
    pieces, where = [], []
    for s in range(0, len(gpu), CHUNK):
        ks = gpu[s : s + CHUNK]
        blobs = [torch.frombuffer(bytearray(heads[k][0]), dtype=torch.uint8) for k in ks]
        try:
            imgs = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            imgs = []
            for b in blobs:
                try:
                    imgs.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    imgs.append(None)
        for k, img in zip(ks, imgs, strict=True):
            h, w = heads[k][1]
            if img is None or tuple(img.shape) != (3, h, w):
                continue  # left to the CPU path
            pieces.append(_resize(img, reduced_size(h, w, max_short)).reshape(-1))
            where.append(k)
    if pieces:
        host = torch.cat(pieces).cpu().numpy()  # one device-to-host copy
        o = 0
        for k, p in zip(where, pieces, strict=True):
            h, w = reduced_size(*heads[k][1], max_short)
            out[k] = (host[o : o + p.numel()].reshape(h, w, 3), heads[k][1])
            o += p.numel()
    rest = [k for k in range(len(paths)) if out[k] is None]
    if rest:
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as ex:
            decoded = ex.map(lambda k: decode_rgb(paths[k], max_short), rest)
            for k, r in zip(rest, decoded, strict=True):
                out[k] = r
    return out


def decoder(device):
    """A batch decoder for `d2lft.decode_cache.train_store` on `device`, or None when
    the device does not decode (CPU, or ``D2LFT_GPU_DECODE=0``)."""
    if not enabled(device):
        return None
    device = torch.device(device)

    def batch(paths, max_short):
        return decode_batch(paths, max_short, device)

    batch.kind = "nvjpeg"
    return batch
