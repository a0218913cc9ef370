"""Make the pictures in docs/figures/ with d2lft itself (offline, CPU is enough).

    .venv/bin/python scripts/make_doc_figures.py                 # real photos if present
    .venv/bin/python scripts/make_doc_figures.py --train-per-class 300 --epochs 3

Data: --data (default ../shared/data/hotdog-real.zip, real photos in the hotdog layout;
when it is absent, generated two-colour images stand in and the figures say so). The
source model: --source (default ../shared/data/food100-resnet18.pth, a torchvision
ResNet-18 trained on 100 food classes; ImageNet weights cannot be downloaded offline).
A subset of the photos (--train-per-class, --test-per-class, evenly spaced through the
sorted files) keeps the run to a few minutes on a CPU.

Writes into --out (default docs/figures):
  hotdog_examples.png      the chapter's first figure: 8 hotdogs, 8 other images
  finetune_vs_scratch.png  learning curves of the two runs (exercise 2's comparison)
  predictions.png          test images, worst mistakes first (predicted, probability, true)
  confusion.png            the fine-tuned net's confusion matrix on the test subset
  lr_sweep.png             exercise 1: test accuracy against the fine-tuning learning rate
  figures.json             the numbers behind them, the command, machine and versions
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "hotdog-real.zip"))
    p.add_argument("--source", default=str(SHARED / "food100-resnet18.pth"))
    p.add_argument("--backend", default="torch", choices=("torch", "mxnet"))
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--sweep",
        type=float,
        nargs="+",
        default=None,
        help="fine-tuning learning rates for lr_sweep.png (default: the book's "
        "rate x 0.1, 1, 10, 100)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "docs" / "figures"))
    return p.parse_args(argv)


def subset(root, dest, per_class):
    """Hard links (else copies) of every k-th image of each class of each split."""
    from d2lft.data.folders import list_images

    for split, n in per_class.items():
        classes, samples = list_images(root / split)
        for idx, c in enumerate(classes):
            files = [p for p, i in samples if i == idx]
            step = max(1, len(files) // n)
            (dest / split / c).mkdir(parents=True, exist_ok=True)
            for f in files[::step][:n]:
                target = dest / split / c / pathlib.Path(f).name
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)
    return dest


def rel(path):
    """A path relative to the repository when it is near it (for figures.json)."""
    try:
        return os.path.relpath(path, REPO)
    except ValueError:  # another drive (Windows)
        return str(path)


def synthetic(dest, per_class):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, color in (("hotdog", (200, 60, 40)), ("not-hotdog", (60, 90, 200))):
            (dest / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(color) + rng.normal(0, 40, (64, 64, 3)), 0, 255)
                Image.fromarray(arr.astype("uint8")).save(dest / split / c / f"{i}.jpg")
    return dest


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("D2LFT_PROGRESS", "0")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import d2lft
    from d2lft.data.hub import resolve_data_dir

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d2lft.use(args.backend)
    work = pathlib.Path(tempfile.mkdtemp(prefix="d2lft-figures-"))
    real = pathlib.Path(args.data).is_file() or pathlib.Path(args.data).is_dir()
    per_class = {"train": args.train_per_class, "test": args.test_per_class}
    if real:
        data = subset(resolve_data_dir(args.data), work / "hotdog", per_class)
    else:
        print(f"{args.data} not found: using generated two-colour images", file=sys.stderr)
        data = synthetic(work / "hotdog", per_class)
    source = pathlib.Path(args.source)
    pretrained = source if source.is_file() else False
    arch = "resnet18_v1" if pretrained else None
    lrs = d2lft.BOOK_LEARNING_RATES[args.backend]
    info = {
        "command": " ".join([pathlib.Path(sys.executable).name] + sys.argv),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "backend": args.backend,
        "data": rel(args.data) if real else "generated",
        "source": rel(source) if pretrained else "none (random features)",
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_per_class": args.train_per_class,
        "test_per_class": args.test_per_class,
        "seed": args.seed,
    }

    # 1. the chapter's first figure: the first 8 hotdogs and the last 8 other images
    from d2lft.data.folders import list_images
    from d2lft.data.images import load_rgb

    classes, samples = list_images(data / "train")
    hot = [p for p, i in samples if i == 0][:8]
    other = [p for p, i in samples if i == 1][-8:]
    axes = d2lft.show_images([load_rgb(p) for p in hot + other], 2, 8, scale=1.4)
    axes[0].figure.savefig(out / "hotdog_examples.png", dpi=90)
    plt.close(axes[0].figure)

    # 2. fine-tune vs scratch (the chapter's experiment, exercise 2's comparison)
    def train(mode, lr):
        if mode == "finetune":
            net = d2lft.build_finetune_net(pretrained=pretrained, arch=arch, seed=args.seed)
        else:
            net = d2lft.build_scratch_net(arch=arch, seed=args.seed)
        t0 = time.perf_counter()
        h = d2lft.train_fine_tuning(
            net,
            lr,
            args.batch_size,
            args.epochs,
            param_group=(mode == "finetune"),
            data_dir=data,
            image_size=args.image_size,
            seed=args.seed,
        )
        print(f"{mode}: {time.perf_counter() - t0:.0f} s", flush=True)
        return net, h

    ft, h_ft = train("finetune", lrs["finetune"])
    _, h_sc = train("scratch", lrs["scratch"])
    fig = d2lft.plot_history(
        [h_ft, h_sc],
        out / "finetune_vs_scratch.png",
        labels=[f"finetune lr={lrs['finetune']:g}", f"scratch lr={lrs['scratch']:g}"],
    )
    plt.close(fig)
    info["finetune"] = {
        "learning_rate": lrs["finetune"],
        "test_acc": h_ft.test_acc,
        "train_loss": h_ft.train_loss,
    }
    info["scratch"] = {
        "learning_rate": lrs["scratch"],
        "test_acc": h_sc.test_acc,
        "train_loss": h_sc.train_loss,
    }

    # 3. what the fine-tuned net gets wrong
    ev = d2lft.evaluate(ft, data)
    plt.close(ev.plot_predictions(out / "predictions.png", n=12, ncols=6))
    plt.close(ev.plot_confusion(out / "confusion.png"))
    info["evaluation"] = {"accuracy": ev.accuracy, "confusion": ev.confusion.tolist()}

    # 4. exercise 1: accuracy against the fine-tuning learning rate
    sweep_lrs = args.sweep or [lrs["finetune"] * f for f in (0.1, 1, 10, 100)]
    res = d2lft.lr_sweep(
        sweep_lrs,
        modes=("finetune",),
        data_dir=data,
        num_epochs=1,
        batch_size=args.batch_size,
        image_size=args.image_size,
        pretrained=pretrained,
        arch=arch,
        seed=args.seed,
    )
    print(res)
    plt.close(res.plot(out / "lr_sweep.png"))
    info["lr_sweep"] = json.loads(res.to_json())
    (out / "figures.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
