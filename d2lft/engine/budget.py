"""Will a batch fit in memory? Checked before a run, so that an image size or a batch
size that the host cannot hold is refused with a message instead of driving the
machine into its out-of-memory killer.

The estimate is ResNet-18's activations, which grow with the number of pixels: per
image at 224 px, about 48 MiB for a training step (the activations kept for the
backward pass and their gradients) and 8 MiB for a forward pass without gradients,
measured as the peak resident memory of torch fp32 steps on a CPU (39-48 and 7 MiB
per image at 224 and 448 px); plus a fixed 256 MiB (weights, gradients, a batch of
inputs). It is compared with what the host can still give
(:func:`d2lft._sys.memory.available_bytes`; ``$D2LFT_MEMORY_MB`` overrides it).
Training on a GPU keeps the activations there: the host check is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._sys.memory import MEMORY_ENV, available_bytes

#: MiB of activations per image at 224 px: a training step, a forward pass
TRAIN_MB_224 = 48
INFER_MB_224 = 8
OVERHEAD_MB = 256


def _mb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def per_image_bytes(image_size: int, training: bool = True) -> int:
    """Estimated bytes of ResNet-18 activations for one image at `image_size` px."""
    mb = TRAIN_MB_224 if training else INFER_MB_224
    return int(mb * 2**20 * (image_size / 224) ** 2)


def on_cpu(devices: Sequence | None) -> bool:
    """Whether `devices` (the framework's device objects or names) are all the CPU."""
    return not devices or all(str(d).lower().startswith("cpu") for d in devices)


def check_fits(
    image_size: int, batch_size: int, *, training: bool = True, devices: Sequence | None = None
) -> None:
    """ValueError, saying the largest batch (or image size) that fits, when a batch of
    `batch_size` images of `image_size` px needs more memory than the host has left.
    Training on devices that are not the CPU is not checked here."""
    if training and not on_cpu(devices):
        return
    avail, source = available_bytes()
    if avail is None:
        return
    one = per_image_bytes(image_size, training)
    overhead = OVERHEAD_MB * 2**20
    need = one * batch_size + overhead
    if need <= avail:
        return
    room = max(avail - overhead, 0)
    fit = room // one
    what = "a training step" if training else "a prediction batch"
    if fit >= 1:
        hint = (
            f"the largest batch that fits at image size {image_size} is {fit} "
            f"(batch_size={fit}; CLI: --batch-size {fit})"
        )
    else:
        mb = TRAIN_MB_224 if training else INFER_MB_224
        size = max(int(224 * math.sqrt(room / (mb * 2**20))) if room else 0, 0)
        hint = (
            f"not even one image fits: use an image size of at most {size} "
            f"(image_size=; CLI: --image-size)"
            if size >= 8
            else "not even one image fits at any size: free some memory"
        )
    raise ValueError(
        f"{what} at image size {image_size} with batch size {batch_size} needs about "
        f"{_mb(need)} of memory for ResNet-18's activations, but {_mb(avail)} is "
        f"available ({source}); {hint}. ${MEMORY_ENV} sets the memory to plan for"
    )


__all__ = ["INFER_MB_224", "TRAIN_MB_224", "check_fits", "on_cpu", "per_image_bytes"]
