"""The chapter's experiment (fine-tune, then scratch, then the comparison) for one
backend; shared by finetune_mxnet.py and finetune_torch.py."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import d2lft
from d2lft.cli import cli_words


def parse_args(backend, argv=None):
    lrs = d2lft.BOOK_LEARNING_RATES[backend]
    p = argparse.ArgumentParser(description=f"The d2l Fine-Tuning chapter, {backend} tab.")
    p.add_argument(
        "--data-dir",
        help="folder (or .zip) with train/<class>/ and test/<class>/; "
        "default: download d2l's hotdog.zip once into the cache",
    )
    p.add_argument("--data-url", help="mirror URL of hotdog.zip (default d2l's data hub)")
    p.add_argument("--data-sha1", help="SHA-1 of the file at --data-url")
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help="'imagenet' (the framework's model-zoo weights), a weights file, or 'none'",
    )
    p.add_argument("--arch", default=None, help="default: the chapter's choice for the backend")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=lrs["finetune"], help="fine-tune learning rate")
    p.add_argument("--scratch-lr", type=float, default=lrs["scratch"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--skip-scratch", action="store_true", help="only the fine-tuning run")
    p.add_argument("--out", help="folder for metrics JSON and learning curves")
    return p.parse_args(argv)


def main(backend, argv=None):
    """Run the chapter; an error d2lft can explain (offline, a bad folder, a bad
    weights file, ...) is printed as one message with exit status 2, like the `d2lft`
    command (``D2LFT_DEBUG=1`` shows the traceback)."""
    args = parse_args(backend, argv)
    try:
        return run(backend, args)
    except (ValueError, OSError, ImportError, d2lft.TrainingDiverged) as err:
        if os.environ.get("D2LFT_DEBUG"):
            raise
        text = cli_words(str(err)).replace(
            "--data-dir URL --sha1 SHA1", "--data-url URL --data-sha1 SHA1"
        )
        print(f"{pathlib.Path(sys.argv[0]).name}: error: {text}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{pathlib.Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def run(backend, args):
    d2lft.use(backend)
    if args.data_dir:
        data_dir = args.data_dir
    else:
        data_dir = d2lft.download_hotdog(url=args.data_url, sha1=args.data_sha1)
    pretrained = {"imagenet": True, "none": False}.get(args.pretrained, args.pretrained)
    common = dict(
        batch_size=args.batch_size,
        num_epochs=args.epochs,
        data_dir=data_dir,
        image_size=args.image_size,
        seed=args.seed,
    )

    out = pathlib.Path(args.out) if args.out else None
    runs = {}

    def finished(name, h):
        """Keep a run's History as soon as it ends (an interrupted one too)."""
        runs[name] = h
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            h.to_json(out / f"{backend}-{name}.json")

    print(f"== {backend}: fine-tuning (lr {args.lr}) ==")
    finetune_net = d2lft.build_finetune_net(pretrained=pretrained, arch=args.arch, seed=args.seed)
    finished("finetune", d2lft.train_fine_tuning(finetune_net, args.lr, **common))
    if not args.skip_scratch and runs["finetune"].completed:
        print(f"== {backend}: training from scratch (lr {args.scratch_lr}) ==")
        scratch_net = d2lft.build_scratch_net(arch=args.arch, seed=args.seed)
        finished(
            "scratch",
            d2lft.train_fine_tuning(scratch_net, args.scratch_lr, param_group=False, **common),
        )
    print_comparison(backend, runs, ["finetune"] if args.skip_scratch else ["finetune", "scratch"])
    done = {name: h for name, h in runs.items() if h.epochs}
    if out is not None and done:
        d2lft.plot_history(
            list(done.values()),
            out / f"{backend}-curves.png",
            labels=[f"{backend} {n}" for n in done],
        )
    if out is not None and runs:
        print(f"wrote {out}")
    if not all(h.completed for h in runs.values()):
        raise KeyboardInterrupt  # stopped (Ctrl-C, SIGTERM): what was done is written
    return runs


def print_comparison(backend, runs, names):
    """The table of the runs' last epochs; a run stopped before its first epoch ended,
    or never started, gets a row that says so."""
    print(f"== {backend}: comparison ==")
    print(f"{'run':<9} {'loss':>6} {'train acc':>9} {'test acc':>8} {'examples/sec':>12}")
    for name in names:
        h = runs.get(name)
        if h is not None and h.epochs:
            stopped = "" if h.completed else f"  (stopped after {h.epochs} epoch(s))"
            print(
                f"{name:<9} {h.train_loss[-1]:>6.3f} {h.train_acc[-1]:>9.3f} "
                f"{h.test_acc[-1]:>8.3f} {h.examples_per_sec:>12.1f}{stopped}"
            )
        elif h is not None:
            print(f"{name:<9} stopped before its first epoch ended")
        else:
            print(f"{name:<9} not run")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run finetune_mxnet.py or finetune_torch.py")
