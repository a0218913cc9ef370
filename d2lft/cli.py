"""The `d2lft` command (also `python -m d2lft`).

    d2lft train finetune --backend mxnet --epochs 5 --out runs/ft
    d2lft train finetune --pipeline fast --precision bf16 --out runs/fast
    d2lft train scratch --data-dir chairs.zip --val-fraction 0.2 --out runs/chairs
    d2lft evaluate --checkpoint runs/ft --out runs/ft/eval
    d2lft predict --checkpoint runs/ft photo1.jpg photo2.jpg
    d2lft compare --epochs 5 --out runs/compare
    d2lft sweep --lrs 0.001 0.01 0.1 --epochs 2 --out runs/sweep
    d2lft show --data-dir hotdog --out hotdog.png
    d2lft info runs/ft
    d2lft export --checkpoint runs/ft --out hotdog.onnx
    d2lft predict --checkpoint hotdog.onnx photo.jpg     (onnxruntime only)
    d2lft serve --checkpoint runs/ft                     (a web page on 127.0.0.1:7860)

Every training command writes into --out: metrics.json (the History), a learning-curve
PNG and checkpoint.safetensors. The training flags are built from the option
dataclasses (`d2lft.engine.options`: the pipelines and RunSpec), so they take the
same values, with the same checks, as the API; every argument is checked before any
training starts. Errors that d2lft can explain are printed as one message (exit
status 2); Ctrl-C (or SIGTERM) during training keeps what was done (exit status 130).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import typing
import warnings

import numpy as np

from . import api, cli_guard, launch, plot
from ._sys import outputs
from ._sys.atomic import atomic_write_text
from ._sys.errors import not_a_file, param_of
from ._version import __version__
from .backends import _registry
from .data import hub
from .data.folders import DataLayoutError, find_split_root, held_out, list_images
from .data.images import BadImageError, check_image_file, load_rgb
from .data.split import _class_root, _unzip, class_names, resolve_images
from .deploy import serve as web
from .deploy.onnx import export, is_onnx, load_onnx
from .engine.dist import check_shards, dmlc_role, torchrun_world
from .engine.loop import TrainingDiverged
from .engine.options import MAX_RATE, MAX_RATE_TEXT, PIPELINES, RunSpec, TrainPlan, cli_fields
from .exercises.head_init import init_head_from_source
from .exercises.sweep import MODES, SweepResult, lr_sweep
from .inference import evaluate, image_files, predict
from .io.checkpoint import CheckpointError, checkpoint_file, load_checkpoint, read_checkpoint
from .netinfo import net_info

EXIT_ERROR = 2
#: `predict`: some images could not be read (each reported), the others were predicted
EXIT_PARTIAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it


# --------------------------------------------------------------------------- flags from options


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_fields():
    """{field name: (field, its type, [the classes that have it])} of the pipelines'
    and RunSpec's CLI fields, in declaration order."""
    out: dict = {}
    for cls in (*PIPELINES.values(), RunSpec):
        hints = typing.get_type_hints(cls)
        for f in cli_fields(cls):
            if f.name not in out:
                out[f.name] = (f, hints[f.name], [])
            out[f.name][2].append(cls)
    return out


def _argparse_kwargs(f, hint) -> dict:
    default = f.default if f.default is not dataclasses.MISSING else None
    shown = (
        "none"
        if default is None
        else str(default).lower()
        if isinstance(default, bool)
        else default
    )
    kw = {"default": None, "help": f"{f.metadata['help']} (default: {shown})"}
    args = typing.get_args(hint)
    if hint is bool:
        kw["action"] = "store_true"
        kw["help"] = f"{f.metadata['help']} (default: off)"
    elif typing.get_origin(hint) is typing.Literal:
        kw["choices"] = args
    elif int in args or hint is int:
        kw["type"] = int
    elif float in args or hint is float:
        kw["type"] = float
    if "metavar" in f.metadata:
        kw["metavar"] = f.metadata["metavar"]
    return kw


def _add_option_flags(p, names=None):
    """Add the option dataclasses' flags (`names`: only these fields)."""
    p.add_argument(
        "--pipeline",
        choices=tuple(PIPELINES),
        default="auto",
        help="auto: fast where its decoded images fit memory or disk, else book; book: "
        "the chapter's loop; fast: decode once, crop in batches, bf16 where the hardware "
        "has it (docs/speed.md); fixed: deterministic batches both backends see "
        "identically (docs/parity.md) (default: auto)",
    )
    for name, (f, hint, _) in _option_fields().items():
        if names is None or name in names:
            p.add_argument(_flag(name), dest=name, **_argparse_kwargs(f, hint))


def _with_flags(err: ValueError) -> ValueError:
    """An option dataclass's error, with the field name shown as its flag."""
    text = str(err)
    for name in _option_fields():
        if text.startswith(name + " "):
            return ValueError(f"{_flag(name)}: {text}")
    return ValueError(text)


def _given(value) -> bool:
    """Whether a flag was given: None is its default, False an unset store_true flag
    (0 is a value)."""
    return value is not None and value is not False


def _either(names) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _pipeline(args):
    cls = PIPELINES[args.pipeline]
    own = {f.name for f in dataclasses.fields(cls)}
    given = {
        name: getattr(args, name)
        for name, (_, _, classes) in _option_fields().items()
        if RunSpec not in classes and _given(getattr(args, name, None))
    }
    wrong = [n for n in given if n not in own]
    if wrong:
        fits = {n: [c.name for c in _option_fields()[n][2]] for n in wrong}
        raise ValueError(
            "; ".join(
                f"{_flag(n)} is an option of --pipeline "
                f"{_either(fits[n])}, not of --pipeline {args.pipeline}"
                for n in wrong
            )
        )
    try:
        return cls(**given)
    except ValueError as err:
        raise _with_flags(err) from None


def _run_spec(args, **extra) -> RunSpec:
    kw = {
        name: getattr(args, name)
        for name, (_, _, classes) in _option_fields().items()
        if RunSpec in classes and getattr(args, name, None) is not None
    }
    try:
        return RunSpec(**kw, **extra)
    except ValueError as err:
        raise _with_flags(err) from None


# --------------------------------------------------------------------------- helpers


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 0 (at most {MAX_RATE_TEXT}), got {text!r}"
        )
    return value


def _use_backend(name):
    if name:
        _registry.use(name)
    return _registry.get_backend()


def _is_url(text) -> bool:
    return "://" in str(text) and str(text).split("://", 1)[0].lower() in ("http", "https", "ftp")


def _data_source(args):
    """The local folder or .zip that --data-dir names (a URL is downloaded into the
    cache first); None means the chapter's hotdog data."""
    if args.data_dir is None:
        return hub.download_hotdog()
    if _is_url(args.data_dir):
        if not getattr(args, "sha1", None):
            raise ValueError(
                f"--data-dir {args.data_dir} is a URL: also pass --sha1 with the "
                f"archive's SHA-1 so that the download can be checked"
            )
        return hub.fetch(args.data_dir, args.sha1)
    path = pathlib.Path(args.data_dir).expanduser()
    why = os.path.exists(path) and not path.is_dir() and not_a_file(path)
    if why:  # a FIFO or a device: never opened
        raise ValueError(f"--data-dir {path} is {why}; pass a folder or a .zip archive of one")
    return path


def _pretrained(text):
    if text is None or text.lower() == "imagenet":
        return True
    if text.lower() == "none":
        return False
    path = pathlib.Path(text).expanduser()
    why = not_a_file(path)
    if why:
        raise FileNotFoundError(
            f"--pretrained {text}: {why} (use a weights file, 'imagenet' or 'none')"
        )
    return path


def _mapping(items):
    mapping = {}
    for item in items or ():
        target, sep, source = item.partition("=")
        if not sep or not target or not source:
            raise ValueError(f"--init-head {item!r}: expected TARGET=SOURCE, e.g. hotdog=hotdog")
        mapping[int(target) if target.isdigit() else target] = (
            int(source) if source.isdigit() else source
        )
    return mapping


def _print_outputs(out):
    out = pathlib.Path(out)
    print(f"outputs in {out}:")
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            print(f"  {str(p.relative_to(out)):<34} {p.stat().st_size:>12,d} bytes")


@dataclasses.dataclass
class _Job:
    """One training run of a command, prepared (net built, plan checked)."""

    mode: str
    net: typing.Any
    plan: TrainPlan
    out: pathlib.Path
    overwrite: bool = False


def _prepare(mode, args, source, out, lr=None) -> _Job:
    """Build the net and check the whole run (data included) without training."""
    backend = _registry.get_backend()
    out = pathlib.Path(out)
    resume = None
    if getattr(args, "resume", False):
        resume = checkpoint_file(out)
        if not resume.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {out} to continue from")
    run = _run_spec(args, checkpoint_dir=os.fspath(out), resume=resume and os.fspath(resume))
    pipeline = _pipeline(args)
    lr = lr or getattr(args, "lr", None) or api.book_learning_rate(mode, backend)
    classes = class_names(source, run.val_fraction)  # the data decides the head's size
    if mode == "finetune":
        net = api.build_finetune_net(
            len(classes), _pretrained(args.pretrained), args.arch, seed=args.seed
        )
    else:
        net = api.build_scratch_net(len(classes), args.arch, seed=args.seed)
    plan = api.plan_run(
        net,
        lr,
        args.batch_size,
        args.epochs,
        mode == "finetune",
        data_dir=source,
        image_size=args.image_size,
        pipeline=pipeline,
        run=run,
    )
    if getattr(args, "init_head", None):
        if mode != "finetune":
            raise ValueError("--init-head needs the 'finetune' mode (a source classifier)")
        done = init_head_from_source(
            net, _mapping(args.init_head), classes=plan.classes, source_classes=args.source_classes
        )
        for tgt, (idx, name) in done.items():
            print(f"head row {tgt!r} initialised from source class {idx} {name!r}")
    return _Job(mode, net, plan, out, bool(getattr(args, "overwrite", False)))


def _run(job: _Job):
    """Train a prepared job and write its outputs; return its History."""
    plan = job.plan
    if plan.rank == 0:  # a distributed job: rank 0 prints and writes, the others train
        workers = f", {plan.world_size} workers ({plan.job.engine})" if plan.job else ""
        print(
            f"{job.mode} on {plan.backend}: {len(plan.classes)} classes {list(plan.classes)}, "
            f"lr {plan.learning_rate:g}, {plan.num_epochs} epoch(s), batch {plan.batch_size}, "
            f"image size {plan.image_size}, pipeline {plan.pipeline.name}{workers}, "
            f"data {plan.data_dir} (train/, evaluated on {plan.eval_split}/)",
            flush=True,
        )
        job.out.mkdir(parents=True, exist_ok=True)
    # --overwrite: the earlier run goes once this one has a checkpoint to put in its place
    replace = cli_guard.ReplaceRun(job.out) if job.overwrite and plan.rank == 0 else None
    h = api.train(job.net, plan, [replace] if replace else [])
    if plan.rank != 0:
        return h
    if replace and not replace.done:  # no epoch: nothing to replace the earlier run with
        print(f"no epoch completed: {job.out} is left as it was", flush=True)
        return h
    h.config.update(mode=job.mode)
    h.to_json(job.out / "metrics.json")
    if h.epochs:
        plot.close(
            plot.plot_history(
                h,
                job.out / "learning_curve.png",
                labels=[f"{job.mode} {plan.backend} lr={plan.learning_rate:g}"],
            )
        )
    return h


# --------------------------------------------------------------------------- commands


def cmd_train(args):
    if args.mode == "scratch" and args.pretrained not in (None, "none"):
        raise ValueError("--pretrained is for 'finetune'; 'scratch' starts from random weights")
    # the run owns --out until it ends (a launcher for its workers too; a worker of a
    # job started elsewhere owns it through train's own lock, rank 0's), so a second
    # run into it is refused at once, whatever the first has written so far
    in_job = torchrun_world() or dmlc_role()
    out = pathlib.Path(args.out).expanduser()
    is_file = os.path.lexists(out) and not out.is_dir()
    with contextlib.nullcontext() if in_job or is_file else cli_guard.own_out(args.out):
        return _train(args)


def _train(args):
    cli_guard.check_run_out(args.out, resume=args.resume, overwrite=args.overwrite)
    if args.nproc is None and args.nnodes == 1:
        args.nproc = _ddp_gpus(args)
    if args.nproc is not None or args.nnodes > 1:
        return _launch(args)
    _use_backend(args.backend)
    job = _prepare(args.mode, args, _data_source(args), args.out)
    h = _run(job)
    if job.plan.rank == 0:
        _print_outputs(args.out)
    return 0 if h.completed else EXIT_INTERRUPTED


def _ddp_gpus(args) -> int | None:
    """The number of workers ``train`` starts by itself: one per GPU when the fast
    pipeline (or 'auto') runs on several GPUs of this machine and the backend runs
    those as processes (torch's DistributedDataParallel, instead of the book's
    DataParallel); None (one process) otherwise, and inside a job."""
    if args.pipeline not in ("auto", "fast") or torchrun_world() or dmlc_role():
        return None
    backend = _use_backend(args.backend)
    if _registry.spec(backend).fast_multi_gpu != "processes":
        return None
    devices = _registry.current().all_devices()
    gpus = [d for d in devices if "cpu" not in str(d)]
    if len(gpus) < 2:
        return None
    print(
        f"{len(gpus)} GPUs: one worker per GPU (--nproc {len(gpus)}); "
        f"--pipeline book keeps the book's single process",
        flush=True,
    )
    return len(gpus)


def _launch(args):
    """``--nproc N``: start this command as a data-parallel job of N workers on this
    machine, with the backend's own engine (see :mod:`d2lft.launch`)."""
    backend = _use_backend(args.backend)
    nproc = args.nproc or 1
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    # what every worker would refuse, refused once here: the data and the shards
    source = _data_source(args)
    folder = resolve_images(source, args.val_fraction)
    world = nproc * args.nnodes
    check_shards(
        args.batch_size,
        len(list_images(folder / "train")[1]),
        len(list_images(held_out(folder))[1]),
        world,
    )
    argv = list(args.argv)
    if args.backend is None:
        argv += ["--backend", backend]
    launcher = _registry.spec(backend).launcher
    timeout = _run_spec(args).dist_timeout
    log = pathlib.Path(args.out).expanduser() / launch.LOG_NAME
    if launcher == "torchrun":
        outcome = launch.torchrun(
            argv,
            nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            timeout=timeout,
            log=log,
        )
    elif launcher == "ps-lite":
        if args.nnodes > 1:
            raise ValueError(
                "--nnodes is for torchrun; an MXNet job across machines is "
                "started with the DMLC_* variables (docs/distributed.md)"
            )
        outcome = launch.ps_lite(argv, nproc, timeout=timeout, log=log)
    else:
        raise ValueError(f"the {backend} backend has no launcher for --nproc")
    if outcome.code != 0:
        print(_job_ended(outcome, world, args.out), file=sys.stderr)
    return outcome.code


def _job_ended(outcome, world: int, out) -> str:
    """The one line that says how a job that did not finish ended."""
    kept = (
        f"the last complete checkpoint in {out} is kept: continue with --resume"
        if checkpoint_file(out).is_file()
        else "no epoch completed, no checkpoint was written"
    )
    if outcome.signal:
        return (
            f"d2lft train: the {world}-worker job was interrupted ({outcome.signal_name}); {kept}"
        )
    why = f": {outcome.detail}" if outcome.detail else ""
    return (
        f"d2lft train: error: the {world}-worker job failed (exit status {outcome.code}{why}); "
        f"{kept}; the frameworks' messages are in {outcome.log}"
    )


def cmd_compare(args):
    cli_guard.check_outputs(
        args.out, cli_guard.COMPARE_FILES, overwrite=args.overwrite, runs=MODES
    )
    with cli_guard.own_out(args.out):  # a second command into it is refused
        return _compare(args)


def _compare(args):
    backend = _use_backend(args.backend)
    source = _data_source(args)
    out = pathlib.Path(args.out)
    lrs = {"finetune": args.lr_finetune, "scratch": args.lr_scratch}
    # both runs are built and checked before either trains
    jobs = [_prepare(mode, args, source, out / mode, lr=lrs[mode]) for mode in MODES]
    rows, hs = SweepResult(), []
    for job in jobs:
        h = _run(job)
        hs.append(h)
        rows.append(
            dict(
                backend=backend,
                mode=job.mode,
                learning_rate=job.plan.learning_rate,
                epochs=h.epochs,
                train_loss=h.train_loss[-1] if h.epochs else None,
                train_acc=h.train_acc[-1] if h.epochs else None,
                test_acc=h.test_acc[-1] if h.epochs else None,
                diverged=False,
                seconds=round(h.wall_seconds, 2),
            )
        )
        if not h.completed:
            break
    print(rows)
    rows.to_json(out / "compare.json")
    plot.close(
        plot.plot_history(
            hs,
            out / "compare.png",
            labels=[f"{r['mode']} lr={r['learning_rate']:g}" for r in rows],
        )
    )
    _print_outputs(out)
    return 0 if all(h.completed for h in hs) else EXIT_INTERRUPTED


def cmd_sweep(args):
    cli_guard.check_outputs(args.out, cli_guard.SWEEP_FILES, overwrite=args.overwrite)
    with cli_guard.own_out(args.out):  # a second command into it is refused
        return _sweep(args)


def _sweep(args):
    _use_backend(args.backend)
    pipeline = _pipeline(args)
    run = _run_spec(args)
    source = _data_source(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = lr_sweep(
        args.lrs,
        modes=args.modes,
        data_dir=source,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        pretrained=_pretrained(args.pretrained),
        arch=args.arch,
        seed=0 if args.seed is None else args.seed,
        pipeline=pipeline,
        run=run,
    )
    print(result)
    result.to_json(out / "sweep.json")
    plot.close(result.plot(out / "sweep.png"))
    _print_outputs(out)
    if result.failed:  # the finished runs are kept in sweep.json; say which failed
        for r in result.failed:
            print(
                f"d2lft sweep: error: the {r['mode']} run at lr {r['learning_rate']:g} "
                f"failed: {r['error']}",
                file=sys.stderr,
            )
        return EXIT_ERROR
    if any(h is not None and not h.completed for h in result.histories):
        return EXIT_INTERRUPTED  # Ctrl-C or SIGTERM ended the sweep (its rows are kept)
    return 0


def _load(args):
    if is_onnx(args.checkpoint):  # an exported model: onnxruntime, no framework
        return load_onnx(args.checkpoint)
    if not args.backend and not os.environ.get("D2LFT_BACKEND"):
        args.backend = read_checkpoint(args.checkpoint, verify=False).backend
        if not _registry.framework_installed(args.backend):
            args.backend = None  # the other backend reads it too
    _use_backend(args.backend)
    return load_checkpoint(args.checkpoint)


def _has_splits(source) -> bool:
    """Whether `source` (a folder or a .zip) already holds train/ and a held-out split
    (test/, val/ or valid/)."""
    path = pathlib.Path(source)
    if path.is_file() and path.suffix.lower() == ".zip":
        path = _unzip(path)
    if not path.is_dir():
        return False
    try:
        find_split_root(_class_root(path))
    except DataLayoutError:
        return False
    return True


def _trained_on(args, net):
    """``(data, where it came from)`` for evaluate: --data-dir when given; else the
    data the checkpoint was trained on (its absolute `data_source`; an older
    checkpoint's `data_dir`, relative to this folder); else the hotdog data."""
    if args.data_dir is not None or is_onnx(net) or net_info(net).checkpoint is None:
        return _data_source(args), ""
    ck = net_info(net).checkpoint
    cfg = ck.config
    recorded = cfg.get("data_source") if "data_source" in cfg else cfg.get("data_dir")
    if not recorded:  # trained on the chapter's hotdog data
        return _data_source(args), ""
    path = pathlib.Path(recorded).expanduser()
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to this folder, {os.getcwd()})"
        raise FileNotFoundError(
            f"{ck.path} was trained on {recorded}, which is not there{where}: "
            f"pass --data-dir with the data to score"
        )
    return path, f" (the data {ck.path} was trained on; --data-dir scores other data)"


def cmd_evaluate(args):
    if args.out:
        cli_guard.check_outputs(args.out, cli_guard.EVALUATE_FILES, overwrite=args.overwrite)
    net = _load(args)
    data_dir, trained_on = _trained_on(args, net)
    split = None if args.split == "all" else args.split
    val_fraction, origin = args.val_fraction, "--val-fraction"
    if val_fraction is None and split is not None and not _has_splits(data_dir):
        # the same held-out images as training, when it split ONE folder of classes
        recorded = None if is_onnx(net) else net_info(net).checkpoint.config.get("val_fraction")
        if recorded is not None:
            val_fraction, origin = recorded, f"recorded in {net_info(net).checkpoint.path}"
    ev = evaluate(
        net, data_dir, split=split, val_fraction=val_fraction, batch_size=args.batch_size
    )
    if split is None:
        print(f"scored every image of {data_dir} (--split all: training images included)")
    elif val_fraction is not None:
        held = " (the images training held out)" if split == "test" else ""
        print(
            f"scored the {split!r} split{held} of {data_dir} made with val_fraction "
            f"{val_fraction:g} ({origin})"
        )
    else:
        print(f"scored the {pathlib.Path(ev.folder).name}/ folder of {data_dir}{trained_on}")
    print(ev)
    mistakes = ev.mistakes()
    if mistakes and args.show_mistakes > 0:
        print(f"worst mistakes ({len(mistakes)} in all):")
        for path, true, pred, p in mistakes[: args.show_mistakes]:
            print(f"  {path}: {pred} ({p:.3f}), true {true}")
    elif mistakes:  # --show-mistakes 0: the count only
        print(f"{len(mistakes)} mistake(s)")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "evaluation.json", json.dumps(ev.to_dict(), indent=2))
        plot.close(ev.plot_confusion(out / "confusion.png"))
        plot.close(ev.plot_predictions(out / "predictions.png", n=args.grid))
        outputs.record(*(out / n for n in cli_guard.EVALUATE_FILES))  # d2lft's, for train
        _print_outputs(out)
    return 0


def cmd_predict(args):
    if args.out:
        cli_guard.check_png_out(args.out, overwrite=args.overwrite)
    net = _load(args)
    files = image_files(args.images)
    if not files:
        raise ValueError(f"no image files in {args.images}")
    files, preds, bad = _predict_readable(net, files, args.batch_size)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            others = ", ".join(f"{c} {q:.3f}" for c, q in p.top(args.top)[1:])
            print(f"{p}" + (f"  [{others}]" if others else ""))
    if args.out and preds:
        plot.close(
            plot.plot_predictions(
                files[: args.grid],
                [p.label for p in preds],
                [p.probability for p in preds],
                path=args.out,
            )
        )
        outputs.record(args.out)
        print(f"wrote {args.out}")
    for path, why in bad:
        print(f"d2lft predict: error: cannot read image {path}: {why}", file=sys.stderr)
    if bad and not preds:
        print("d2lft predict: error: none of the images could be read", file=sys.stderr)
        return EXIT_ERROR
    if bad:
        print(
            f"d2lft predict: {len(bad)} of {len(bad) + len(preds)} image(s) unreadable "
            f"(listed above); the others were predicted (exit status {EXIT_PARTIAL})",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return 0


def _predict_readable(net, files, batch_size) -> tuple[list, list, list]:
    """``(files predicted, their predictions, [(unreadable file, why)])``: one
    unreadable image does not stop the others. On a failure each file is checked
    (decoded once); one that passes that check and still fails is predicted alone."""
    try:
        return files, predict(net, files, batch_size=batch_size), []
    except BadImageError:
        pass
    good, bad = [], []
    for f in files:
        try:
            check_image_file(f, deep=True)
        except BadImageError as err:
            bad.append((f, _why(err)))
        else:
            good.append(f)
    try:
        return good, (predict(net, good, batch_size=batch_size) if good else []), bad
    except BadImageError:
        pass
    done, preds = [], []
    for f in good:
        try:
            preds += predict(net, [f], batch_size=1)
            done.append(f)
        except BadImageError as err:
            bad.append((f, _why(err)))
    return done, preds, bad


def _why(err: BadImageError) -> str:
    """What the image library said about an unreadable file."""
    return str(err.__cause__ or err).strip() or type(err.__cause__).__name__


def cmd_show(args):
    """An image grid from the data (no framework needed): the first images of each
    class, one row per class (the book shows 8 hotdogs and 8 others)."""
    from PIL import Image

    cli_guard.check_png_out(args.out, overwrite=args.overwrite)
    src = _data_source(args)
    if src.is_file():
        src = hub.resolve_data_dir(src)
    split = src / args.split if (src / args.split).is_dir() else _class_root(src)
    classes, samples = list_images(split)
    imgs, titles = [], []
    for idx, c in enumerate(classes):
        paths = [p for p, i in samples if i == idx][: args.n]
        imgs += [str(p) for p in paths] + [None] * (args.n - len(paths))
        titles += [c] * len(paths) + [""] * (args.n - len(paths))
    loaded = []
    for p in imgs:
        if p is None:
            loaded.append(Image.new("RGB", (8, 8), "white"))
        else:
            # as training sees it (EXIF orientation applied), as a thumbnail
            loaded.append(plot.thumbnail(np.asarray(load_rgb(p))))
    axes = plot.show_images(loaded, len(classes), args.n, titles=titles, scale=args.scale)
    fig = axes[0].figure
    plot.save_png(fig, args.out, photos=True)
    plot.close(fig)
    outputs.record(args.out)
    print(f"wrote {args.out} ({len(classes)} classes x {args.n} images from {split})")
    return 0


def cmd_info(args):
    if is_onnx(args.checkpoint):
        model = load_onnx(args.checkpoint)
        print(json.dumps(model.info, indent=2) if args.json else model)
        return 0
    ck = read_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(ck.info, indent=2))
        return 0
    print(ck)
    cfg = ck.config
    print(
        f"  trained with lr {cfg.get('learning_rate')}, batch {cfg.get('batch_size')}, "
        f"seed {cfg.get('seed')}, weight decay {cfg.get('weight_decay')}, pipeline "
        f"{cfg.get('pipeline')}"
    )
    print(f"  preprocessing: {ck.info['preprocessing']}")
    print("  hash verified")
    return 0


def cmd_export(args):
    if is_onnx(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is already an ONNX file")
    out = args.out or checkpoint_file(args.checkpoint).with_name("model.onnx")
    cli_guard.check_file_out(out, overwrite=args.overwrite)
    net = _load(args)
    path = export(net, out, format=args.format)
    outputs.record(path)  # d2lft's: a later train --out into its folder may replace it
    m = load_onnx(path)
    s = m.image_size
    print(
        f"wrote {path} ({path.stat().st_size:,d} bytes): {m.kind} {m.arch} trained with "
        f"{m.trained_with}, classes {m.classes}\n  exported with {m.info['exporter']}\n"
        f"  input 'input': N x 3 x {s} x {s} float32, normalised; output 'logits' "
        f"(the preprocessing is in its metadata)\n"
        f"  predict without torch or MXNet: d2lft predict --checkpoint {path} IMAGE..."
    )
    return 0


def cmd_serve(args):
    web.require_web()  # these fail before a framework loads
    web.bind(args.host, args.port).close()
    web.check_host_names(args.allow_host)
    web.serve(
        _load(args),
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        allow_hosts=args.allow_host,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive=args.keep_alive,
        max_connections=args.max_connections,
    )
    return 0


def _port(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text!r}")
    return int(text)


def _add_deploy_commands(sub):
    """`serve` and `export` (docs/serve-and-export.md)."""
    p = sub.add_parser("serve", help="a local web page that classifies your photos")
    _add_backend(p)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file, --out folder, or .onnx file (required)",
    )
    p.add_argument(
        "--host", default=web.DEFAULT_HOST, help="(default: 127.0.0.1, this machine only)"
    )
    p.add_argument(
        "--port", type=_port, default=web.DEFAULT_PORT, help="(default: 7860; 0: any free port)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=_positive_float,
        default=web.MAX_UPLOAD_MB,
        help=f"largest upload, all photos together (default: {web.MAX_UPLOAD_MB:g})",
    )
    p.add_argument(
        "--max-files",
        type=_positive_int,
        default=web.MAX_FILES,
        help=f"most photos in one upload (default: {web.MAX_FILES})",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name, e.g. the machine's name on a LAN; "
        "repeatable (default: none; IP addresses and localhost are always answered)",
    )
    for flag, default, what in (
        ("--header-timeout", web.HEADER_TIMEOUT, "seconds a client has to send its headers"),
        ("--body-timeout", web.BODY_TIMEOUT, "seconds a client has to send an upload"),
        ("--keep-alive", web.KEEP_ALIVE, "seconds an idle connection stays open"),
    ):
        p.add_argument(
            flag,
            type=_positive_float,
            default=default,
            metavar="SECONDS",
            help=f"{what} (default: {default:g})",
        )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=web.MAX_CONNECTIONS,
        metavar="N",
        help=f"most connections open at once; the oldest idle one makes room "
        f"(default: {web.MAX_CONNECTIONS}, lowered to fit ulimit -n)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="the model as an ONNX file (predict without torch/MXNet)")
    _add_backend(p)
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint file or --out folder (required)"
    )
    p.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.onnx",
        help="(default: model.onnx beside the checkpoint)",
    )
    cli_guard.add_overwrite_flag(p, "the file", "at")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------- parser


def _add_backend(p):
    p.add_argument(
        "--backend",
        choices=_registry.names(),
        default=None,
        help="framework (default: $D2LFT_BACKEND, else torch when installed)",
    )


def _add_data(p, default="the chapter's hotdog data"):
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="PATH|ZIP|URL",
        help="train/<class>/ + test/<class>/ (or val/, valid/) folder, a .zip of one, ONE folder "
        "of class subfolders (with --val-fraction), or a URL (with --sha1) "
        f"(default: {default})",
    )
    p.add_argument(
        "--sha1",
        default=None,
        help="SHA-1 of the archive at a --data-dir URL (default: none; needed with a URL)",
    )


def _add_training(p, lr=True):
    p.add_argument("--epochs", type=_positive_int, default=5, help="(default: 5)")
    if lr:
        p.add_argument(
            "--lr",
            type=_positive_float,
            default=None,
            help="learning rate (default: the book's for the backend and mode: "
            + ", ".join(f"{s.name} {s.lr_finetune:g}/{s.lr_scratch:g}" for s in _registry.specs())
            + ")",
        )
    p.add_argument("--batch-size", type=_positive_int, default=128, help="(default: 128)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="(default: 224)")
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH|imagenet|none",
        help="source weights for finetune (default: imagenet)",
    )
    p.add_argument(
        "--arch",
        default=None,
        help="resnet18_v1 (torchvision resnet18) or resnet18_v2 (Gluon's) "
        "(default: the chapter's: torch resnet18, mxnet resnet18_v2)",
    )
    _add_option_flags(p)


def _add_launch(p):
    g = p.add_argument_group("data-parallel training (docs/distributed.md)")
    g.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        metavar="N",
        help="start N workers on this machine: torchrun (torch) or MXNet's "
        "parameter server (default: one process, no job)",
    )
    g.add_argument(
        "--nnodes",
        type=_positive_int,
        default=1,
        metavar="M",
        help="torch: machines in the job, each running this command (default: 1)",
    )
    g.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="R",
        help="torch: this machine's rank, 0..M-1 (default: 0)",
    )
    g.add_argument(
        "--master-addr",
        default=None,
        metavar="HOST",
        help="torch: the address of machine 0 (default: 127.0.0.1)",
    )
    g.add_argument(
        "--master-port",
        type=_positive_int,
        default=None,
        metavar="PORT",
        help="torch: a free port on machine 0 (default: 29500 with --nnodes)",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="d2lft",
        description="Fine-tuning (Dive into Deep Learning, section 14.2) with "
        "MXNet or PyTorch: train, evaluate, predict, compare, sweep, show, serve, export.",
    )
    parser.add_argument("--version", action="version", version=f"d2lft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="fine-tune (or train from scratch) and save the run")
    p.add_argument(
        "mode",
        nargs="?",
        choices=MODES,
        default="finetune",
        help="finetune: ImageNet features and a new head (10x lr); scratch: random "
        "initialisation, one lr (default: finetune)",
    )
    _add_backend(p)
    _add_data(p)
    _add_training(p)
    p.add_argument("--out", default="d2lft-run", help="output folder (default: d2lft-run)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (default: off)",
    )
    cli_guard.add_overwrite_flag(p)
    p.add_argument(
        "--init-head",
        action="append",
        metavar="TARGET=SOURCE",
        help="exercise 4: start the head row of class TARGET from the source "
        "classifier's row of class SOURCE (e.g. hotdog=hotdog); repeatable "
        "(default: none, every row Xavier-initialised)",
    )
    p.add_argument(
        "--source-classes",
        default=None,
        metavar="FILE",
        help="the source model's class names, one a line, for --pretrained PATH "
        "(default: the ImageNet names that come with --pretrained imagenet)",
    )
    _add_launch(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="fine-tune vs scratch on the same data: a table")
    _add_backend(p)
    _add_data(p)
    _add_training(p, lr=False)
    p.add_argument(
        "--lr-finetune",
        type=_positive_float,
        default=None,
        help="(default: the book's for the backend)",
    )
    p.add_argument(
        "--lr-scratch",
        type=_positive_float,
        default=None,
        help="(default: the book's for the backend)",
    )
    p.add_argument(
        "--out",
        default="d2lft-compare",
        help="output folder: finetune/, scratch/, compare.json, compare.png "
        "(default: d2lft-compare)",
    )
    cli_guard.add_overwrite_flag(p, "the results")
    p.set_defaults(func=cmd_compare, resume=False, init_head=None)

    p = sub.add_parser("sweep", help="exercises 1-2: test accuracy against learning rate")
    _add_backend(p)
    _add_data(p)
    _add_training(p, lr=False)
    p.add_argument(
        "--lrs",
        type=_positive_float,
        nargs="+",
        required=True,
        metavar="LR",
        help="the learning rates to try (required)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="(default: finetune scratch)",
    )
    p.add_argument("--out", default="d2lft-sweep", help="(default: d2lft-sweep)")
    cli_guard.add_overwrite_flag(p, "the results")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="accuracy, confusion matrix and worst mistakes")
    _add_backend(p)
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint file or --out folder (required)"
    )
    _add_data(p, "the data the checkpoint was trained on")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="the fraction training held out of ONE folder of class subfolders "
        "(default: the one recorded in the checkpoint)",
    )
    p.add_argument(
        "--split",
        default="test",
        metavar="NAME|all",
        help="the subfolder to score (default: test, the held-out images); "
        "'all': every image of ONE folder of class subfolders, training "
        "images included",
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="(default: 64)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for evaluation.json, confusion.png and predictions.png "
        "(default: none, print only)",
    )
    cli_guard.add_overwrite_flag(p, "the evaluation")
    p.add_argument(
        "--grid", type=_positive_int, default=16, help="images in predictions.png (default: 16)"
    )
    p.add_argument(
        "--show-mistakes",
        type=_count,
        default=5,
        metavar="N",
        help="print the N worst mistakes (default: 5; 0: their number only)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class and probability for each image")
    _add_backend(p)
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files or folders (required); an unreadable image is reported and the "
        "others are predicted (exit status 1; 2 when none could be read)",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file, --out folder, or .onnx file (required)",
    )
    p.add_argument(
        "--top", type=_positive_int, default=1, help="also show the next classes (default: 1)"
    )
    p.add_argument("--json", action="store_true", help="print JSON only (default: off)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="(default: 32)")
    p.add_argument(
        "--out",
        default=None,
        metavar="PNG",
        help="also draw a prediction grid (default: none)",
    )
    cli_guard.add_overwrite_flag(p, "the picture", "at")
    p.add_argument("--grid", type=_positive_int, default=16, help="(default: 16)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("show", help="an image grid of the data (as the chapter's first figure)")
    _add_data(p)
    p.add_argument("--split", default="train", help="(default: train)")
    p.add_argument("--n", type=_positive_int, default=8, help="images per class (default: 8)")
    p.add_argument("--scale", type=float, default=1.4, help="(default: 1.4)")
    p.add_argument(
        "--out", default="d2lft-show.png", metavar="PNG", help="(default: d2lft-show.png)"
    )
    cli_guard.add_overwrite_flag(p, "the picture", "at")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("info", help="what a checkpoint holds (its hash is verified)")
    p.add_argument("checkpoint", help="checkpoint file or --out folder (required)")
    p.add_argument(
        "--json", action="store_true", help="print the metadata as JSON only (default: off)"
    )
    p.set_defaults(func=cmd_info)
    _add_deploy_commands(sub)
    for command in sub.choices.values():  # errors name the flags of their own command
        command.set_defaults(_parser=command)
    return parser


#: How the library's messages name Python arguments -> the flags that do the same here
#: (applied in order to every error message the command prints; an argument inside a
#: path, e.g. /data/seed=3/, is left alone)
_ARG = r"(?<![\w/.~=-])"  # an argument's name starts a word, not inside a path
CLI_WORDS = [
    # the library's own hint for the command: "split=None (CLI: --split all)"
    (_ARG + r"[a-z_]+=\S+ \(CLI: ([^)]*)\)", r"\1"),
    (r"\s*\(CLI: [^)]*\)", ""),
    (
        r"build it with d2lft\.build_finetune_net\(pretrained=True or a weights file that "
        r"includes its output layer\)",
        "train with --pretrained imagenet, or --pretrained PATH with a weights file that "
        "includes its output layer",
    ),
    (
        r"source_classes=\[\.\.\.\] (or a text file|\(a list, or a text file) with one name "
        r"per line\)?",
        "--source-classes FILE (a text file with one name per line)",
    ),
    (
        r"pass classes=\[\.\.\.\] with the target class names, or use the row index",
        "use one of the data's class folder names, or a row index (--init-head 0=SOURCE)",
    ),
    (r", or pass skip_bad=True to skip unreadable images with a warning", ""),
    (r" \(with skip_bad=True files are decoded once when the dataset is built\)", ""),
    (_ARG + r"url=\.\.\. or \$D2LFT_DATA_URL", "--data-dir URL --sha1 SHA1 (or $D2LFT_DATA_URL)"),
    (_ARG + r"its sha1=\.\.\.", "its --sha1"),
    (_ARG + r"root=\.\.\. or \$D2LFT_HOME", "$D2LFT_HOME"),
    (_ARG + r"pretrained=PATH\b", "--pretrained PATH"),
    (_ARG + r"pretrained=True\b", "--pretrained imagenet"),
    (_ARG + r"pretrained=False\b", "--pretrained none"),
    (_ARG + r"split=None\b", "--split all"),
    (_ARG + r"split='(\w+)'", r"--split \1"),
    (_ARG + r"arch='(\w+)'", r"--arch \1"),
    (_ARG + r"(compile|freeze|resume)=True\b", r"--\1"),
    (_ARG + r"(precision|decode_cache|augment)='(\w+)'", r"--\1 \2"),
    (_ARG + r"num_epochs=", "--epochs "),
    (_ARG + r"learning_rate=", "--lr "),
    (
        _ARG + r"(val_fraction|image_size|batch_size|data_dir|seed|weight_decay|feature_passes|"
        r"workers|sha1)=",
        r"--\1 ",
    ),
]


def cli_words(text: str) -> str:
    """A library message as the command says it: Python arguments (``url=...``,
    ``source_classes=[...]``, ``val_fraction=F``) named by the flags that do the same
    (``--data-dir URL --sha1 SHA1``, ``--source-classes FILE``, ``--val-fraction F``)."""
    for pattern, repl in CLI_WORDS:
        text = re.sub(pattern, repl, text)
    # flags keep their dashes: --decode_cache -> --decode-cache
    return re.sub(r"--([a-z]+(?:_[a-z]+)+)", lambda m: "--" + m.group(1).replace("_", "-"), text)


def _flag_of(param: str | None, args) -> str | None:
    """The flag of the command `args` ran that sets the library parameter `param`:
    the option field's own ``flag`` metadata, else the flag whose dest is `param`."""
    if param is None:
        return None
    actions = getattr(getattr(args, "_parser", None), "_actions", ())
    flags = {s for a in actions for s in a.option_strings}
    for cls in (*PIPELINES.values(), RunSpec):
        field = {f.name: f for f in dataclasses.fields(cls)}.get(param)
        if field is not None and field.metadata.get("flag") in flags:
            return field.metadata["flag"]
    own = [max(a.option_strings, key=len, default="") for a in actions if a.dest == param]
    return own[0] if own and own[0] else None


def _error_line(err: BaseException, args) -> str:
    """The one line for an error: one that names its parameter gets that parameter's
    flag in front; the others say the library's words as the command's."""
    text = cli_guard.describe(err, args)
    param = param_of(err)
    if param is None:
        return cli_words(text)
    flag = _flag_of(param, args)
    return f"{flag}: {text}" if flag else text


def _show_warning(command: str):
    """A `warnings.showwarning` that prints a warning as the command's own one line
    (d2lft's source line is no help to the user; another package's is named)."""
    own = os.path.dirname(os.path.abspath(__file__))

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if not os.path.abspath(filename).startswith(own + os.sep):
            text += f" ({category.__name__} from {os.path.basename(filename)}:{lineno})"
        with contextlib.suppress(OSError, ValueError):  # no stderr to write to
            print(f"d2lft {command}: warning: {text}", file=file or sys.stderr, flush=True)

    return show


def main(argv=None):
    cli_guard.guard_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc re-runs
    shown, warnings.showwarning = warnings.showwarning, _show_warning(args.command)
    try:
        return _main(args)
    finally:
        warnings.showwarning = shown


def _main(args):
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, not in Python's exit
        return code
    except BrokenPipeError:  # `d2lft info ... | head -1`: the reader has gone
        cli_guard.silence_stdout()
        return EXIT_BROKEN_PIPE
    except (
        ValueError,
        OSError,  # FileNotFoundError, DownloadError, CacheError, a full or read-only disk
        ImportError,
        DataLayoutError,
        CheckpointError,
        BadImageError,
        TrainingDiverged,
        launch.LaunchError,
    ) as err:
        if os.environ.get("D2LFT_DEBUG"):
            raise
        print(f"d2lft {args.command}: error: {_error_line(err, args)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"d2lft {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
