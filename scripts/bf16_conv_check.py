"""Check oneDNN's bf16 convolution weight gradient on this CPU, and d2lft's guard.

    python scripts/bf16_conv_check.py

For a grid of small convolutions (input sizes 1-4 px, kernels 1/3/5/7, strides 1-3)
it computes the weight gradient under CPU bf16 autocast several times and compares it
with fp32 on the same (bf16-rounded) input. A relative error above 0.1 (or a
non-finite value) is a kernel failure: torch 2.14.1 leaves parts of the gradient
unwritten when a strided convolution's kernel tap meets only padding (e.g. a 3x3,
stride-2 convolution over a 1x1 input), and those entries hold whatever the memory
held. Each failing shape must be one that `d2lft.backends.torch.runtime.bf16_unsafe_convs`
runs in fp32; the script exits 1 if one is not. Prints the CPU's bf16 units first.
"""

from __future__ import annotations

import itertools
import sys

import torch

from d2lft.backends.torch.runtime import _all_padding_tap, cpu_has_bf16


def rel_error(H, W, k, stride, pad, reps=4, cin=32, cout=64, n=4):
    conv = torch.nn.Conv2d(cin, cout, k, stride, pad, bias=False)
    x = torch.randn(n, cin, H, W)
    ref = torch.nn.Conv2d(cin, cout, k, stride, pad, bias=False)
    ref.weight.data.copy_(conv.weight.data)
    ref(x.bfloat16().float()).sum().backward()
    scale = ref.weight.grad.abs().max() + 1e-6
    worst = 0.0
    for _ in range(reps):
        # dirty the allocator's free memory, as a training run's heap is
        torch.full((1 << 20,), float("nan")).sum()
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().sum().backward()
        d = ((conv.weight.grad.float() - ref.weight.grad).abs() / scale).max().item()
        worst = max(worst, d if d == d else float("inf"))
    return worst


def main():
    torch.manual_seed(0)
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = " ".join(
                sorted(
                    {
                        w
                        for line in f
                        if line.startswith("flags")
                        for w in line.split()
                        if "bf16" in w or "amx" in w
                    }
                )
            )
    except OSError:
        pass
    print(f"torch {torch.__version__}; bf16 units: {cpu_has_bf16()} ({flags or 'none'})")
    missed = failures = 0
    for H, W, k, s in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 3, 5, 7), (1, 2, 3)):
        p = k // 2
        err = rel_error(H, W, k, s, p)
        guarded = any(_all_padding_tap(n, k, s, p, 1) for n in (H, W))
        bad = not err < 0.1
        failures += bad
        missed += bad and not guarded
        if bad or guarded:
            print(
                f"input {H}x{W} kernel {k} stride {s} pad {p}: error {err:.3g}"
                f"{'  FAILS' if bad else ''}{'  (fp32 in d2lft)' if guarded else ''}"
            )
    print(f"{failures} failing shape(s), {missed} not covered by d2lft's guard")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
