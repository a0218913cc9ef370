"""The chapter's functions, for whichever backend is active: the data, the two
networks, the training, and the two tabs' SGD conventions.

Backend-neutral: a framework is reached only through the active backend's package
(:mod:`d2lft.backends`), imported the first time a function needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import random
import shutil
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ._sys.locks import own_folder
from .backends import _registry
from .data import hub
from .data.decode_cache import get_cache, plan_store
from .data.folders import check_image_folder, count_images, held_out, held_out_split, list_images
from .data.split import resolve_images
from .engine import budget
from .engine import callbacks as cb
from .engine.dist import check_shards
from .engine.history import History
from .engine.loop import fit
from .engine.options import (
    BOOK_WEIGHT_DECAY,
    BookLoop,
    FastPipeline,
    Pipeline,
    RunSpec,
    TrainPlan,
    check_args,
    pipeline_from,
)
from .io import checkpoint as ckpt
from .io import weights as _weights
from .netinfo import net_info

PathLike = str | os.PathLike
#: a network of the active backend (a torch nn.Module or a Gluon HybridBlock)
Net = Any
Mode = Literal["finetune", "scratch"]


def book_learning_rate(mode: Mode = "finetune", backend: str | None = None) -> float:
    """The book's learning rate for `mode` in `backend`'s tab (default: the active
    backend): MXNet 0.01 / 0.1, PyTorch 5e-5 / 5e-4 (fine-tune / scratch)."""
    return _registry.spec(backend or _registry.get_backend()).book_lr(mode)


def loss_reduction(backend: str | None = None) -> str:
    """How `backend`'s tab reduces the per-example losses: 'mean' (MXNet's
    ``trainer.step(batch_size)``) or 'sum' (torch's ``l.sum().backward()``)."""
    return _registry.spec(backend or _registry.get_backend()).loss_reduction


def load_hotdog(
    root: PathLike | None = None,
    *,
    url: str | None = None,
    sha1: str | None = None,
    skip_bad: bool = False,
) -> tuple[Any, Any]:
    """Download (once) the hotdog data and return `(train_imgs, test_imgs)`, the active
    backend's image-folder datasets of raw images, as in the chapter. A later
    :func:`train_fine_tuning` without `data_dir` trains on this same data.
    `skip_bad=True` leaves unreadable images out with a warning (see :func:`image_folder`)."""
    folder = hub.download_hotdog(root, url=url, sha1=sha1)
    backend = _registry.current()
    return (
        backend.image_folder(folder / "train", skip_bad=skip_bad),
        backend.image_folder(folder / "test", skip_bad=skip_bad),
    )


def image_folder(path: PathLike, transform: Any = None, *, skip_bad: bool = False) -> Any:
    """The active backend's image-folder dataset over one split folder
    (`path/<class>/*.jpg`). Both backends read the same files
    (`d2lft.data.images.IMAGE_SUFFIXES`) as 8-bit RGB. An unreadable image raises
    :class:`BadImageError` naming it (its header is checked here, its body when it is
    read); `skip_bad=True` decodes every image now and leaves unreadable ones out with
    a warning."""
    return _registry.current().image_folder(path, transform, skip_bad=skip_bad)


def train_augs(image_size: int = 224) -> Any:
    """The chapter's training augmentation (RandomResizedCrop, flip, normalise)."""
    check_args(1.0, 1, 1, image_size)
    return _registry.current().train_augs(image_size)


def test_augs(image_size: int = 224) -> Any:
    """The chapter's test transform (resize to image_size*256/224, center crop)."""
    check_args(1.0, 1, 1, image_size)
    return _registry.current().test_augs(image_size)


def _seed_build(backend, seed):
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        backend.seed_framework(seed)


def build_finetune_net(
    num_classes: int = 2,
    pretrained: bool | PathLike = True,
    arch: str | None = None,
    *,
    seed: int | None = None,
) -> Net:
    """Pretrained ResNet-18 features and a new Xavier-initialised head with a 10x
    learning-rate multiplier. `pretrained`: True (the framework's ImageNet weights),
    a weights file path, or False. `arch=None` is the chapter's choice for the active
    backend (MXNet `resnet18_v2`, torch `resnet18`). `seed`: seed the framework's
    generator first, so the new head (and random features) are the same every time
    (else they come from the generator's state: see :func:`d2lft.seed`). Every
    parameter is initialised when this returns (MXNet's deferred initialisation is
    completed)."""
    backend = _registry.current()
    _seed_build(backend, seed)
    return backend.build_finetune_net(num_classes, pretrained, arch)


def build_scratch_net(
    num_classes: int = 2, arch: str | None = None, *, seed: int | None = None
) -> Net:
    """The same architecture with random initialisation (the chapter's scratch_net);
    `seed` as in :func:`build_finetune_net`."""
    backend = _registry.current()
    _seed_build(backend, seed)
    return backend.build_scratch_net(num_classes, arch)


def _check_head_fits(backend, net, classes, folder):
    """A clear error, before any training, when the data has more classes than the
    network has outputs (labels would index past the head)."""
    outputs = backend.num_outputs(net)
    if len(classes) > outputs:
        raise ValueError(
            f"the data in {folder} has {len(classes)} classes {classes} but the "
            f"network's head has {outputs} outputs: build the network with "
            f"num_classes={len(classes)}"
        )


def _merge_run(run: RunSpec | None, devices, seed) -> RunSpec:
    run = RunSpec() if run is None else run
    if not isinstance(run, RunSpec):
        raise TypeError(f"run must be a d2lft.RunSpec, got {type(run).__name__}")
    for name, value in (("devices", devices), ("seed", seed)):
        if value is not None:
            if getattr(run, name) is not None and getattr(run, name) != value:
                raise ValueError(
                    f"{name} is given twice ({value!r} and run.{name}="
                    f"{getattr(run, name)!r}): pass it once"
                )
            run = dataclasses.replace(run, **{name: value})
    return run


def plan_run(
    net: Net,
    learning_rate: float | None = None,
    batch_size: int = 128,
    num_epochs: int = 5,
    param_group: bool = True,
    *,
    data_dir: PathLike | None = None,
    image_size: int = 224,
    devices: Sequence | None = None,
    seed: int | None = None,
    pipeline: Pipeline | str | None = None,
    run: RunSpec | None = None,
) -> TrainPlan:
    """Check every argument of a :func:`train_fine_tuning` call and resolve the data
    (download, extraction, the split of one folder of classes), without training:
    the :class:`TrainPlan` it would run."""
    backend_name = _registry.backend_of(net)
    backend = _registry.for_net(net)
    if learning_rate is None:
        learning_rate = book_learning_rate(net_info(net).kind, backend_name)
    learning_rate, batch_size, num_epochs, image_size = check_args(
        learning_rate, batch_size, num_epochs, image_size
    )
    if not isinstance(param_group, bool):
        raise ValueError(f"param_group must be True or False, got {param_group!r}")
    pipeline = pipeline_from(pipeline)
    run = _merge_run(run, devices, seed)
    if run.checkpoint_dir is not None:  # never write over what is not d2lft's
        ckpt.check_checkpoint_dir(run.checkpoint_dir)
    entry = _registry.spec(backend_name)
    precision = getattr(pipeline, "precision", "fp32")
    if precision == "bf16" and "bf16" not in entry.precisions:
        raise ValueError(
            f"the {backend_name} backend trains in {' or '.join(entry.precisions)} only "
            f"(docs/speed.md says why); use precision='auto' or 'fp32'"
        )
    if getattr(pipeline, "compile", False) and not entry.compile:
        raise ValueError(
            f"compile=True is torch's torch.compile; the {backend_name} backend's "
            f"fast pipeline hybridizes (static_alloc, static_shape) instead"
        )
    if run.val_fraction is not None:
        if data_dir is None:
            raise ValueError("val_fraction needs data_dir= (a folder of class subfolders)")
        folder = resolve_images(data_dir, run.val_fraction)
    else:
        folder = hub.resolve_data_dir(data_dir) if data_dir is not None else hub.default_data()
    classes = check_image_folder(folder / "train")
    _check_head_fits(backend, net, classes, folder)
    budget.check_fits(
        image_size,
        min(batch_size, max(count_images(folder / "train"), 1)),
        training=True,
        devices=backend.all_devices() if run.devices is None else run.devices,
    )
    pipeline, choice, on_disk = choose_pipeline(pipeline, folder, image_size)
    job = backend.join_job(run.dist_timeout)
    if job is not None:
        run = _join(job, run, folder, batch_size)
    return TrainPlan(
        backend=backend_name,
        loss_reduction=entry.loss_reduction,
        learning_rate=learning_rate,
        batch_size=batch_size,
        num_epochs=num_epochs,
        param_group=param_group,
        image_size=image_size,
        data_dir=folder,
        classes=tuple(classes),
        pipeline=pipeline,
        run=run,
        job=job,
        pipeline_choice=choice,
        store_on_disk=on_disk,
        eval_split=held_out_split(folder) or "test",
        data_source=None if data_dir is None else os.path.abspath(os.path.expanduser(data_dir)),
    )


def choose_pipeline(pipeline: Pipeline, folder, image_size: int) -> tuple[Pipeline, str, bool]:
    """``(pipeline to run, why, whether its decoded images stay on disk)``. 'auto' runs
    the fast pipeline when its decoded images fit the memory budget, else the fast
    pipeline with them on disk when the disk has room, else the book's loop (see
    :class:`AutoPipeline`). An explicit fast pipeline keeps them on disk when they
    exceed its budget, so it never needs more memory than that, and is refused when
    the disk has no room for them either."""
    if pipeline.name not in ("auto", "fast"):
        return pipeline, "", False
    train = [p for p, _ in list_images(folder / "train")[1]]
    store = plan_store(
        train, len(list_images(held_out(folder))[1]), image_size, pipeline.memory_budget_mb
    )
    fast = (
        pipeline
        if pipeline.name == "fast"
        else FastPipeline(freeze=pipeline.freeze, memory_budget_mb=pipeline.memory_budget_mb)
    )
    asked = " (asked for)" if pipeline.name == "fast" else ""
    if not store.on_disk:
        return fast, f"fast{asked}: {store.describe()}", False
    where = get_cache(fast.decode_cache).disk_folder
    free = _free_bytes(where)
    gb = 2**30
    if free > 1.2 * store.total:
        return (
            fast,
            f"fast{asked} with its decoded images on disk ({where}): {store.describe()}, "
            f"{free / gb:.1f} GB free there",
            True,
        )
    if pipeline.name == "fast":
        raise ValueError(
            f"the fast pipeline needs {store.total / gb:.2f} GB for its decoded images: "
            f"more than its memory budget ({store.budget / gb:.2f} GB; raise "
            f"memory_budget_mb / --memory-budget-mb if the machine has the memory) and "
            f"more than the {free / gb:.1f} GB free on the disk of {where} (free space "
            f"there or give decode_cache= a folder on a larger disk); or use the book's "
            f"loop (pipeline='book'), which needs neither"
        )
    return (
        BookLoop(freeze=pipeline.freeze),
        f"book: {store.describe()} and {free / gb:.1f} GB free on disk ({where}) for them",
        False,
    )


def _free_bytes(folder: pathlib.Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    folder = pathlib.Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _join(job, run: RunSpec, folder, batch_size: int) -> RunSpec:
    """Check a distributed run and give every worker the same seed (so that all draw
    the same permutations and crops and keep their shards of them)."""
    if run.devices is not None:
        raise ValueError(
            "devices= cannot be given in a distributed run: each worker uses "
            "its own (its GPU by LOCAL_RANK, else the CPU)"
        )
    check_shards(
        batch_size,
        len(list_images(folder / "train")[1]),
        len(list_images(held_out(folder))[1]),
        job.world_size,
    )
    seed = run.seed if run.seed is not None else random.getrandbits(31)
    return dataclasses.replace(run, seed=job.broadcast_int(seed))


def default_callbacks(plan: TrainPlan) -> list:
    """d2lft's own callbacks for `plan`, in their order (see
    :mod:`d2lft.engine.callbacks`). In a distributed run only rank 0 prints and writes."""
    out = [cb.HeapRetention()]
    if plan.rank != 0:
        return out
    if plan.run.verbose and cb.progress_on():  # a bar on a terminal, else epoch lines
        out.append(cb.ProgressBar(bar=cb.want_progress()))
    if plan.run.verbose and cb.in_notebook():
        out.append(cb.LiveCurve())
    if plan.run.checkpoint_dir is not None:
        out.append(ckpt.Checkpointer(plan.run.checkpoint_dir))
    if plan.run.verbose:
        out.append(cb.BookPrinter())
    return out


def train(net, plan: TrainPlan, callbacks: Sequence = ()) -> History:
    """Run a :class:`TrainPlan` (from :func:`plan_run`) on `net`; return its History."""
    backend = _registry.for_net(net)
    info = net_info(net)
    if backend.num_outputs(net) == len(plan.classes):
        info.classes = list(plan.classes)  # class names travel with the net
    info.image_size = plan.image_size
    history = History(backend=plan.backend, devices=[], config=plan.config())
    start_epoch = 0
    if plan.run.resume_from is not None:
        start_epoch = ckpt.resume_into(net, plan.run.resume_from, history)
    callback_list = cb.CallbackList([*default_callbacks(plan), *callbacks])
    # the run owns its checkpoint folder while it runs: a second run into it is refused
    folder = plan.run.checkpoint_dir if plan.rank == 0 else None
    with contextlib.nullcontext() if folder is None else own_folder(folder):
        return fit(
            lambda: backend.make_runner(net, plan),
            num_epochs=plan.num_epochs,
            learning_rate=plan.learning_rate,
            seed=plan.run.seed,
            seed_everything=backend.seed_everything,
            history=history,
            callbacks=callback_list,
            net=net,
            start_epoch=start_epoch,
            job=plan.job,
        )


def train_on_batches(
    net: Net,
    learning_rate: float,
    train_iter: Iterable,
    test_iter: Iterable = (),
    *,
    batch_size: int | None = None,
    num_epochs: int = 1,
    param_group: bool = True,
    run: RunSpec | None = None,
    callbacks: Sequence = (),
) -> History:
    """The book's loop, the active backend's steps, on batches you give: `train_iter`
    (re-iterable, one pass per epoch) and `test_iter` yield ``(X, y)`` in the backend's
    arrays. For the parity checks and the book oracle (the same batches in both
    engines); `batch_size` is recorded only (each step uses its batch's own size).
    `run` defaults to a silent RunSpec."""
    backend_name = _registry.backend_of(net)
    backend = _registry.for_net(net)
    run = RunSpec(verbose=False) if run is None else run
    learning_rate, _, num_epochs, _ = check_args(learning_rate, 1, num_epochs)
    plan = TrainPlan(
        backend=backend_name,
        loss_reduction=loss_reduction(backend_name),
        learning_rate=learning_rate,
        batch_size=batch_size or 0,
        num_epochs=num_epochs,
        param_group=param_group,
        image_size=net_info(net).image_size or 224,
        data_dir=pathlib.Path(),
        classes=(),
        pipeline=pipeline_from("book"),
        run=run,
    )
    history = History(backend=plan.backend, devices=[], config=plan.config())
    callback_list = cb.CallbackList([*default_callbacks(plan), *callbacks])
    return fit(
        lambda: backend.make_runner(net, plan, batches=(train_iter, test_iter)),
        num_epochs=num_epochs,
        learning_rate=learning_rate,
        seed=run.seed,
        seed_everything=backend.seed_everything,
        history=history,
        callbacks=callback_list,
        net=net,
    )


def train_fine_tuning(
    net: Net,
    learning_rate: float | None = None,
    batch_size: int = 128,
    num_epochs: int = 5,
    param_group: bool = True,
    *,
    data_dir: PathLike | None = None,
    image_size: int = 224,
    devices: Sequence | None = None,
    seed: int | None = None,
    pipeline: Pipeline | str | None = None,
    run: RunSpec | None = None,
    callbacks: Sequence = (),
) -> History:
    """Train `net` the way the active backend's tab of the chapter does and return a
    :class:`History`.

    The chapter's call: `learning_rate` (default the book's for the backend and the
    net's kind: MXNet 0.01 / 0.1, torch 5e-5 / 5e-4, fine-tune / scratch),
    `batch_size`, `num_epochs`, `param_group=False` trains every layer at one rate
    (the book's scratch run). `data_dir`: a folder (or .zip) with `train/<class>/` and
    `test/<class>/` (or `val/<class>/` or `valid/<class>/`: the first of test/, val/,
    valid/ that holds class folders is evaluated, recorded as ``History.config
    ['eval_split']``); default the data that :func:`load_hotdog` loaded last in this
    process (its `url=`/`sha1=`, from the cache: no second download), else d2l's
    hotdog data (downloaded once). `devices`: default all
    GPUs, else the CPU. `seed` makes shuffling and augmentation repeatable; the
    initial weights were fixed when the net was built (the builders' `seed=`). To
    repeat a whole run exactly, call ``d2lft.seed(n)`` once at the top of the script,
    or pass `seed=` to the builder and here. The two backends scale gradients
    differently (see :func:`equivalent_sgd`).

    `pipeline`: :class:`AutoPipeline` (the default, also None or 'auto': the fast
    pipeline where its decoded images fit in memory or on disk, else the book's loop;
    ``History.config['pipeline_choice']`` says which and why), :class:`BookLoop` (the
    chapter's loop, 'book'), :class:`FastPipeline` (the same computation, faster:
    docs/speed.md) or :class:`FixedBatches` (deterministic batches both backends see
    identically: docs/parity.md); freezing
    the backbone (exercise 3) is their `freeze=True`. `run`: a :class:`RunSpec`
    (held-out fraction of one folder of classes, weight decay, printing, checkpoints
    after every epoch, resuming: with the same seed and settings a resumed run ends
    exactly as the uninterrupted one). `callbacks`: your own, after d2lft's (see
    :mod:`d2lft.engine.callbacks` for the events and their order).

    Everything is checked before any training starts. The data's class names and the
    image size travel with the net (:func:`d2lft.net_info`, then checkpoints and
    :func:`predict`). History records the options (`config`), per-epoch metrics, the
    book's examples/sec, wall seconds, peak host and device memory.
    """
    plan = plan_run(
        net,
        learning_rate,
        batch_size,
        num_epochs,
        param_group,
        data_dir=data_dir,
        image_size=image_size,
        devices=devices,
        seed=seed,
        pipeline=pipeline,
        run=run,
    )
    return train(net, plan, callbacks)


# ---------------------------------------------------------------- the two tabs' SGD


def equivalent_lr(
    learning_rate: float, *, batch_size: int, from_backend: str, to_backend: str
) -> float:
    """The learning rate that makes `to_backend`'s *gradient* step equal
    `from_backend`'s: torch_lr = mxnet_lr / batch_size.

    The MXNet tab averages the per-example losses over the batch
    (`trainer.step(batch_size)`); the PyTorch tab sums them (`l.sum().backward()`).
    Both engines multiply weight decay by the learning rate, so this alone leaves
    the decay term `batch_size` times weaker (or stronger): for whole SGD steps that
    agree, use :func:`equivalent_sgd`, which scales the weight decay too.
    """
    return equivalent_sgd(
        learning_rate, 0.0, batch_size=batch_size, from_backend=from_backend, to_backend=to_backend
    )[0]


def equivalent_sgd(
    learning_rate: float,
    weight_decay: float = BOOK_WEIGHT_DECAY,
    *,
    batch_size: int,
    from_backend: str,
    to_backend: str,
) -> tuple[float, float]:
    """`(learning_rate, weight_decay)` for `to_backend` that make its SGD step equal
    `from_backend`'s, batch for batch.

    Mean-reducing (MXNet): w -= lr_m * (mean_i g_i + wd_m * w); sum-reducing (torch):
    w -= lr_s * (sum_i g_i + wd_s * w). They agree when lr_s = lr_m / B and
    wd_s = wd_m * B (B = `batch_size`); the head's 10x multiplier scales both sides
    alike. A last, smaller batch of b < B examples breaks the match (the mean divides
    by b): use batch counts that divide the data, or drop the last batch. Example: the
    MXNet tab's (0.01, 0.001) at B=128 is torch's (7.8125e-05, 0.128).
    """
    learning_rate, batch_size, _, _ = check_args(learning_rate, batch_size, 1)
    weight_decay = RunSpec(weight_decay=weight_decay).weight_decay
    src = _registry.spec(from_backend).loss_reduction
    dst = _registry.spec(to_backend).loss_reduction
    if src == dst:
        return learning_rate, weight_decay
    if src == "mean":
        return learning_rate / batch_size, weight_decay * batch_size
    return learning_rate * batch_size, weight_decay / batch_size


def save_params(net: Net, path: PathLike, metadata: dict | None = None) -> pathlib.Path:
    """Write all of `net`'s parameters and BatchNorm statistics (either backend) to
    `path`: a safetensors file with canonical names and str->str `metadata` (arch,
    backend, format version added), written atomically. Returns the path.
    A file saved by one backend loads into the other (:func:`load_params`)."""
    return _weights.save_params(net, path, metadata)


def load_params(net: Net, path: PathLike) -> Net:
    """Set all of `net`'s parameters and BatchNorm statistics from `path`: a file from
    :func:`save_params` (either backend), a torch state_dict or a Gluon .params file.
    A missing, extra or misshapen parameter raises ValueError naming it, changing
    nothing. Returns `net`. (:func:`read_params` returns the arrays and metadata.)"""
    return _weights.load_params(net, path)
