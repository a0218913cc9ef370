"""The `d2lft` command (also `python -m d2lft`).

    d2lft train finetune --backend mxnet --epochs 5 --out runs/ft
    d2lft train scratch --data-dir chairs.zip --val-fraction 0.2 --out runs/chairs
    d2lft evaluate --checkpoint runs/ft --out runs/ft/eval
    d2lft predict --checkpoint runs/ft photo1.jpg photo2.jpg
    d2lft compare --epochs 5 --out runs/compare
    d2lft sweep --lrs 0.001 0.01 0.1 --epochs 2 --out runs/sweep
    d2lft show --data-dir hotdog --out hotdog.png
    d2lft info runs/ft

Every training command writes into --out: metrics.json (the History), a learning-curve
PNG and checkpoint.safetensors. Errors that d2lft can explain are printed as one
message (exit status 2); Ctrl-C during training keeps what was done (exit status 130).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
MODES = ("finetune", "scratch")


# --------------------------------------------------------------------------- helpers

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text):
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _use_backend(name):
    import d2lft
    if name:
        d2lft.use(name)
    return d2lft.get_backend()


def _is_url(text) -> bool:
    return str(text).split("://", 1)[0].lower() in ("http", "https", "ftp") and "://" in str(text)


def _data_source(args):
    """The local folder or .zip that --data-dir names (a URL is downloaded into the
    cache first); None means the chapter's hotdog data."""
    from . import data
    if args.data_dir is None:
        return data.download_hotdog()
    if _is_url(args.data_dir):
        if not getattr(args, "sha1", None):
            raise ValueError(f"--data-dir {args.data_dir} is a URL: also pass --sha1 with the "
                             f"archive's SHA-1 so that the download can be checked")
        return data.fetch(args.data_dir, args.sha1)
    return pathlib.Path(args.data_dir).expanduser()


def _resolve_data(args):
    from .split import resolve_images
    return resolve_images(_data_source(args), getattr(args, "val_fraction", None))


def _pretrained(text):
    if text is None or text.lower() == "imagenet":
        return True
    if text.lower() == "none":
        return False
    path = pathlib.Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {text}: no such file (use a weights file, "
                                f"'imagenet' or 'none')")
    return path


def _mapping(items):
    mapping = {}
    for item in items or ():
        target, sep, source = item.partition("=")
        if not sep or not target or not source:
            raise ValueError(f"--init-head {item!r}: expected TARGET=SOURCE, e.g. hotdog=hotdog")
        mapping[int(target) if target.isdigit() else target] = \
            int(source) if source.isdigit() else source
    return mapping


def _print_outputs(out):
    out = pathlib.Path(out)
    print(f"outputs in {out}:")
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            print(f"  {str(p.relative_to(out)):<34} {p.stat().st_size:>12,d} bytes")


def _net_for(mode, num_classes, args):
    import d2lft
    if mode == "finetune":
        net = d2lft.build_finetune_net(num_classes=num_classes,
                                       pretrained=_pretrained(args.pretrained), arch=args.arch,
                                       seed=args.seed)
    else:
        if args.pretrained not in (None, "none"):
            raise ValueError("--pretrained is for 'finetune'; 'scratch' starts from random "
                             "weights")
        net = d2lft.build_scratch_net(num_classes=num_classes, arch=args.arch, seed=args.seed)
    return net


def _train_one(mode, args, folder, out, lr=None):
    """Build, train and save one run into `out`; return its History."""
    import d2lft
    from .data import check_image_folder
    from .plot import _pyplot
    backend = d2lft.get_backend()
    lr = lr or args.lr or d2lft.BOOK_LEARNING_RATES[backend][mode]
    classes = check_image_folder(folder / "train")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = _net_for(mode, len(classes), args)
    if getattr(args, "init_head", None):
        if mode != "finetune":
            raise ValueError("--init-head needs the 'finetune' mode (a source classifier)")
        done = d2lft.init_head_from_source(net, _mapping(args.init_head), classes=classes,
                                           source_classes=args.source_classes)
        for tgt, (idx, name) in done.items():
            print(f"head row {tgt!r} initialised from source class {idx} {name!r}")
    print(f"{mode} on {backend}: {len(classes)} classes {classes}, lr {lr:g}, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, image size {args.image_size}, "
          f"data {folder}", flush=True)
    resume = None
    if getattr(args, "resume", False):
        from .checkpoint import checkpoint_file
        resume = checkpoint_file(out)
        if not resume.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {out} to continue from")
    h = d2lft.train_fine_tuning(net, lr, args.batch_size, args.epochs,
                                param_group=(mode == "finetune"), data_dir=folder,
                                image_size=args.image_size, seed=args.seed,
                                num_workers=args.workers, checkpoint_dir=out, resume=resume)
    h.config.update(mode=mode, data_dir=str(folder), classes=classes)
    h.to_json(out / "metrics.json")
    if h.epochs:
        _pyplot().close(d2lft.plot_history(h, out / "learning_curve.png",
                                           labels=[f"{mode} {backend} lr={lr:g}"]))
    return h


# --------------------------------------------------------------------------- commands

def cmd_train(args):
    _use_backend(args.backend)
    folder = _resolve_data(args)
    h = _train_one(args.mode, args, folder, args.out)
    _print_outputs(args.out)
    return 0 if h.completed else EXIT_INTERRUPTED


def cmd_compare(args):
    import d2lft
    from .sweep import SweepResult
    from .plot import _pyplot
    backend = _use_backend(args.backend)
    folder = _resolve_data(args)
    out = pathlib.Path(args.out)
    rows, hs = SweepResult(), []
    lrs = {"finetune": args.lr_finetune, "scratch": args.lr_scratch}
    for mode in MODES:
        args.lr = None
        h = _train_one(mode, args, folder, out / mode, lr=lrs[mode])
        hs.append(h)
        rows.append(dict(backend=backend, mode=mode, learning_rate=h.config["learning_rate"],
                         epochs=h.epochs, train_loss=h.train_loss[-1] if h.epochs else None,
                         train_acc=h.train_acc[-1] if h.epochs else None,
                         test_acc=h.test_acc[-1] if h.epochs else None, diverged=False,
                         seconds=round(h.wall_seconds, 2)))
        if not h.completed:
            break
    print(rows)
    rows.to_json(out / "compare.json")
    _pyplot().close(d2lft.plot_history(hs, out / "compare.png",
                                       labels=[f"{r['mode']} lr={r['learning_rate']:g}"
                                               for r in rows]))
    _print_outputs(out)
    return 0 if all(h.completed for h in hs) else EXIT_INTERRUPTED


def cmd_sweep(args):
    from .sweep import lr_sweep
    from .plot import _pyplot
    _use_backend(args.backend)
    folder = _resolve_data(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = lr_sweep(args.lrs, modes=args.modes, data_dir=folder, num_epochs=args.epochs,
                      batch_size=args.batch_size, image_size=args.image_size,
                      pretrained=_pretrained(args.pretrained), arch=args.arch,
                      seed=0 if args.seed is None else args.seed, num_workers=args.workers)
    print(result)
    result.to_json(out / "sweep.json")
    _pyplot().close(result.plot(out / "sweep.png"))
    _print_outputs(out)
    return 0


def _load(args):
    import d2lft
    from .checkpoint import read_checkpoint
    if not args.backend and not os.environ.get("D2LFT_BACKEND"):
        args.backend = read_checkpoint(args.checkpoint, verify=False).backend
        from ._backend import framework_installed
        if not framework_installed(args.backend):
            args.backend = None            # the other backend reads it too
    _use_backend(args.backend)
    return d2lft.load_checkpoint(args.checkpoint)


def _recorded_val_fraction(net, args):
    """(val_fraction, where it was found) of the run that `--checkpoint` comes from:
    the checkpoint's config, else (a run of `d2lft train`, whose checkpoint is written
    before the History's config is complete) its --out folder's metrics.json: its
    config's val_fraction, or that of the split folder (split.json) it trained on.
    (None, '') when the run did not split its data."""
    from .checkpoint import read_checkpoint
    ck = getattr(net, "checkpoint", None) or read_checkpoint(args.checkpoint, verify=False)
    if ck.config.get("val_fraction") is not None:
        return ck.config["val_fraction"], f"recorded in the checkpoint {ck.path}"
    metrics = pathlib.Path(ck.path).parent / "metrics.json"
    try:
        config = json.loads(metrics.read_text()).get("config") or {}
        if config.get("val_fraction") is not None:
            return config["val_fraction"], f"recorded in {metrics}"
        stamp = pathlib.Path(config["data_dir"]) / "split.json"
        value = json.loads(stamp.read_text())["val_fraction"]
        return value, f"of the split {stamp.parent} that training used ({metrics})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, ""


def _has_splits(source) -> bool:
    """Whether `source` (a folder or a .zip) already holds train/ and test/ folders."""
    import zipfile
    from .data import DataLayoutError, find_split_root
    from .split import _class_root, _unzip
    path = pathlib.Path(source)
    if path.is_file() and zipfile.is_zipfile(path):
        path = _unzip(path)
    if not path.is_dir():
        return False
    try:
        find_split_root(_class_root(path))
    except DataLayoutError:
        return False
    return True


def cmd_evaluate(args):
    import d2lft
    from .plot import _pyplot
    net = _load(args)
    data_dir = _data_source(args)
    split = None if args.split == "all" else args.split
    val_fraction, origin = args.val_fraction, "--val-fraction"
    if val_fraction is None and split is not None:
        # the same held-out images as training, when it split ONE folder of classes
        recorded, where = _recorded_val_fraction(net, args)
        if recorded is not None and not _has_splits(data_dir):
            val_fraction, origin = recorded, where
    ev = d2lft.evaluate(net, data_dir, split=split, val_fraction=val_fraction,
                        batch_size=args.batch_size)
    if split is None:
        print(f"scored every image of {data_dir} (--split all: training images included)")
    elif val_fraction is not None:
        held = " (the images training held out)" if split == "test" else ""
        print(f"scored the {split!r} split{held} of {data_dir} made with val_fraction "
              f"{val_fraction:g} ({origin})")
    else:
        print(f"scored the {split}/ folder of {data_dir}")
    print(ev)
    mistakes = ev.mistakes()
    if mistakes:
        print(f"worst mistakes ({len(mistakes)} in all):")
        for path, true, pred, p in mistakes[:args.show_mistakes]:
            print(f"  {path}: {pred} ({p:.3f}), true {true}")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from ._io import atomic_write_text
        atomic_write_text(out / "evaluation.json", json.dumps(ev.to_dict(), indent=2))
        _pyplot().close(ev.plot_confusion(out / "confusion.png"))
        _pyplot().close(ev.plot_predictions(out / "predictions.png", n=args.grid))
        _print_outputs(out)
    return 0


def cmd_predict(args):
    import d2lft
    from .predict import image_files
    from .plot import _pyplot, plot_predictions
    net = _load(args)
    files = image_files(args.images)
    if not files:
        raise ValueError(f"no image files in {args.images}")
    preds = d2lft.predict(net, files, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            others = ", ".join(f"{c} {q:.3f}" for c, q in p.top(args.top)[1:])
            print(f"{p}" + (f"  [{others}]" if others else ""))
    if args.out:
        _pyplot().close(plot_predictions(files[:args.grid], [p.label for p in preds],
                                         [p.probability for p in preds], path=args.out))
        print(f"wrote {args.out}")
    return 0


def cmd_show(args):
    """An image grid from the data (no framework needed): the first images of each
    class, one row per class (the book shows 8 hotdogs and 8 others)."""
    from .data import list_images
    from .plot import _pyplot, show_images
    from .split import _class_root
    src = _data_source(args)
    if src.is_file():
        from .data import resolve_data_dir
        src = resolve_data_dir(src)
    split = src / args.split if (src / args.split).is_dir() else _class_root(src)
    classes, samples = list_images(split)
    imgs, titles = [], []
    for idx, c in enumerate(classes):
        paths = [p for p, i in samples if i == idx][:args.n]
        imgs += [str(p) for p in paths] + [None] * (args.n - len(paths))
        titles += [c] * len(paths) + [""] * (args.n - len(paths))
    from PIL import Image
    loaded = []
    for p in imgs:
        if p is None:
            loaded.append(Image.new("RGB", (8, 8), "white"))
        else:
            with Image.open(p) as im:
                loaded.append(im.convert("RGB"))
    axes = show_images(loaded, len(classes), args.n, titles=titles, scale=args.scale)
    fig = axes[0].figure
    from ._io import atomic_path
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    print(f"wrote {args.out} ({len(classes)} classes x {args.n} images from {split})")
    return 0


def cmd_info(args):
    from .checkpoint import read_checkpoint
    ck = read_checkpoint(args.checkpoint)
    print(ck)
    if args.json:
        print(json.dumps(ck.info, indent=2))
    else:
        cfg = ck.config
        print(f"  trained with lr {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, "
              f"seed {cfg.get('seed')}, weight decay {cfg.get('weight_decay')}")
        print(f"  preprocessing: {ck.info['preprocessing']}")
        print("  hash verified")
    return 0


# --------------------------------------------------------------------------- parser

def _add_backend(p):
    p.add_argument("--backend", choices=("torch", "mxnet"), default=None,
                   help="framework (default: $D2LFT_BACKEND, else torch when installed)")


def _add_data(p, val=True):
    p.add_argument("--data-dir", default=None, metavar="PATH|ZIP|URL",
                   help="train/<class>/ + test/<class>/ folder, a .zip of one, or a URL "
                        "(with --sha1); default: the chapter's hotdog data")
    p.add_argument("--sha1", default=None, help="SHA-1 of the archive at a --data-dir URL")
    if val:
        p.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                       help="--data-dir is ONE folder of class subfolders: hold out this "
                            "fraction of each class as the test split (deterministic)")


def _add_training(p, lr=True):
    p.add_argument("--epochs", type=_positive_int, default=5)
    if lr:
        p.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the book's for the backend and mode: "
                            "mxnet 0.01/0.1, torch 5e-5/5e-4)")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--pretrained", default=None, metavar="PATH|imagenet|none",
                   help="source weights for finetune (default imagenet)")
    p.add_argument("--arch", default=None,
                   help="resnet18_v1 (torchvision resnet18) or resnet18_v2 (Gluon's); "
                        "default the chapter's: torch resnet18, mxnet resnet18_v2")
    p.add_argument("--seed", type=int, default=None, help="repeatable initialisation, "
                   "shuffling and augmentation")
    p.add_argument("--workers", type=int, default=None, help="data loader processes")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="d2lft", description="Fine-tuning (Dive into Deep Learning, section 14.2) with "
        "MXNet or PyTorch: train, evaluate, predict, compare, sweep, show.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"d2lft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="fine-tune (or train from scratch) and save the run")
    p.add_argument("mode", nargs="?", choices=MODES, default="finetune")
    _add_backend(p)
    _add_data(p)
    _add_training(p)
    p.add_argument("--out", default="d2lft-run", help="output folder (default d2lft-run)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out")
    p.add_argument("--init-head", action="append", metavar="TARGET=SOURCE",
                   help="exercise 4: start the head row of class TARGET from the source "
                        "classifier's row of class SOURCE (e.g. hotdog=hotdog); repeatable")
    p.add_argument("--source-classes", default=None, metavar="FILE",
                   help="the source model's class names, one a line (for --pretrained PATH)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="fine-tune vs scratch on the same data: a table")
    _add_backend(p)
    _add_data(p)
    _add_training(p, lr=False)
    p.add_argument("--lr-finetune", type=_positive_float, default=None)
    p.add_argument("--lr-scratch", type=_positive_float, default=None)
    p.add_argument("--out", default="d2lft-compare")
    p.set_defaults(func=cmd_compare, resume=False, init_head=None)

    p = sub.add_parser("sweep", help="exercises 1-2: test accuracy against learning rate")
    _add_backend(p)
    _add_data(p)
    _add_training(p, lr=False)
    p.add_argument("--lrs", type=_positive_float, nargs="+", required=True)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--out", default="d2lft-sweep")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="accuracy, confusion matrix and worst mistakes")
    _add_backend(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or --out folder")
    _add_data(p)
    p.add_argument("--split", default="test", metavar="NAME|all",
                   help="the subfolder to score (default test: the held-out images); 'all': "
                        "every image of ONE folder of class subfolders, training images "
                        "included. For a folder that training split with --val-fraction, "
                        "the split is made again from the fraction given here or, without "
                        "--val-fraction, the one recorded with --checkpoint")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--out", default=None, help="folder for evaluation.json, confusion.png "
                   "and predictions.png")
    p.add_argument("--grid", type=_positive_int, default=16, help="images in predictions.png")
    p.add_argument("--show-mistakes", type=int, default=5)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class and probability for each image")
    _add_backend(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or --out folder")
    p.add_argument("--top", type=_positive_int, default=1, help="also show the next classes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--out", default=None, metavar="PNG", help="also draw a prediction grid")
    p.add_argument("--grid", type=_positive_int, default=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("show", help="an image grid of the data (as the chapter's first "
                       "figure)")
    _add_data(p, val=False)
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=_positive_int, default=8, help="images per class")
    p.add_argument("--scale", type=float, default=1.4)
    p.add_argument("--out", default="d2lft-show.png", metavar="PNG")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("info", help="what a checkpoint holds (its hash is verified)")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import BadImageError, DataLayoutError, DownloadError
    from .training import TrainingDiverged
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, DataLayoutError,
            DownloadError, CheckpointError, BadImageError, TrainingDiverged) as err:
        if os.environ.get("D2LFT_DEBUG"):
            raise
        print(f"d2lft {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"d2lft {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
