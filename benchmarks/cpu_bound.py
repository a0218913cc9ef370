#!/usr/bin/env python
"""How fast can the chapter run on this CPU at all? (torch, fp32, ResNet-18)

    python benchmarks/cpu_bound.py --image-size 112
    python benchmarks/cpu_bound.py --image-size 112 --book-images-per-sec 50.3

Three measurements, each fresh in this process, with torch's default threads:

1. the machine's fp32 matrix-multiply rate (a 4096 x 4096 GEMM, the best of 5):
   what oneDNN/MKL reach on these cores when nothing limits them but arithmetic;
2. the network's arithmetic per image (``torch.utils.flop_counter``): a training step
   (forward + backward, no gradient for the input) and an evaluation (forward);
3. where one training step's time goes (``torch.profiler``, fp32 channels_last, as the
   fast path runs it): the convolutions' share and the rate they compute at.

From 1 and 2 follows a bound on the chapter's wall clock (``train`` training and
``test`` evaluation images per epoch, the hotdog split by default): the images/s if
*every* floating-point operation ran at the GEMM rate, with no data, no BatchNorm,
no ReLU, no optimizer. With ``--book-images-per-sec`` (the book pipeline's figure
from bench_train.py on the same machine) it also prints the bound over the book,
the largest speed-up any fp32 pipeline could show. Results go to ``--out`` as JSON
and markdown.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (machine_info, versions; puts the repo on sys.path)


def gemm_gflops(n=4096, reps=5):
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_image(size, batch=8):
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    net = torchvision.models.resnet18(num_classes=2)
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as fc:
        net(x).sum().backward()
    train = fc.get_total_flops() / batch
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    return train, fc.get_total_flops() / batch


def step_profile(size, batch, steps=3):
    import torch
    import torchvision
    from torch.profiler import ProfilerActivity, profile

    from d2lft._sys.heap import retain

    torch.manual_seed(0)
    cl = torch.channels_last
    net = torchvision.models.resnet18(num_classes=2).to(memory_format=cl)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, weight_decay=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=cl)
    y = torch.randint(0, 2, (batch,))
    loss = torch.nn.CrossEntropyLoss(reduction="none")

    def step():
        opt.zero_grad()
        loss(net(x), y).sum().backward()
        opt.step()

    with retain():
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    rows = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(rows.values())
    conv = sum(
        v
        for k, v in rows.items()
        if k
        in (
            "aten::convolution_backward",
            "aten::mkldnn_convolution",
            "aten::_convolution",
            "aten::convolution",
        )
    )
    top = sorted(rows.items(), key=lambda kv: -kv[1])[:8]
    return {
        "seconds_per_step": total / steps,
        "conv_seconds_per_step": conv / steps,
        "conv_share": conv / total,
        "top_ops_seconds_per_step": {k: round(v / steps, 4) for k, v in top},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=800)
    p.add_argument("--book-images-per-sec", type=float, default=None)
    p.add_argument("--out", default=str(bench_train.REPO / "benchmarks" / "results"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    import torch

    gemm = gemm_gflops()
    f_train, f_eval = flops_per_image(args.image_size)
    prof = step_profile(args.image_size, args.batch_size)
    flops_epoch = args.train * f_train + args.test * f_eval
    bound = (args.train + args.test) / (flops_epoch / (gemm * 1e9))
    conv_flops_step = args.batch_size * f_train  # convolutions are nearly all of it
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "args": vars(args),
        "machine": bench_train.machine_info("cpu"),
        "versions": bench_train.versions(["torch"]),
        "torch_threads": torch.get_num_threads(),
        "gemm_gflops": round(gemm, 1),
        "train_gflop_per_image": round(f_train / 1e9, 3),
        "eval_gflop_per_image": round(f_eval / 1e9, 3),
        "step_profile": prof,
        "step_gflops_achieved": round(conv_flops_step / prof["seconds_per_step"] / 1e9, 1),
        "conv_gflops_achieved": round(conv_flops_step / prof["conv_seconds_per_step"] / 1e9, 1),
        "bound_images_per_sec": round(bound, 1),
    }
    if args.book_images_per_sec:
        result["bound_over_book"] = round(bound / args.book_images_per_sec, 2)
    lines = [
        f"# cpu_bound: torch fp32 ResNet-18, {args.image_size} px, batch {args.batch_size}",
        "",
        f"- date (UTC): {result['date']}",
        f"- command: `{result['command']}`",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        f"- fp32 GEMM rate, {result['torch_threads']} threads: **{gemm:.0f} GFLOP/s**",
        f"- arithmetic per image: training {f_train / 1e9:.2f} GFLOP, evaluation "
        f"{f_eval / 1e9:.2f} GFLOP",
        f"- one training step (channels_last, batch {args.batch_size}): "
        f"{prof['seconds_per_step']:.2f} s, of which convolutions "
        f"{prof['conv_share']:.0%}; the step runs at {result['step_gflops_achieved']} "
        f"GFLOP/s, its convolutions at {result['conv_gflops_achieved']} GFLOP/s "
        f"({result['conv_gflops_achieved'] / gemm:.0%} of the GEMM rate)",
        f"- the chapter's epoch ({args.train} training + {args.test} evaluation images) "
        f"with every operation at the GEMM rate: **{bound:.1f} images/s**",
    ]
    if args.book_images_per_sec:
        lines.append(
            f"- over the book pipeline's {args.book_images_per_sec} images/s: "
            f"**{result['bound_over_book']}x** at most, in fp32 on this machine"
        )
    lines += [
        "",
        "top operations, seconds per step: "
        + ", ".join(f"{k} {v}" for k, v in prof["top_ops_seconds_per_step"].items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    bench_train.write_result(args.out, f"cpu-bound-{args.image_size}px", args.tag, result, text)
    return result


if __name__ == "__main__":
    main()
