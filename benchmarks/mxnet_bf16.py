#!/usr/bin/env python
"""Can MXNet 1.9 train the chapter's network in bf16 on this CPU, and is it faster?

    python benchmarks/mxnet_bf16.py --image-size 112 --batch-size 64 --rounds 3

MXNet 1.9's AMP (``mxnet.contrib.amp.init(target_dtype='bfloat16')``) patches MXNet's
operator functions for the whole process (there is no scope and no undo), so each
measurement runs in a fresh interpreter: ``fp32`` and ``bf16`` alternate for
`--rounds` rounds. Each trains ResNet-18 v2 (the MXNet tab's architecture, random
weights, the book's SGD with weight decay 0.001) on fixed synthetic batches, with
``hybridize(static_alloc=True, static_shape=True)`` as the fast pipeline runs it, and
reports training images/s after `--warmup` steps, the loss over the steps, and whether
the gradients stay finite. Results go to ``--out`` (JSON and markdown), with the CPU's
bf16 units named. oneDNN, under MXNet 1.9, has no bf16 kernels at all on a CPU
without AVX-512 (``could not create a primitive descriptor iterator``): the script
tries one tiny bf16 convolution first (:func:`bf16_probe`) and, where it fails, says so
in one line and exits with status 0, measuring nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (machine_info, versions; puts the repo on sys.path)


def one(precision: str, image_size: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Train in this process (call in a fresh interpreter: AMP is process-wide)."""
    from d2lft._sys.threads import mxnet_threads_env

    os.environ.update(mxnet_threads_env())  # d2lft's MXNet threads, set before the import
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    if precision == "bf16":
        from mxnet.contrib import amp

        amp.init(target_dtype="bfloat16")
    mx.random.seed(0)
    net = gluon.model_zoo.vision.resnet18_v2(classes=2)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "wd": 1e-3})
    if precision == "bf16":
        amp.init_trainer(trainer)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.standard_normal((batch_size, 3, image_size, image_size), np.float32))
    y = mx.nd.array(rng.integers(0, 2, batch_size))
    losses, start = [], None
    for step in range(warmup + steps):
        if step == warmup:
            mx.nd.waitall()
            start = time.perf_counter()
        with autograd.record():
            out = net(x)
            loss = loss_fn(out.astype("float32"), y)
        loss.backward()
        trainer.step(batch_size)
        losses.append(float(loss.mean().asscalar()))
    mx.nd.waitall()
    seconds = time.perf_counter() - start
    grads = [p.grad().asnumpy() for p in net.collect_params().values() if p.grad_req != "null"]
    return {
        "precision": precision,
        "images_per_sec": steps * batch_size / seconds,
        "losses": losses,
        "finite_grads": bool(all(np.isfinite(g).all() for g in grads)),
        "output_dtype": str(out.dtype),
    }


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 units named in /proc/cpuinfo (amx_bf16, avx512_bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"amx_bf16", "avx512_bf16"} & set(flags))


PROBE = """
import numpy as np, mxnet as mx
bf16 = np.dtype([("bfloat16", np.uint16)])  # MXNet 1.9's name for bfloat16
x = mx.nd.amp_cast(mx.nd.ones((1, 3, 8, 8)), dtype=bf16)
w = mx.nd.amp_cast(mx.nd.ones((4, 3, 3, 3)), dtype=bf16)
y = mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=4, no_bias=True)
assert float(mx.nd.amp_cast(y, dtype="float32").sum().asscalar()) == 4 * 36 * 27
"""


def bf16_probe() -> str | None:
    """None when MXNet runs a bf16 convolution on this CPU, else why not (one line).

    Runs in a fresh interpreter: oneDNN picks its kernels once per process (and reads
    ``DNNL_MAX_CPU_ISA`` then, which is how the tests take the AVX-512 units away)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--one", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        r = one(args.one, args.image_size, args.batch_size, args.steps, args.warmup)
        print(json.dumps(r))
        return 0
    why = bf16_probe()
    if why is not None:
        units = ", ".join(cpu_bf16_flags()) or "none"
        isa = os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA")
        units += f", oneDNN limited to {isa}" if isa else ""
        print(f"mxnet_bf16: MXNet cannot run bf16 on this CPU (bf16 units: {units}; {why}); "
              "nothing measured")  # fmt: skip
        return 0
    rows = []
    for rnd in range(args.rounds):
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, __file__, "--one", precision, "--image-size",
                   str(args.image_size), "--batch-size", str(args.batch_size), "--steps",
                   str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{precision} failed (exit {done.returncode})")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r["round"] = rnd
            rows.append(r)
            print(
                f"round {rnd} {precision}: {r['images_per_sec']:.1f} img/s, loss "
                f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, finite grads "
                f"{r['finite_grads']}",
                flush=True,
            )
    best = {
        pr: max(r["images_per_sec"] for r in rows if r["precision"] == pr)
        for pr in ("fp32", "bf16")
    }
    result = {
        "command": "python benchmarks/mxnet_bf16.py " + shlex.join(argv or sys.argv[1:]),
        "commit": bench_train.git_commit(),
        "machine": bench_train.machine_info("cpu"),
        "cpu_bf16_units": cpu_bf16_flags() or "none",
        "versions": bench_train.versions(["mxnet"]),
        "args": {k: v for k, v in vars(args).items() if k != "one"},
        "rows": rows,
        "best_images_per_sec": best,
        "bf16_over_fp32": best["bf16"] / best["fp32"],
    }
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{stamp}-mxnet-bf16" + (f"-{args.tag}" if args.tag else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = [
        f"# MXNet bf16 (AMP) vs fp32 training, {args.image_size} px, batch {args.batch_size}",
        "",
        f"`{result['command']}` on {result['machine'].get('cpu')} "
        f"({result['machine'].get('cpus_available')} CPUs; bf16 units: "
        f"{result['cpu_bf16_units']}), commit {result['commit']}",
        "",
        "| round | precision | images/s | first loss | last loss | finite grads |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['round']} | {r['precision']} | {r['images_per_sec']:.1f} | "
            f"{r['losses'][0]:.3f} | {r['losses'][-1]:.3f} | {r['finite_grads']} |"
            for r in rows
        ),
        "",
        f"best: fp32 {best['fp32']:.1f}, bf16 {best['bf16']:.1f} images/s "
        f"(bf16/fp32 {result['bf16_over_fp32']:.2f})",
    ]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[-1:]))
    print(f"wrote {out / name}.json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
