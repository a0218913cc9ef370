#!/usr/bin/env python
"""Page faults and speed of a CPU training step with and without d2lft's heap retention.

    python benchmarks/heap_faults.py                      # torch, 112 px, batch 128
    python benchmarks/heap_faults.py --backend mxnet --image-size 112

Each measurement runs in a fresh process: a ResNet-18 (2 classes, random weights) on
one pre-made batch, as the pipelines run it (torch: the fast path's fp32 channels_last
step, SGD, the book's summed loss; MXNet: the book's ``hybridize()`` step), two untimed
warm-up steps, then ``--steps`` timed training steps and as many evaluation batches.
``default`` leaves glibc's malloc as it is; ``retain`` runs inside
``d2lft._sys.heap.retain()``, as ``train_fine_tuning`` does. The two alternate for
``--reps`` rounds (the VM's speed drifts), and the medians and their ratio are
reported with minor page faults and system CPU seconds per step and the process's
peak resident memory (``getrusage``): retained blocks stay resident, and a heap that
reuses freed blocks of changing sizes grows past the live data (fragmentation).
Results go to ``--out`` (default benchmarks/results/) as JSON and markdown with the
machine, versions and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (machine_info, versions; puts the repo on sys.path)


def _torch_step(size, batch):
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, weight_decay=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    loss = torch.nn.CrossEntropyLoss(reduction="none")

    def train():
        net.train()
        opt.zero_grad()
        loss(net(x), y).sum().backward()
        opt.step()

    def evaluate():
        net.eval()
        with torch.no_grad():
            net(x).argmax(1)

    return train, evaluate


def _mxnet_step(size, batch):
    from d2lft.backends.mxnet._compat import import_mxnet

    mx = import_mxnet()
    from mxnet import autograd, gluon

    mx.random.seed(0)
    net = gluon.model_zoo.vision.resnet18_v1(classes=2)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-4, "wd": 1e-3})
    x = mx.nd.random.normal(shape=(batch, 3, size, size))
    y = mx.nd.zeros((batch,))
    loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def train():
        with autograd.record():
            l = loss(net(x), y)
        l.backward()
        trainer.step(batch)
        l.wait_to_read()

    def evaluate():
        net(x).argmax(axis=1).wait_to_read()

    return train, evaluate


def measure(backend, mode, size, batch, steps):
    """One process's figures (called in a fresh process)."""
    import contextlib
    import resource

    from d2lft._sys.heap import retain

    train, evaluate = (_torch_step if backend == "torch" else _mxnet_step)(size, batch)
    with retain() if mode == "retain" else contextlib.nullcontext(False) as on:
        for _ in range(2):
            train()
            evaluate()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(steps):
            train()
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(steps):
            evaluate()
        t2 = time.perf_counter()
    return {
        "mode": mode,
        "retained": bool(on),
        "train_images_per_sec": round(batch * steps / (t1 - t0), 2),
        "eval_images_per_sec": round(batch * steps / (t2 - t1), 2),
        "minflt_per_step": round((r1.ru_minflt - r0.ru_minflt) / steps),
        "sys_s_per_step": round((r1.ru_stime - r0.ru_stime) / steps, 4),
        "user_s_per_step": round((r1.ru_utime - r0.ru_utime) / steps, 4),
        # this fresh process's peak resident memory (Linux reports KiB)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _child(args, mode, conn):
    try:
        conn.send(
            ("ok", measure(args.backend, mode, args.image_size, args.batch_size, args.steps))
        )
    except BaseException as err:  # reported by the parent
        conn.send(("error", f"{type(err).__name__}: {err}"))


def run_isolated(args, mode):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(args, mode, child))
    p.start()
    child.close()
    status, value = parent.recv()
    p.join()
    if status != "ok":
        raise SystemExit(f"{mode} failed: {value}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["torch", "mxnet"], default="torch")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(bench_train.REPO / "benchmarks" / "results"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    os.environ.pop("D2LFT_RETAIN_HEAP", None)
    runs = []
    for rep in range(args.reps):
        for mode in ("default", "retain"):
            r = run_isolated(args, mode)
            r["rep"] = rep
            runs.append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    for mode in ("default", "retain"):
        rs = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            k: statistics.median(r[k] for r in rs)
            for k in (
                "train_images_per_sec",
                "eval_images_per_sec",
                "minflt_per_step",
                "sys_s_per_step",
                "user_s_per_step",
                "peak_rss_mb",
            )
        }
    ratio = {
        k: round(summary["retain"][k] / summary["default"][k], 3)
        for k in ("train_images_per_sec", "eval_images_per_sec")
    }
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "args": vars(args),
        "machine": bench_train.machine_info("cpu"),
        "versions": bench_train.versions([args.backend]),
        "runs": runs,
        "median": summary,
        "retain_over_default": ratio,
    }
    lines = [
        f"# heap_faults: {args.backend}, {args.image_size} px, batch {args.batch_size}",
        "",
        f"- date (UTC): {result['date']}",
        f"- command: `{result['command']}`",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- medians of {args.reps} alternating rounds, each a fresh process, "
        f"{args.steps} timed steps",
        "",
        "| malloc | train img/s | eval img/s | minor faults / step | system s / step "
        "| user s / step | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("default", "retain"):
        m = summary[mode]
        lines.append(
            f"| {mode} | {m['train_images_per_sec']:.1f} | "
            f"{m['eval_images_per_sec']:.1f} | {m['minflt_per_step']:,.0f} | "
            f"{m['sys_s_per_step']:.3f} | {m['user_s_per_step']:.3f} | "
            f"{m['peak_rss_mb']:,.0f} |"
        )
    lines += [
        "",
        f"retain / default: training {ratio['train_images_per_sec']}x, "
        f"evaluation {ratio['eval_images_per_sec']}x",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    bench_train.write_result(
        args.out, f"heap-{args.backend}-cpu-{args.image_size}px", args.tag, result, text
    )
    return result


if __name__ == "__main__":
    main()
