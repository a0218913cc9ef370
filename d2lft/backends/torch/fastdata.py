"""The fast pipeline's data, PyTorch side: decoded images and the batches made from
them (docs/speed.md).

* every image is decoded once (:mod:`d2lft.data.decode_cache`), not once per epoch;
* training batches: the book's RandomResizedCrop (the crop boxes drawn exactly as
  torchvision draws them, on each image's original size) + horizontal flip +
  normalisation, per sample, done in batches. Two resamplers:
  ``'pil'`` (the CPU default): PIL's antialiased bilinear resize of the crop, the very
  call torchvision makes, so a crop of an image stored at its original size is
  pixel-identical to the book's; it runs in a background thread that overlaps the
  training step (PIL releases the GIL) and leaves the compute threads alone.
  ``'roi_align'`` (the CUDA default): all crops of a batch in one
  `torchvision.ops.roi_align` on the device from the decoded images kept there (its
  adaptive sampling averages ``ceil(crop/out)`` points per output pixel, an
  antialiasing box filter); no per-sample host work, no host-device sync.
* evaluation batches are the book's test transform (resize to 256/224*s square,
  center crop) computed by torchvision once per image and kept as uint8, so they
  equal the book's batches bit for bit (normalisation is the same float ops).
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.ops import roi_align

from ...data.crops import epoch_draws, run_seed, sample_resized_crops, stored_boxes
from ...data.decode_cache import get_cache, train_store
from ...data.folders import held_out
from ...data.images import load_rgb
from ...data.shards import shard_bounds
from ...engine.loop import epoch_seed
from .data import MEAN, STD, image_folder, test_resize
from .gpu_decode import decoder

AUGMENTERS = ("pil", "roi_align")


def split_samples(folder):
    """(paths, labels) of one split folder, in the book's ImageFolder order."""
    ds = image_folder(folder)
    return [p for p, _ in ds.samples], np.array([t for _, t in ds.samples], dtype=np.int64)


def book_test_uint8(path, image_size):
    """The book's test transform up to ToTensor, as uint8 HxWx3: torchvision's own
    Resize([s, s]) and CenterCrop on the dataset loader's image (`load_rgb`)."""
    s = test_resize(image_size)
    img = load_rgb(path)
    out = transforms.CenterCrop(image_size)(transforms.Resize([s, s])(img))
    return np.asarray(out, dtype=np.uint8), (img.height, img.width)


def test_store(paths, image_size, decode_cache="memory", on_disk=False):
    cache = get_cache(decode_cache)
    load = cache.load_on_disk if on_disk else cache.load
    return load(paths, f"torch-test-{image_size}", lambda p: book_test_uint8(p, image_size))


class Normalizer:
    """uint8 NHWC batch -> float32 NCHW (channels_last memory) normalised exactly as
    ToTensor + Normalize do it (``x / 255``, then ``(x - mean) / std``)."""

    def __init__(self, device):
        self.mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, x_nhwc_u8):
        x = x_nhwc_u8.permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return x.sub_(self.mean).div_(self.std).contiguous(memory_format=torch.channels_last)


def pil_crops(store, idx, top, left, h, w, flips, size):
    """RandomResizedCrop's resize with PIL, per sample: a uint8 (B, size, size, 3)
    batch. Images stored at their original size go through exactly torchvision's
    ``resized_crop`` (crop, then ``resize((size, size), BILINEAR)``); downscaled ones
    use PIL's resize with the box mapped into the stored image."""
    boxes, exact = stored_boxes(store, idx, top, left, h, w)
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(idx):
        img = store.image(int(i))
        if exact[k]:
            t, l_ = int(top[k]), int(left[k])
            im = Image.fromarray(img[t : t + int(h[k]), l_ : l_ + int(w[k])])
            im = im.resize((size, size), Image.BILINEAR)
        else:
            im = Image.fromarray(img).resize(
                (size, size), Image.BILINEAR, box=tuple(float(v) for v in boxes[k])
            )
        a = np.asarray(im)
        out[k] = a[:, ::-1] if flips[k] else a
    return out


class DeviceImages:
    """The training store on a device (one flat uint8 tensor) and batched
    RandomResizedCrop with `roi_align`: per batch, one gather of each crop's pixel
    region (edges replicated), one `roi_align`, flips and normalisation, all on the
    device; the host only draws the crop boxes."""

    def __init__(self, store, device):
        self.device = torch.device(device)
        self.store = store
        self.px = torch.from_numpy(store.data).to(self.device).view(-1, 3)
        self.off = torch.from_numpy(store.offsets // 3).to(self.device)
        self.hw = torch.from_numpy(store.shapes.astype(np.int64)).to(self.device)

    def crops(self, idx, top, left, h, w, flips, size, normalizer):
        B = len(idx)
        boxes, _ = stored_boxes(self.store, idx, top, left, h, w)
        rx0 = np.floor(boxes[:, 0]).astype(np.int64) - 1
        ry0 = np.floor(boxes[:, 1]).astype(np.int64) - 1
        Wr = int((np.ceil(boxes[:, 2]).astype(np.int64) + 2 - rx0).max())
        Hr = int((np.ceil(boxes[:, 3]).astype(np.int64) + 2 - ry0).max())
        meta = np.empty((B, 8), dtype=np.float64)
        meta[:, 0], meta[:, 1], meta[:, 2] = idx, rx0, ry0
        meta[:, 3:7] = boxes - np.stack([rx0, ry0, rx0, ry0], axis=1)
        meta[:, 7] = flips
        m = torch.from_numpy(meta)
        if self.device.type == "cuda":
            m = m.pin_memory()
        m = m.to(self.device, non_blocking=True)
        bi, x0, y0 = m[:, 0].long(), m[:, 1].long(), m[:, 2].long()
        H, W, off = self.hw[bi, 0], self.hw[bi, 1], self.off[bi]
        ys = torch.minimum(
            (y0[:, None] + torch.arange(Hr, device=self.device)).clamp_(min=0), H[:, None] - 1
        )
        xs = torch.minimum(
            (x0[:, None] + torch.arange(Wr, device=self.device)).clamp_(min=0), W[:, None] - 1
        )
        pix = off[:, None, None] + ys[:, :, None] * W[:, None, None] + xs[:, None, :]
        region = self.px.index_select(0, pix.view(-1)).view(B, Hr, Wr, 3)
        region = region.permute(0, 3, 1, 2).to(torch.float32)
        rois = torch.cat(
            [
                torch.arange(B, device=self.device, dtype=torch.float32)[:, None],
                m[:, 3:7].to(torch.float32),
            ],
            dim=1,
        )
        out = roi_align(
            region.contiguous(),
            rois,
            (size, size),
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        flip = m[:, 7].bool()[:, None, None, None]
        out = torch.where(flip, out.flip(3), out)
        out = out.div_(255).sub_(normalizer.mean).div_(normalizer.std)
        return out.contiguous(memory_format=torch.channels_last)


_BACKGROUND = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="d2lft-decode")


class FastData:
    """Decoded train and test stores and the batches of the fast pipeline."""

    def __init__(
        self,
        data_dir,
        image_size,
        batch_size,
        device,
        seed=None,
        decode_cache="memory",
        augment=None,
        shard=(1, 0),
        on_disk=False,
    ):
        self.device = torch.device(device)
        self.world, self.rank = shard
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.rng = np.random.default_rng(run_seed(seed))
        train_paths, self.train_labels = split_samples(os.path.join(data_dir, "train"))
        test_paths, self.test_labels = split_samples(held_out(data_dir))
        # the test images are decoded in the background while the training images are
        # (and while the first epoch trains); `self.test` waits for them
        self._test_job = _BACKGROUND.submit(
            test_store, test_paths, image_size, decode_cache, on_disk
        )
        try:
            self.train = train_store(
                train_paths,
                image_size,
                decode_cache,
                decoder=decoder(self.device),
                on_disk=on_disk,
            )
        except BaseException:
            self._test_job.cancel()
            raise
        if augment in (None, "auto"):  # roi_align needs every image on the device
            augment = "roi_align" if self.device.type == "cuda" and not on_disk else "pil"
        if augment == "roi_align" and on_disk:
            raise ValueError(
                "augment='roi_align' keeps every decoded image on the device, "
                "but they exceed the memory budget: use augment='pil' or a "
                "larger memory_budget_mb"
            )
        if augment not in AUGMENTERS:
            raise ValueError(f"augment must be one of {AUGMENTERS}, got {augment!r}")
        self.augment = augment
        self.norm = Normalizer(self.device)
        self.pin = self.device.type == "cuda"
        self.dev_images = DeviceImages(self.train, self.device) if augment == "roi_align" else None
        self.y_train = torch.from_numpy(self.train_labels).to(self.device)
        self.y_test = torch.from_numpy(self.test_labels).to(self.device)

    @property
    def test(self):
        """The test store (waits for its background decoding)."""
        return self._test_job.result()

    def set_epoch(self, epoch):
        """Draw epoch `epoch`'s shuffle and crops from (seed, epoch) alone (as the book
        path does), so a resumed run continues exactly; unseeded runs go on drawing."""
        if self.seed is not None:
            self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))

    @property
    def num_train(self):
        return len(self.train_labels)

    def _draw(self, idx):
        o = self.train.orig[idx]
        top, left, h, w = sample_resized_crops(self.rng, o[:, 0], o[:, 1])
        flips = self.rng.random(len(idx)) < 0.5
        return top, left, h, w, flips

    def _to_device(self, arr_u8):
        t = torch.from_numpy(arr_u8)
        if self.pin:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def train_batches(self, shuffle=True, sharded=True):
        """One epoch of (X, y, idx): X normalised float32 channels_last on the device
        (a distributed worker's shards of the batches unless `sharded=False`)."""
        world = self.world if sharded else 1
        draws = epoch_draws(
            self.rng, self.num_train, self.batch_size, self._draw, shuffle, (world, self.rank)
        )
        batches = [b for b, _ in draws]
        idx_dev = [torch.from_numpy(b).to(self.device, non_blocking=True) for b in batches]
        if self.augment == "roi_align":
            for (b, d), bd in zip(draws, idx_dev, strict=True):
                X = self.dev_images.crops(b, *d, self.image_size, self.norm)
                yield X, self.y_train[bd], b
            return
        for u8, b, bd in zip(
            _prefetch(lambda d: pil_crops(self.train, d[0], *d[1], self.image_size), draws),
            batches,
            idx_dev,
            strict=False,
        ):
            yield self.norm(self._to_device(u8)), self.y_train[bd], b

    def test_batches(self):
        """This worker's part of the test set (all of it outside a distributed run)."""
        lo, hi = shard_bounds(len(self.test_labels), self.world, self.rank)
        for s in range(lo, hi, self.batch_size):
            e = min(s + self.batch_size, hi)
            u8 = torch.from_numpy(self.test.rows(s, e))  # read per batch from a disk store
            if self.device.type != "cpu":
                u8 = (u8.pin_memory() if self.pin else u8).to(self.device, non_blocking=True)
            yield self.norm(u8), self.y_test[s:e]


def _prefetch(fn, items, depth=2):
    """``map(fn, items)`` computed one or two items ahead in a background thread."""
    q = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put((fn(it), None))
        except BaseException as err:  # handed to the consumer
            q.put((None, err))
        q.put((done, None))

    t = threading.Thread(target=work, name="d2lft-augment", daemon=True)
    t.start()
    try:
        while True:
            value, err = q.get()
            if err is not None:
                raise err
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
