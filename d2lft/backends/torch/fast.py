"""The fast pipeline and frozen-feature training (exercise 3), PyTorch side.

`train_fine_tuning(..., pipeline='fast')` computes what the chapter computes, faster:

* every image is decoded once (:mod:`d2lft.decode_cache`), not once per epoch;
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
  equal the book's batches bit for bit (normalisation is the same float ops);
* channels_last; bf16 autocast on CUDA and on CPUs with bf16 units (AMX or
  AVX512-BF16), ``precision='fp32'`` for parity runs; optional ``torch.compile``;
  metrics accumulate on the device and are read once per epoch.

`freeze=True` trains only the head (exercise 3): the backbone runs in eval mode (its
BatchNorm statistics fixed), so its output depends on the image alone. With
``pipeline='fast'`` the features of the test set are computed once and those of the
training set once per augmentation pass (`feature_passes`), and the head is trained
on them; with ``pipeline='book'`` every batch goes through the whole network as the
book's loop does.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import threading
import time

import numpy as np
import torch
from torch import nn

from ..._memory import HostPeak
from ...data import load_rgb
from ...decode_cache import (run_seed as _run_seed, epoch_batches, get_cache, sample_resized_crops, stored_boxes,
                             train_store)
from ...history import History
from ...training import (PRECISIONS, Reporter, TrainingDiverged, check_finite,
                         check_speed_options, end_epoch, finish_run)
from .data import MEAN, STD, image_folder, make_loaders, test_resize
from .models import HEAD

AUGMENTERS = ("pil", "roi_align")


# ------------------------------------------------------------------ hardware

def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 arithmetic units (AMX-BF16 or AVX512-BF16), where
    bf16 autocast speeds training up; elsewhere it only emulates bf16 and is slower."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - very old torch
            pass
    cap = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).lower()
    if "bf16" in cap or "amx" in cap:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:  # pragma: no cover
        pass
    return False


def resolve_precision(precision, device) -> str:
    """'fp32' or 'bf16' for `device`: 'auto' picks bf16 on CUDA GPUs that support it
    and on CPUs with bf16 units, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        ok = cpu_has_bf16() if precision == "auto" else True
    else:
        ok = False
    if precision == "auto":
        return "bf16" if ok else "fp32"
    if precision == "bf16" and not ok:
        raise ValueError(f"precision='bf16' is not supported on {device}; use 'fp32' or 'auto'")
    return precision


def _autocast(device, precision):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


def _all_padding_tap(size, kernel, stride, padding, dilation) -> bool:
    """True when, along one dimension of `size` input pixels with `stride` > 1, some
    kernel tap meets only padding at every output position."""
    if stride <= 1:
        return False
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    for t in range(kernel):
        if not any(0 <= o * stride - padding + t * dilation < size for o in range(max(out, 0))):
            return True
    return False


def bf16_unsafe_convs(net, image_size, device="cpu"):
    """The convolutions of `net` that must not run in bf16 on the CPU at `image_size`.

    oneDNN's bf16 convolution (PyTorch 2.x on CPUs, AVX512-BF16 and AMX kernels) leaves
    part of the *weight gradient* unwritten when a kernel tap meets only padding, e.g.
    a stride-2 3x3 convolution over a 1x1 input (ResNet-18's ``layer4.0.conv1`` at
    ``image_size <= 16``): those gradient entries are whatever the memory held (seen
    here: 1e30, inf; on AMX machines NaN), so the run diverges or differs from run to
    run (`python scripts/bf16_conv_check.py` shows the kernel error). fp32 and bf16 on
    larger inputs compute them exactly (zero). This finds such layers with one fp32
    forward pass of a blank image (eval mode, no gradient): every strided convolution
    with an all-padding tap, a superset of every failing shape measured (stride 1 never
    failed). Returns ``[(name, module)]``."""
    seen = {}

    def hook(name):
        def record(module, args):
            seen[name] = tuple(args[0].shape[-2:])
        return record

    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in convs]
    was_training = net.training
    try:
        net.eval()
        p = next(net.parameters())
        with torch.no_grad():
            channels = convs[0][1].in_channels if convs else 3
            net(torch.zeros(1, channels, image_size, image_size, device=device,
                            dtype=p.dtype))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    unsafe = []
    for name, m in convs:
        if name not in seen:
            continue
        dims = zip(seen[name], m.kernel_size, m.stride, m.padding, m.dilation)
        if any(_all_padding_tap(*d) for d in dims):
            unsafe.append((name, m))
    return unsafe


def _fp32_forward(module, x):
    with torch.autocast(device_type=x.device.type, enabled=False):
        return type(module).forward(module, x.float())


@contextlib.contextmanager
def bf16_guard(net, image_size, device, precision):
    """Under bf16 on the CPU, run the convolutions of :func:`bf16_unsafe_convs` in fp32
    (they see a pixel or two, so this costs nothing); yields their names."""
    device = torch.device(device)
    if precision != "bf16" or device.type != "cpu":
        yield []
        return
    unsafe = bf16_unsafe_convs(net, image_size, device)
    for _, m in unsafe:
        m.forward = _fp32_forward.__get__(m)
    try:
        yield [n for n, _ in unsafe]
    finally:
        for _, m in unsafe:
            del m.forward


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunMemory:
    """Peak host memory (resident set, sampled) and device memory of a run."""

    def __init__(self, devices):
        self.devices = [torch.device(d) for d in devices]
        self.host = HostPeak()

    def start(self):
        for d in self.devices:
            if d.type == "cuda":
                torch.cuda.reset_peak_memory_stats(d)
        self.host.start()
        return self

    def finish(self, history):
        self.host.stop()
        history.peak_host_mb = self.host.peak_mb
        cuda = [d for d in self.devices if d.type == "cuda"]
        history.peak_device_mb = (max(torch.cuda.max_memory_allocated(d) for d in cuda) / 2**20
                                  if cuda else float("nan"))
        return history


# ------------------------------------------------------------------ data

def split_samples(folder):
    """(paths, labels) of one split folder, in the book's ImageFolder order."""
    ds = image_folder(folder)
    return [p for p, _ in ds.samples], np.array([t for _, t in ds.samples], dtype=np.int64)


def book_test_uint8(path, image_size):
    """The book's test transform up to ToTensor, as uint8 HxWx3: torchvision's own
    Resize([s, s]) and CenterCrop on the dataset loader's image (`load_rgb`)."""
    from torchvision import transforms
    s = test_resize(image_size)
    img = load_rgb(path)
    out = transforms.CenterCrop(image_size)(transforms.Resize([s, s])(img))
    return np.asarray(out, dtype=np.uint8), (img.height, img.width)


def test_store(paths, image_size, decode_cache="memory"):
    return get_cache(decode_cache).load(paths, f"torch-test-{image_size}",
                                        lambda p: book_test_uint8(p, image_size))


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
    from PIL import Image
    boxes, exact = stored_boxes(store, idx, top, left, h, w)
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(idx):
        img = store.image(int(i))
        if exact[k]:
            t, l_ = int(top[k]), int(left[k])
            im = Image.fromarray(img[t:t + int(h[k]), l_:l_ + int(w[k])])
            im = im.resize((size, size), Image.BILINEAR)
        else:
            im = Image.fromarray(img).resize((size, size), Image.BILINEAR,
                                             box=tuple(float(v) for v in boxes[k]))
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
        ys = torch.minimum((y0[:, None] + torch.arange(Hr, device=self.device)).clamp_(min=0),
                           H[:, None] - 1)
        xs = torch.minimum((x0[:, None] + torch.arange(Wr, device=self.device)).clamp_(min=0),
                           W[:, None] - 1)
        pix = off[:, None, None] + ys[:, :, None] * W[:, None, None] + xs[:, None, :]
        region = self.px.index_select(0, pix.view(-1)).view(B, Hr, Wr, 3)
        region = region.permute(0, 3, 1, 2).to(torch.float32)
        from torchvision.ops import roi_align
        rois = torch.cat([torch.arange(B, device=self.device, dtype=torch.float32)[:, None],
                          m[:, 3:7].to(torch.float32)], dim=1)
        out = roi_align(region.contiguous(), rois, (size, size), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        flip = m[:, 7].bool()[:, None, None, None]
        out = torch.where(flip, out.flip(3), out)
        out = out.div_(255).sub_(normalizer.mean).div_(normalizer.std)
        return out.contiguous(memory_format=torch.channels_last)


_BACKGROUND = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="d2lft-decode")


class FastData:
    """Decoded train and test stores and the batches of the fast pipeline."""

    def __init__(self, data_dir, image_size, batch_size, device, seed=None,
                 decode_cache="memory", augment=None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.rng = np.random.default_rng(_run_seed(seed))
        train_paths, self.train_labels = split_samples(os.path.join(data_dir, "train"))
        test_paths, self.test_labels = split_samples(os.path.join(data_dir, "test"))
        # the test images are decoded in the background while the training images are
        # (and while the first epoch trains); `self.test` waits for them
        self._test_job = _BACKGROUND.submit(test_store, test_paths, image_size, decode_cache)
        try:
            from .gpu_decode import decoder
            self.train = train_store(train_paths, image_size, decode_cache,
                                     decoder=decoder(self.device))
        except BaseException:
            self._test_job.cancel()
            raise
        if augment is None:
            augment = "roi_align" if self.device.type == "cuda" else "pil"
        if augment not in AUGMENTERS:
            raise ValueError(f"augment must be one of {AUGMENTERS}, got {augment!r}")
        self.augment = augment
        self.norm = Normalizer(self.device)
        self.pin = self.device.type == "cuda"
        self.dev_images = DeviceImages(self.train, self.device) if augment == "roi_align" else None
        self.y_train = torch.from_numpy(self.train_labels).to(self.device)
        self.y_test = torch.from_numpy(self.test_labels).to(self.device)
        self._test_u8 = None

    @property
    def test(self):
        """The test store (waits for its background decoding)."""
        return self._test_job.result()

    @property
    def test_u8(self):
        if self._test_u8 is None:
            u8 = torch.from_numpy(self.test.stack())
            self._test_u8 = u8.to(self.device) if self.device.type == "cuda" else u8
        return self._test_u8

    def set_epoch(self, epoch):
        """Draw epoch `epoch`'s shuffle and crops from (seed, epoch) alone (as the book
        path does), so a resumed run continues exactly; unseeded runs go on drawing."""
        if self.seed is not None:
            from ...checkpoint import epoch_seed
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

    def train_batches(self, shuffle=True):
        """One epoch of (X, y, idx): X normalised float32 channels_last on the device."""
        batches = epoch_batches(self.rng, self.num_train, self.batch_size, shuffle)
        idx_dev = [torch.from_numpy(b).to(self.device, non_blocking=True) for b in batches]
        if self.augment == "roi_align":
            for b, bd in zip(batches, idx_dev):
                X = self.dev_images.crops(b, *self._draw(b), self.image_size, self.norm)
                yield X, self.y_train[bd], b
            return
        draws = [(b, self._draw(b)) for b in batches]  # drawn here: same stream as roi_align
        for u8, b, bd in zip(_prefetch(lambda d: pil_crops(self.train, d[0], *d[1],
                                                             self.image_size), draws),
                             batches, idx_dev):
            yield self.norm(self._to_device(u8)), self.y_train[bd], b

    def test_batches(self):
        n = len(self.test_labels)
        for s in range(0, n, self.batch_size):
            u8 = self.test_u8[s:s + self.batch_size]
            if u8.device.type == "cpu" and self.device.type != "cpu":
                u8 = (u8.pin_memory() if self.pin else u8).to(self.device, non_blocking=True)
            yield self.norm(u8), self.y_test[s:s + self.batch_size]


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


# ------------------------------------------------------------------ freezing

def head_params(net):
    return list(getattr(net, HEAD).parameters())


def backbone_params(net):
    head = {id(p) for p in head_params(net)}
    return [p for p in net.parameters() if id(p) not in head]


@contextlib.contextmanager
def frozen_backbone(net):
    """Backbone parameters do not require gradients (restored afterwards)."""
    params = backbone_params(net)
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)


@contextlib.contextmanager
def headless(net):
    """`net` returns its head's input (the backbone's features) instead of logits."""
    head = getattr(net, HEAD)
    setattr(net, HEAD, nn.Identity())
    try:
        yield net
    finally:
        setattr(net, HEAD, head)


def count_params(params) -> int:
    return int(sum(p.numel() for p in params))


# ------------------------------------------------------------------ training

def _check_losses(losses, epoch, learning_rate):
    """Raise TrainingDiverged at the first non-finite per-batch loss of an epoch
    (read with one host sync per epoch)."""
    if not losses:
        return
    vals = torch.stack(losses).double().cpu().numpy()
    for i, v in enumerate(vals):
        check_finite(float(v), epoch, i, learning_rate)


check_options = check_speed_options


def train_fast(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
               data_dir, image_size=224, devices=None, seed=None, num_workers=None,
               verbose=True, weight_decay=0.001, deterministic=False, checkpoint_dir=None,
               resume=None, pipeline="fast", freeze=False, precision="auto", compile=False,
               decode_cache="memory", feature_passes=1, augment=None):
    """`train_fine_tuning` for ``pipeline='fast'`` and for ``freeze=True`` (either
    pipeline); see the module docstring. Returns a :class:`History`."""
    from ...checkpoint import resume_into
    from .train import all_devices, param_groups, reseed_epoch, seed_everything
    check_options(pipeline, freeze, precision, feature_passes, deterministic, compile)
    if seed is not None:
        seed_everything(seed)
    devices = [torch.device(d) for d in devices] if devices else all_devices()
    device = devices[0]
    precision = resolve_precision("fp32" if pipeline == "book" else precision, device)
    trained = head_params(net) if freeze else list(net.parameters())
    config = dict(learning_rate=learning_rate, batch_size=batch_size, num_epochs=num_epochs,
                  param_group=param_group, image_size=image_size, seed=seed,
                  weight_decay=weight_decay, loss_reduction="sum",
                  deterministic=False, pipeline=pipeline, freeze=bool(freeze),
                  precision=precision, compile=bool(compile),
                  trained_params=count_params(trained),
                  total_params=count_params(net.parameters()))
    if freeze and pipeline == "fast":
        config["feature_passes"] = feature_passes
    history = History(backend="torch", devices=[str(d) for d in devices], config=config)
    history.trained_params = config["trained_params"]
    memory = RunMemory(devices).start()
    start = time.perf_counter()
    net.to(device)
    start_epoch = resume_into(net, resume, history) if resume is not None else 0
    resumed_examples = history.num_examples
    report = Reporter(history, num_epochs, verbose)
    if pipeline == "fast":
        net.to(memory_format=torch.channels_last)
    train_time = 0.0
    try:
        if pipeline == "book":  # freeze=True: the book's loop, frozen backbone
            run = _BookFrozen(net, learning_rate, batch_size, param_group, data_dir,
                              image_size, devices, seed, num_workers, weight_decay,
                              param_groups, reseed_epoch)
        else:
            t0 = time.perf_counter()
            data = FastData(data_dir, image_size, batch_size, device, seed=seed,
                            decode_cache=decode_cache, augment=augment)
            history.config["augment"] = data.augment
            history.config["data_setup_seconds"] = round(time.perf_counter() - t0, 3)
            cls = _FastFrozen if freeze else _FastFull
            run = cls(net, learning_rate, param_group, data, devices, precision, compile,
                      weight_decay, param_groups, feature_passes)
        with (frozen_backbone(net) if freeze else contextlib.nullcontext()), \
                bf16_guard(net, image_size, device, precision) as fp32_layers:
            if fp32_layers:
                history.config["bf16_fp32_layers"] = fp32_layers
            for epoch in range(start_epoch, num_epochs):
                loss_sum, correct, n, test_acc, seconds = run.epoch(epoch)
                train_time += seconds
                end_epoch(history, report, epoch, loss_sum, correct, n, test_acc, net=net,
                          checkpoint_dir=checkpoint_dir,
                          save=_save_plain if pipeline == "fast" else None)
    except KeyboardInterrupt:
        history.completed = False
        history.stopped_reason = "interrupted (Ctrl-C)"
    finally:
        if pipeline == "fast":  # plain layout again (safetensors needs contiguous tensors)
            net.to(memory_format=torch.contiguous_format)
    return finish_run(history, start=start, train_time=train_time,
                      resumed_examples=resumed_examples, memory=memory, report=report)


def _save_plain(net, checkpoint_dir, **kw):
    """`save_checkpoint` for the fast pipeline: written from the plain memory layout
    (safetensors needs contiguous tensors), then back to channels_last."""
    from ...checkpoint import save_checkpoint
    net.to(memory_format=torch.contiguous_format)
    save_checkpoint(net, checkpoint_dir, **kw)
    net.to(memory_format=torch.channels_last)


def _maybe_compile(module, compile):
    if not compile:
        return module
    if not hasattr(torch, "compile"):
        raise ValueError("compile=True needs torch>=2.0")
    return torch.compile(module)


class _FastFull:
    """One epoch of the fast pipeline: every layer trains (the chapter's run)."""

    def __init__(self, net, lr, param_group, data, devices, precision, compile, wd,
                 param_groups, feature_passes):
        self.lr, self.data, self.precision = lr, data, precision
        self.device = devices[0]
        self.loss = nn.CrossEntropyLoss(reduction="none")
        self.trainer = torch.optim.SGD(param_groups(net, lr, param_group), lr=lr,
                                       weight_decay=wd)
        model = nn.DataParallel(net, device_ids=devices) if len(devices) > 1 else net
        self.model = _maybe_compile(model, compile)
        self.sync_each = self.device.type != "cuda"  # a host read costs nothing on CPU

    def epoch(self, epoch):
        device, data = self.device, self.data
        data.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        losses, n = [], 0
        self.model.train()
        for i, (X, y, _) in enumerate(data.train_batches()):
            with _autocast(device, self.precision):
                pred = self.model(X)
            l = self.loss(pred.float(), y)
            self.trainer.zero_grad(set_to_none=True)
            l.sum().backward()
            self.trainer.step()
            with torch.no_grad():
                s = l.detach().sum()
                loss_sum += s
                correct += (pred.detach().argmax(dim=1) == y).sum()
            if self.sync_each:
                check_finite(float(s), epoch, i, self.lr)
            else:
                losses.append(s)
            n += y.shape[0]
        _check_losses(losses, epoch, self.lr)
        _sync(device)
        seconds = time.perf_counter() - t0
        test_acc = evaluate_fast(self.model, data, self.precision)
        return float(loss_sum), int(correct), n, test_acc, seconds


def evaluate_fast(model, data, precision):
    """Test accuracy over the fast pipeline's (book-identical) test batches."""
    device = data.device
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with torch.no_grad(), _autocast(device, precision):
        for X, y in data.test_batches():
            correct += (model(X).argmax(dim=1) == y).sum()
            n += y.shape[0]
    return int(correct) / max(n, 1)


def extract_features(net, batches, device, precision, compile=False):
    """Backbone features (the head's input, float32, one row per image) of every
    batch in `batches`, in order; the backbone runs in eval mode."""
    feats = []
    net.eval()
    with headless(net) as body, torch.no_grad(), _autocast(device, precision):
        body = _maybe_compile(body, compile)
        for X in batches:
            feats.append(body(X).float().flatten(1))
    return torch.cat(feats) if feats else torch.zeros(0, device=device)


class _FastFrozen:
    """Exercise 3 with the fast pipeline: backbone features computed once for the test
    set and once per augmentation pass for the training set (pass ``epoch %
    feature_passes``); the head trains on them in the book's batches."""

    def __init__(self, net, lr, param_group, data, devices, precision, compile, wd,
                 param_groups, feature_passes):
        self.net, self.lr, self.data, self.precision = net, lr, data, precision
        self.compile, self.passes = compile, feature_passes
        self.device = devices[0]
        self.head = getattr(net, HEAD)
        self.loss = nn.CrossEntropyLoss(reduction="none")
        self.trainer = torch.optim.SGD(param_groups(self.head, lr, param_group), lr=lr,
                                       weight_decay=wd)
        self.cached = {}
        self.test_f = None

    def _pass(self, p):
        """Features of augmentation pass `p` (its crops drawn from the seed of epoch p,
        so a resumed run computes the same ones)."""
        if p not in self.cached:
            self.data.set_epoch(p)
            batches = (X for X, _, _ in self.data.train_batches(shuffle=False))
            self.cached[p] = extract_features(self.net, batches, self.device, self.precision,
                                              self.compile)
        return self.cached[p]

    def epoch(self, epoch):
        device, data = self.device, self.data
        t0 = time.perf_counter()
        if self.test_f is None:
            self.test_f = extract_features(self.net, (X for X, _ in data.test_batches()),
                                           device, self.precision, self.compile)
        feats = self._pass(epoch % self.passes)
        data.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        losses, n = [], 0
        for b in epoch_batches(data.rng, data.num_train, data.batch_size):
            bd = torch.from_numpy(b).to(device, non_blocking=True)
            X, y = feats[bd], data.y_train[bd]
            pred = self.head(X)
            l = self.loss(pred, y)
            self.trainer.zero_grad(set_to_none=True)
            l.sum().backward()
            self.trainer.step()
            with torch.no_grad():
                s = l.detach().sum()
                loss_sum += s
                correct += (pred.argmax(dim=1) == y).sum()
            losses.append(s)
            n += y.shape[0]
        _check_losses(losses, epoch, self.lr)
        with torch.no_grad():
            test_correct = int((self.head(self.test_f).argmax(dim=1) == data.y_test).sum()) \
                if len(self.test_f) else 0
        seconds = time.perf_counter() - t0
        return float(loss_sum), int(correct), n, test_correct / max(len(data.y_test), 1), seconds


class _BookFrozen:
    """Exercise 3 the book's way: every batch from the book's loaders through the whole
    network (backbone in eval mode, no gradients), only the head updated."""

    def __init__(self, net, lr, batch_size, param_group, data_dir, image_size, devices, seed,
                 num_workers, wd, param_groups, reseed_epoch):
        self.net, self.lr, self.seed, self.reseed = net, lr, seed, reseed_epoch
        self.device = devices[0]
        self.train_iter, self.test_iter = make_loaders(data_dir, batch_size, image_size,
                                                       num_workers=num_workers, seed=seed)
        self.loss = nn.CrossEntropyLoss(reduction="none")
        self.trainer = torch.optim.SGD(param_groups(getattr(net, HEAD), lr, param_group),
                                       lr=lr, weight_decay=wd)
        self.model = nn.DataParallel(net, device_ids=devices) if len(devices) > 1 else net

    def epoch(self, epoch):
        from .train import evaluate_accuracy
        if self.seed is not None:
            self.reseed(self.seed, epoch, self.train_iter)
        loss_sum, correct, n, seconds = 0.0, 0, 0, 0.0
        for i, (X, y) in enumerate(self.train_iter):
            t0 = time.perf_counter()
            X, y = X.to(self.device), y.to(self.device)
            self.model.eval()  # BatchNorm keeps its statistics: the features are fixed
            self.trainer.zero_grad()
            pred = self.model(X)
            l = self.loss(pred, y)
            l.sum().backward()
            self.trainer.step()
            with torch.no_grad():
                batch_loss = float(l.sum())
                correct += (pred.argmax(dim=1) == y).sum().item()
            check_finite(batch_loss, epoch, i, self.lr)
            loss_sum += batch_loss
            n += y.numel()
            seconds += time.perf_counter() - t0
        test_acc = evaluate_accuracy(self.model, self.test_iter, self.device)
        return loss_sum, correct, n, test_acc, seconds


__all__ = ["train_fast", "FastData", "DeviceImages", "Normalizer", "pil_crops",
           "book_test_uint8", "resolve_precision", "cpu_has_bf16", "extract_features",
           "evaluate_fast", "frozen_backbone", "headless", "RunMemory", "check_options",
           "TrainingDiverged"]
