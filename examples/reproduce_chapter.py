"""Reproduce the chapter's table: fine-tune vs scratch, both backends, several seeds.

The book's experiment (needs internet: d2l's hotdog.zip and the ImageNet weights):

    python examples/reproduce_chapter.py

Offline, with the real stand-ins beside the repository (what benchmarks/results/chapter-*
were made with):

    python examples/reproduce_chapter.py --data-dir ../shared/data/hotdog-real.zip \
        --pretrained ../shared/data/food100-resnet18.pth --arch resnet18_v1 \
        --image-size 112 --epochs 5 --seeds 0 1 --out benchmarks/results/chapter-food100-112px

Writes `results.md` (the book's format, with the book's published numbers beside),
`results.json` and `curves.png` into --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import d2lft

BOOK = {  # d2l 1.0.3 builds (2 GPUs): loss, train acc, test acc, examples/sec
    ("torch", "finetune"): (0.242, 0.909, 0.940, 1062.4),
    ("torch", "scratch"): (0.352, 0.846, 0.850, 1525.4),
    ("mxnet", "finetune"): (0.255, 0.923, 0.944, 368.7),
    ("mxnet", "scratch"): (0.356, 0.842, 0.860, 574.1),
}
BOOK_SPREAD = "across a dozen book builds: fine-tune test acc 0.894-0.948, scratch 0.762-0.866"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "mxnet"], choices=d2lft.BACKENDS)
    p.add_argument(
        "--runs", nargs="+", default=["finetune", "scratch"], choices=["finetune", "scratch"]
    )
    p.add_argument("--data-dir", help="folder or .zip with train/ and test/ (default: hotdog.zip)")
    p.add_argument("--data-url", help="mirror of hotdog.zip")
    p.add_argument("--data-sha1", help="SHA-1 of the file at --data-url")
    p.add_argument(
        "--pretrained", default="imagenet", help="'imagenet' (model-zoo weights) or a weights file"
    )
    p.add_argument(
        "--arch",
        default=None,
        help="default: each tab's own (MXNet resnet18_v2, "
        "torch resnet18); use resnet18_v1 for a torchvision source model",
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    for b in d2lft.BACKENDS:
        for run in ("finetune", "scratch"):
            p.add_argument(
                f"--lr-{b}-{run}", type=float, default=d2lft.BOOK_LEARNING_RATES[b][run]
            )
    p.add_argument("--out", default="runs/reproduce")
    return p.parse_args(argv)


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions(backends) -> str:
    parts = [f"python {platform.python_version()}"]
    if "torch" in backends:
        import torch
        import torchvision

        parts += [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    if "mxnet" in backends:
        import mxnet

        parts.append(f"mxnet {mxnet.__version__}")
    return ", ".join(parts)


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        data_dir = d2lft.data.hub.resolve_data_dir(args.data_dir)
    else:
        data_dir = d2lft.download_hotdog(url=args.data_url, sha1=args.data_sha1)
    pretrained = True if args.pretrained == "imagenet" else args.pretrained
    rows = []
    histories = {}
    for backend in args.backends:
        d2lft.use(backend)
        for run in args.runs:
            lr = getattr(args, f"lr_{backend}_{run}")
            for seed in args.seeds:
                print(f"== {backend} {run} lr={lr} seed={seed} ==", flush=True)
                d2lft.seed(seed)
                if run == "finetune":
                    net = d2lft.build_finetune_net(pretrained=pretrained, arch=args.arch)
                else:
                    net = d2lft.build_scratch_net(arch=args.arch)
                h = d2lft.train_fine_tuning(
                    net,
                    lr,
                    args.batch_size,
                    args.epochs,
                    param_group=(run == "finetune"),
                    data_dir=data_dir,
                    image_size=args.image_size,
                    seed=seed,
                )
                histories[(backend, run, seed)] = h
                rows.append(
                    dict(
                        backend=backend,
                        run=run,
                        seed=seed,
                        lr=lr,
                        loss=h.train_loss[-1],
                        train_acc=h.train_acc[-1],
                        test_acc=h.test_acc[-1],
                        examples_per_sec=h.examples_per_sec,
                        wall_seconds=h.wall_seconds,
                        test_acc_curve=h.test_acc,
                        train_loss_curve=h.train_loss,
                    )
                )
                (out / "results.json").write_text(
                    json.dumps(
                        dict(
                            command=" ".join(sys.argv),
                            machine=machine(),
                            versions=versions(args.backends),
                            rows=rows,
                        ),
                        indent=2,
                    )
                )
    text = report(args, rows)
    (out / "results.md").write_text(text)
    plot(histories, out / "curves.png")
    print(text)
    return rows


def report(args, rows) -> str:
    lines = [
        f"# Fine-tuning vs scratch, {args.image_size} px, {args.epochs} epochs",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {machine()}  ",
        f"Versions: {versions(args.backends)}  ",
        f"Data: {args.data_dir or 'hotdog.zip'}; source weights: {args.pretrained}; "
        f"arch: {args.arch or 'each tab default'}; batch {args.batch_size}",
        "",
        "| backend | run | lr | seed | loss | train acc | test acc | examples/sec | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['run']} | {r['lr']:g} | {r['seed']} | "
            f"{r['loss']:.3f} | {r['train_acc']:.3f} | {r['test_acc']:.3f} | "
            f"{r['examples_per_sec']:.1f} | {r['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "## Summary (test accuracy over seeds) beside the book",
        "",
        "| backend | run | mean test acc | min-max over seeds | book test acc | "
        "book loss / train acc |",
        "|---|---|---|---|---|---|",
    ]
    for backend in args.backends:
        for run in args.runs:
            accs = [r["test_acc"] for r in rows if r["backend"] == backend and r["run"] == run]
            if not accs:
                continue
            b = BOOK[(backend, run)]
            lines.append(
                f"| {backend} | {run} | {statistics.mean(accs):.3f} | "
                f"{min(accs):.3f}-{max(accs):.3f} | {b[2]:.3f} | "
                f"{b[0]:.3f} / {b[1]:.3f} |"
            )
    lines += ["", f"Book: {BOOK_SPREAD}."]
    return "\n".join(lines) + "\n"


def plot(histories, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({k[0] for k in histories})
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.4), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        for (b, run, seed), h in sorted(histories.items()):
            if b != backend:
                continue
            x = range(1, h.epochs + 1)
            style = "-" if run == "finetune" else "--"
            ax.plot(x, h.test_acc, style, marker="o", label=f"{run} seed {seed} test")
            ax.plot(x, h.train_acc, style, alpha=0.4, label=f"{run} seed {seed} train")
        ax.set(title=f"{backend} tab", xlabel="epoch", ylabel="accuracy", ylim=(0.4, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
