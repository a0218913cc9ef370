"""The PyTorch backend's runtime: devices, seeding, the chapter's parameter groups,
precision (bf16 where the hardware has it, with the oneDNN guard), device memory,
and freezing the backbone (exercise 3)."""

from __future__ import annotations

import contextlib
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ...engine.dist import DEFAULT_TIMEOUT, Job, torchrun_world
from ...engine.options import Precision
from .models import HEAD

PRECISIONS = Precision.__args__


def all_devices() -> list:
    """All GPUs, else the CPU (the book's `try_all_gpus` returns [] on a CPU machine,
    and its `train_ch13` then fails with IndexError)."""
    n = torch.cuda.device_count()
    return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]


def seed_framework(seed) -> None:
    """Seed torch's own global generator (initialisation, its random ops)."""
    torch.manual_seed(seed)


def seed_everything(seed) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_framework(seed)


def param_groups(net, learning_rate, param_group=True):
    """The chapter's optimizer parameter groups: parameters whose `lr_mult` is set
    (the new head) get `learning_rate * lr_mult`, all others `learning_rate`."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not param_group:
        return [{"params": params, "lr": learning_rate}]
    groups = {}
    for p in params:
        groups.setdefault(getattr(p, "lr_mult", 1), []).append(p)
    return [{"params": ps, "lr": learning_rate * mult} for mult, ps in sorted(groups.items())]


def count_params(params) -> int:
    return int(sum(p.numel() for p in params))


# ------------------------------------------------------------------ precision


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


def autocast(device, precision):
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )


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
            net(torch.zeros(1, channels, image_size, image_size, device=device, dtype=p.dtype))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    unsafe = []
    for name, m in convs:
        if name not in seen:
            continue
        dims = zip(seen[name], m.kernel_size, m.stride, m.padding, m.dilation, strict=True)
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


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_device_peaks(devices) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)


def device_peak_mb(devices) -> float:
    """Peak memory allocated by torch on the CUDA devices (MiB); NaN on the CPU."""
    cuda = [d for d in devices if d.type == "cuda"]
    return max(torch.cuda.max_memory_allocated(d) for d in cuda) / 2**20 if cuda else float("nan")


# ------------------------------------------------------------------ freezing (exercise 3)


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
        for p, r in zip(params, saved, strict=True):
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


# ------------------------------------------------------------------ distributed (torchrun)


class TorchJob(Job):
    """A worker of a torch.distributed job (gloo on the CPU, nccl on CUDA)."""

    def all_reduce_sum(self, values):
        t = torch.tensor(
            [float(v) for v in values],
            dtype=torch.float64,
            device=self.device if self.device.type == "cuda" else "cpu",
        )
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()


def join_job(timeout: float = DEFAULT_TIMEOUT) -> Job | None:
    """The torchrun job this process belongs to (RANK / WORLD_SIZE / MASTER_ADDR set by
    torchrun), its process group initialised once; None outside a job of two or more."""
    world = torchrun_world()
    if world is None or world < 2:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = (
        torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
    )
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout)
        )
    job = TorchJob(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        engine="torch.distributed (" + dist.get_backend() + ")",
    )
    job.device = device
    return job
