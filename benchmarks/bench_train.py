#!/usr/bin/env python
"""Book pipeline vs d2lft's fast pipeline, same data, one run (issue 5).

    python benchmarks/bench_train.py                       # torch, 2000/800 synthetic
    python benchmarks/bench_train.py --backend both --train 256 --test 128 \\
        --image-size 112 --epochs 1                        # a small CPU check
    python benchmarks/bench_train.py --data-dir ../shared/data/hotdog-real.zip \\
        --weights ../shared/data/food100-resnet18.pth --image-size 112

For every variant (``--variants``, default ``book,fast,fast-freeze``) it trains a
fresh network from the same initial weights, each variant in a fresh process (so peak
memory and thread settings are its own), with ``d2lft.train_fine_tuning`` and
reports wall-clock images/s over training *and* evaluation
(``epochs * (train + test) / wall seconds`` of the whole call: data setup, decoding,
training and the per-epoch evaluation), the ratio to the book pipeline, the final test
accuracy, the peak host and device memory and the number of trained parameters.
The fast variants start with an empty decode cache, so their one-time decoding is
included. ``ceiling`` is no pipeline: the fast path's training step and evaluation on
one pre-made batch, as many images as the runs see -- the most any input pipeline can
reach with that network, precision and machine. ``book-shipped`` is the book's
pipeline as the book's own code runs it, without d2lft's process settings: MXNet's own
OpenMP default (half the logical processors on Intel x86, where d2lft gives MXNet one
thread per physical core) and glibc's malloc defaults (d2lft keeps freed blocks in
the heap during a run, ``d2lft/_heap.py``); ``book-mxnet-threads`` (MXNet only) takes
away the threads alone.
``fast-fp32`` and ``ceiling-fp32`` force fp32 (on bf16-capable devices the others use
bf16); ``fast-pildecode`` decodes the training images with PIL on the host where the
fast path would decode them on the GPU (torch on CUDA). Results go to ``--out``
(default ``benchmarks/results/``) as JSON and markdown with the machine, the library
versions and the command line.

Without ``--data-dir`` it writes a synthetic hotdog-shaped JPEG folder (two classes,
sizes drawn from 200-500 px; ``--train``/``--test`` images in all, split evenly) into
a temporary folder, reused by later runs with the same settings. Needs only numpy,
Pillow and the backend's framework: no network (``--weights`` is a local file,
otherwise the network starts from random weights).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

VARIANTS = {
    # MXNet only: the book's pipeline with MXNet's own OpenMP default (mxnet imported
    # before d2lft, as the book's code does): half the logical processors on Intel x86
    "book-mxnet-threads": dict(pipeline="book"),
    # the book's pipeline with none of d2lft's process settings (threads, malloc)
    "book-shipped": dict(pipeline="book"),
    "book": dict(pipeline="book"),
    "fast": dict(pipeline="fast"),
    "fast-compile": dict(pipeline="fast", compile=True),
    "fast-fp32": dict(pipeline="fast", precision="fp32"),
    # torch on CUDA: the training images decoded by PIL on the host, not by nvJPEG
    "fast-pildecode": dict(pipeline="fast"),
    "fast-freeze": dict(pipeline="fast", freeze=True),
    "book-freeze": dict(pipeline="book", freeze=True),
    # not a pipeline: the fast path's training step and evaluation on one pre-made batch
    # (no data at all), as many images as the runs see: the most any input pipeline can
    # reach with this network, precision and machine
    "ceiling": dict(pipeline="none"),
    "ceiling-fp32": dict(pipeline="none", precision="fp32"),
}
#: environment variables a variant's process starts with
VARIANT_ENV = {
    "fast-pildecode": {"D2LFT_GPU_DECODE": "0"},
    "book-shipped": {"D2LFT_RETAIN_HEAP": "0"},
}
CLASSES = ("hotdog", "not-hotdog")


# ------------------------------------------------------------------ synthetic data


def _synthetic_image(rng, hotdog: bool):
    """A photo-sized JPEG-able image: hot dogs are a sausage on a bun; the others are
    a few shapes in random colours (some in hot-dog colours too)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = (int(v) for v in rng.integers(200, 501, 2))
    base = rng.integers(30, 226, 3)
    grad = np.linspace(-40, 40, w)[None, :, None] * rng.choice([-1, 1])
    arr = np.clip(base + grad + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 3))):  # clutter in both classes
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        d.rectangle([x0, y0, x0 + rng.integers(10, w // 3), y0 + rng.integers(10, h // 3)], fill=c)
    s = rng.uniform(0.45, 0.9)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    if hotdog:
        L, T = s * min(w, h) * rng.uniform(0.8, 1.1), s * min(w, h) * rng.uniform(0.25, 0.35)
        vertical = rng.random() < 0.3
        bun = tuple(
            int(v) for v in np.clip(np.array([214, 170, 110]) + rng.normal(0, 15, 3), 0, 255)
        )
        dog = tuple(
            int(v) for v in np.clip(np.array([165, 62, 40]) + rng.normal(0, 15, 3), 0, 255)
        )

        def box(a, b, vertical=vertical, cx=cx, cy=cy):
            if vertical:
                return [cx - b, cy - a, cx + b, cy + a]
            return [cx - a, cy - b, cx + a, cy + b]

        d.ellipse(box(L / 2, T / 2), fill=bun)
        d.ellipse(box(L / 2 * 1.12, T / 5), fill=dog)
        if rng.random() < 0.5:  # mustard
            d.line(
                box(L / 2 * 0.8, 0)[:2] + box(L / 2 * 0.8, 0)[2:],
                fill=(230, 200, 30),
                width=max(2, int(T / 12)),
            )
    else:
        for _ in range(int(rng.integers(1, 4))):
            r = s * min(w, h) * rng.uniform(0.15, 0.35)
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            if rng.random() < 0.5:
                d.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r], fill=c)
            else:
                d.rectangle([x - r, y - r, x + r * rng.uniform(0.5, 1.5), y + r], fill=c)
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def make_synthetic(root, n_train=2000, n_test=800, seed=0):
    """`root/{train,test}/{hotdog,not-hotdog}/N.jpg`, made once (a marker file records
    a finished folder)."""
    root = pathlib.Path(root)
    marker = root / ".complete"
    if marker.is_file():
        return root
    jobs = []
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            count = n // 2 + (n % 2 if ci == 0 else 0)
            jobs += [
                (root / split / c / f"{i}.jpg", c == "hotdog", [seed, split == "train", ci, i])
                for i in range(count)
            ]

    def write(job):
        path, hotdog, s = job
        _synthetic_image(np.random.default_rng(s), hotdog).save(path, quality=90)

    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
        list(ex.map(write, jobs))
    marker.write_text("ok")
    return root


def resolve_data(args):
    if args.data_dir is None:
        work = pathlib.Path(args.work_dir or tempfile.gettempdir())
        folder = work / f"d2lft-bench-synthetic-{args.train}-{args.test}-{args.seed}"
        t = time.perf_counter()
        make_synthetic(folder, args.train, args.test, args.seed)
        print(f"synthetic data in {folder} ({time.perf_counter() - t:.1f}s)", flush=True)
        return folder, "synthetic"
    path = pathlib.Path(args.data_dir).expanduser()
    if path.is_file():  # a zip: extract beside the work dir, not beside a read-only file
        from d2lft.data.hub import extract_zip, file_sha1

        work = pathlib.Path(args.work_dir or tempfile.gettempdir())
        digest = file_sha1(path)
        path = extract_zip(path, work / f"d2lft-bench-{path.stem}-{digest[:8]}", marker=digest)
    from d2lft.data.hub import resolve_data_dir

    return resolve_data_dir(path), str(args.data_dir)


# ------------------------------------------------------------------ machine and versions


def machine_info(device):
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def git_commit():
    """The checkout's commit (with '+dirty' when files differ from it), or None."""
    import subprocess

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty.strip() else "")) if rev else None


def versions(backends):
    import PIL

    import d2lft

    out = {
        "d2lft": d2lft.__version__,
        "commit": git_commit(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    if "torch" in backends:
        import torch
        import torchvision

        out.update(
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            torch_threads=torch.get_num_threads(),
        )
        from d2lft.backends.torch.runtime import cpu_has_bf16

        out["cpu_bf16_units"] = cpu_has_bf16()
    if "mxnet" in backends:
        import mxnet

        out["mxnet"] = mxnet.__version__
    return out


# ------------------------------------------------------------------ runs


def build_net(backend, args):
    import d2lft

    if backend == "torch":
        import torch

        torch.manual_seed(args.seed)
    else:
        import mxnet as mx

        mx.random.seed(args.seed)
        np.random.seed(args.seed)
    pretrained = args.weights if args.weights else False
    return d2lft.build_finetune_net(pretrained=pretrained, arch=args.arch)


def devices_for(backend, device):
    if backend == "torch":
        import torch

        return [torch.device(device)]
    import mxnet as mx

    return (
        [mx.gpu(int(device.split(":")[1]) if ":" in device else 0)]
        if device.startswith("cuda")
        else [mx.cpu()]
    )


def ceiling(backend, folder, args, n_train, n_test, precision="auto"):
    """Seconds for `epochs` x (n_train images of training steps + n_test of evaluation)
    on one pre-made batch: the compute alone, as the fast pipeline runs it, after one
    untimed warm-up step and evaluation (so an upper bound for the pipelines)."""
    import d2lft

    B, S, E = args.batch_size, args.image_size, args.epochs
    steps = [(min(B, n_train - s)) for s in range(0, n_train, B)]
    evals = [(min(B, n_test - s)) for s in range(0, n_test, B)]
    lr = args.lr if args.lr is not None else d2lft.BOOK_LEARNING_RATES[backend]["finetune"]
    with d2lft.using(backend):
        net = build_net(backend, args)
        if backend == "torch":
            import torch

            from d2lft.backends.torch.runtime import autocast as _autocast
            from d2lft.backends.torch.runtime import resolve_precision

            dev = torch.device(args.device)
            prec = resolve_precision(precision, dev)
            net = net.to(dev).to(memory_format=torch.channels_last)
            X = torch.randn(B, 3, S, S, device=dev).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 2, (B,), device=dev)
            opt = torch.optim.SGD(net.parameters(), lr=lr, weight_decay=1e-3)
            loss = torch.nn.CrossEntropyLoss(reduction="none")
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            t = None
            for e in range(-1, E):  # epoch -1: one step and one evaluation, untimed
                if e == 0:
                    sync()
                    t = time.perf_counter()
                net.train()
                for b in steps if e >= 0 else steps[:1]:
                    with _autocast(dev, prec):
                        l = loss(net(X[:b]), y[:b])
                    opt.zero_grad()
                    l.sum().backward()
                    opt.step()
                net.eval()
                with torch.no_grad(), _autocast(dev, prec):
                    for b in evals if e >= 0 else evals[:1]:
                        net(X[:b]).argmax(1)
            sync()
            return time.perf_counter() - t, prec
        import mxnet as mx
        from mxnet import autograd, gluon

        ctx = devices_for(backend, args.device)[0]
        net.collect_params().reset_ctx(ctx)
        net.hybridize(static_alloc=True, static_shape=True)
        X = mx.nd.random.normal(shape=(B, 3, S, S), ctx=ctx)
        y = mx.nd.zeros((B,), ctx=ctx)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr, "wd": 1e-3})
        loss = gluon.loss.SoftmaxCrossEntropyLoss()
        t = None
        for e in range(-1, E):  # epoch -1: one step and one evaluation, untimed
            if e == 0:
                mx.nd.waitall()
                t = time.perf_counter()
            for b in steps if e >= 0 else steps[:1]:
                with autograd.record():
                    l = loss(net(X[:b]), y[:b])
                l.backward()
                trainer.step(b)
                l.wait_to_read()  # one step at a time, as the pipelines run
            for b in evals if e >= 0 else evals[:1]:
                net(X[:b]).argmax(axis=1).wait_to_read()
        mx.nd.waitall()
        return time.perf_counter() - t, "fp32"


def run_ceiling(backend, name, folder, args, n_train, n_test):
    from d2lft._sys.memory import HostPeak as PeakMemory

    precision = VARIANTS[name].get("precision", args.precision)
    from d2lft._sys.heap import retain

    with PeakMemory() as mem, retain():  # as train_fine_tuning runs
        wall, prec = ceiling(backend, folder, args, n_train, n_test, precision)
    images = args.epochs * (n_train + n_test)
    return {
        "variant": name,
        "options": {"precision": prec},
        "learning_rate": None,
        "wall_seconds": round(wall, 3),
        "images_per_sec": round(images / wall, 2),
        "test_acc": [],
        "train_loss": [],
        "train_acc": [],
        "peak_host_mb": round(mem.peak_mb),
        "peak_device_mb": None,
        "trained_params": None,
        "config": {},
    }


def run_variant(backend, name, folder, args, n_train, n_test):
    if VARIANTS[name]["pipeline"] == "none":
        return run_ceiling(backend, name, folder, args, n_train, n_test)
    if name == "book-mxnet-threads" and backend != "mxnet":
        raise SystemExit("book-mxnet-threads is an MXNet variant")
    if name in ("book-mxnet-threads", "book-shipped") and backend == "mxnet":
        import mxnet  # noqa: F401  before d2lft: MXNet's own thread default
    import d2lft
    from d2lft.data import decode_cache

    decode_cache._MEMORY.clear()  # every fast run decodes from scratch
    kw = dict(VARIANTS[name])
    if kw["pipeline"] == "fast":
        kw.setdefault("precision", args.precision)
        if kw.get("freeze"):
            kw["feature_passes"] = args.feature_passes
        pipeline = d2lft.FastPipeline(**{k: v for k, v in kw.items() if k != "pipeline"})
    else:
        pipeline = d2lft.BookLoop(freeze=kw.get("freeze", False), workers=args.book_workers)
    lr = args.lr if args.lr is not None else d2lft.BOOK_LEARNING_RATES[backend]["finetune"]
    with d2lft.using(backend):
        net = build_net(backend, args)
        h = d2lft.train_fine_tuning(
            net,
            lr,
            args.batch_size,
            args.epochs,
            data_dir=folder,
            image_size=args.image_size,
            devices=devices_for(backend, args.device),
            seed=args.seed,
            pipeline=pipeline,
            run=d2lft.RunSpec(verbose=args.verbose),
        )
    images = args.epochs * (n_train + n_test)
    return {
        "variant": name,
        "options": kw,
        "learning_rate": lr,
        "wall_seconds": round(h.wall_seconds, 3),
        "images_per_sec": round(images / h.wall_seconds, 2),
        "train_examples_per_sec_book_figure": round(h.examples_per_sec, 2),
        "test_acc": h.test_acc,
        "train_loss": [round(v, 5) for v in h.train_loss],
        "train_acc": h.train_acc,
        "peak_host_mb": None if h.peak_host_mb != h.peak_host_mb else round(h.peak_host_mb),
        "peak_device_mb": None
        if h.peak_device_mb != h.peak_device_mb
        else round(h.peak_device_mb),
        "trained_params": h.trained_params,
        "config": h.config,
    }


def _child(backend, name, folder, args, n_train, n_test, conn):
    os.environ.update(VARIANT_ENV.get(name, {}))
    try:
        conn.send(("ok", run_variant(backend, name, folder, args, n_train, n_test)))
    except BaseException as err:  # reported by the parent
        import traceback

        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def run_isolated(backend, name, folder, args, n_train, n_test):
    """`run_variant` in a fresh process: its own peak memory, threads and caches."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(backend, name, folder, args, n_train, n_test, child))
    p.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        p.join()
        raise SystemExit(
            f"[{backend}] {name}: the run's process died (exit code {p.exitcode})"
        ) from None
    p.join()
    if status != "ok":
        raise SystemExit(f"[{backend}] {name} failed:\n{value}")
    return value


def markdown(result):
    lines = [
        f"# bench_train: {', '.join(result['backends'])} on {result['device']}",
        "",
        f"- date (UTC): {result['date']}",
        f"- command: `{result['command']}`",
        f"- data: {result['data']} ({result['n_train']} train / {result['n_test']} test), "
        f"image size {result['args']['image_size']}, {result['args']['epochs']} epoch(s), "
        f"batch {result['args']['batch_size']}, weights: "
        f"{result['args']['weights'] or 'random init'}",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "images/s = epochs x (train + test images) / wall-clock seconds of the whole "
        "`train_fine_tuning` call (data setup, decoding, training, evaluation); "
        "for `ceiling` rows, of the training steps and evaluations alone on one "
        "pre-made batch (no data pipeline: the most any pipeline can reach).",
        "",
    ]
    for backend, runs in result["runs"].items():
        lines += [
            f"## {backend}",
            "",
            "| variant | wall s | images/s | x book | x book-shipped | final test acc "
            "| final train loss | peak host MB | peak device MB | trained params |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            acc = r["test_acc"][-1] if r["test_acc"] else float("nan")
            loss = r["train_loss"][-1] if r["train_loss"] else float("nan")
            params = f"{r['trained_params']:,}" if r["trained_params"] is not None else "-"
            lines.append(
                f"| {r['variant']} | {r['wall_seconds']:.1f} | "
                f"{r['images_per_sec']:.1f} | {r.get('speedup_vs_book', 'n/a')} | "
                f"{r.get('speedup_vs_book_shipped', 'n/a')} | {acc:.3f} | "
                f"{loss:.3f} | {r['peak_host_mb']} | "
                f"{r['peak_device_mb'] if r['peak_device_mb'] is not None else '-'} | "
                f"{params} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["torch", "mxnet", "both"], default="torch")
    p.add_argument(
        "--variants",
        default="book,fast,fast-freeze",
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    p.add_argument("--data-dir", help="a hotdog-layout folder or .zip (default: synthetic)")
    p.add_argument("--train", type=int, default=2000, help="synthetic training images")
    p.add_argument("--test", type=int, default=800, help="synthetic test images")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="the fast variants' precision ('fp32' for parity runs)",
    )
    p.add_argument("--feature-passes", type=int, default=1)
    p.add_argument("--lr", type=float, help="default: the book's fine-tuning rate per backend")
    p.add_argument(
        "--weights",
        help="a local weights file for build_finetune_net (default: random init; no download)",
    )
    p.add_argument("--arch", default=None)
    p.add_argument(
        "--book-workers",
        type=int,
        default=None,
        help="loader workers of the book pipeline (default: d2lft's default; "
        "the book itself uses 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="where synthetic/extracted data go (default: temp dir)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--tag", default="", help="appended to the result file names")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("D2LFT_PROGRESS", "0")

    backends = ["torch", "mxnet"] if args.backend == "both" else [args.backend]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    if args.device == "auto":
        try:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            args.device = "cpu"
    folder, data_name = resolve_data(args)
    from d2lft.data.folders import list_images

    n_train = len(list_images(folder / "train")[1])
    n_test = len(list_images(folder / "test")[1])

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "backends": backends,
        "device": args.device,
        "data": data_name,
        "n_train": n_train,
        "n_test": n_test,
        "args": vars(args),
        "machine": machine_info(args.device),
        "versions": versions(backends),
        "runs": {},
    }
    for backend in backends:
        runs = []
        for name in variants:
            print(f"[{backend}] {name} ...", flush=True)
            r = run_isolated(backend, name, folder, args, n_train, n_test)
            runs.append(r)
            print(
                f"[{backend}] {name}: {r['images_per_sec']:.1f} images/s, wall "
                f"{r['wall_seconds']:.1f}s, test acc "
                f"{r['test_acc'][-1] if r['test_acc'] else float('nan'):.3f}, peak host "
                f"{r['peak_host_mb']} MB, device {r['peak_device_mb']} MB",
                flush=True,
            )
        book = next((r for r in runs if r["variant"] == "book"), None)
        shipped = next((r for r in runs if r["variant"] == "book-shipped"), None)
        for r in runs:
            for key, base in (("speedup_vs_book", book), ("speedup_vs_book_shipped", shipped)):
                if base is not None:
                    r[key] = round(r["images_per_sec"] / base["images_per_sec"], 2)
        book_frozen = next((r for r in runs if r["variant"] == "book-freeze"), None)
        fast_frozen = next((r for r in runs if r["variant"] == "fast-freeze"), None)
        if book_frozen and fast_frozen:
            fast_frozen["speedup_vs_book_freeze"] = round(
                fast_frozen["images_per_sec"] / book_frozen["images_per_sec"], 2
            )
        result["runs"][backend] = runs

    text = markdown(result)
    print("\n" + text)
    dev = "gpu" if args.device.startswith("cuda") else "cpu"
    write_result(args.out, f"{'-'.join(backends)}-{dev}", args.tag, result, text)
    return result


def write_result(out, name, tag, result, text):
    """``<out>/<UTC stamp>-<name>[-<tag>].json`` and ``.md``, each written atomically
    (the benchmark scripts' record format)."""
    from d2lft._sys.atomic import atomic_write_text

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    base = pathlib.Path(out) / f"{stamp}-{name}{('-' + tag) if tag else ''}"
    atomic_write_text(
        base.with_name(base.name + ".json"), json.dumps(result, indent=2, default=str)
    )
    atomic_write_text(base.with_name(base.name + ".md"), text)
    print(f"wrote {base}.json and .md")


if __name__ == "__main__":
    main()
