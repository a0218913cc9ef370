"""Training options as typed, frozen dataclasses, checked once when they are built.

A run of :func:`d2lft.train_fine_tuning` is the chapter's call (learning rate, batch
size, epochs, param_group; data_dir, image_size, devices, seed) plus two option
objects:

- the **pipeline**, how batches are made and computed, one of
  :class:`AutoPipeline` (the default: the fast pipeline where it fits, else the
  book's loop), :class:`BookLoop` (the chapter's loop), :class:`FastPipeline` (decode
  once, crop in batches, bf16, compile) and :class:`FixedBatches` (deterministic
  batches that both backends see identically, for parity checks). Options that
  belong to one pipeline exist only on it, so ``precision`` with the book's loop or
  freezing with fixed batches cannot be written down;
- the :class:`RunSpec`, how the run is carried out and recorded: devices, seed,
  the held-out fraction of one folder of classes, the SGD weight decay, printing,
  checkpoints and resuming.

Every field carries its help text; the ``d2lft`` command builds its flags from these
fields (`d2lft.cli`), so the CLI and the API accept the same values with the same
checks. :class:`TrainPlan` is a run resolved (data folder, classes, backend), and its
:meth:`TrainPlan.config` is what `History.config` records.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import pathlib
from typing import Any, ClassVar, Literal

Precision = Literal["auto", "fp32", "bf16"]
Augment = Literal["auto", "pil", "roi_align"]

#: the chapter's SGD weight decay (both tabs)
BOOK_WEIGHT_DECAY = 0.001
#: the largest crop size accepted (a 4096 px batch of 1 needs ~1 GB of activations)
MAX_IMAGE_SIZE = 4096
MIN_IMAGE_SIZE = 8
#: the largest learning rate and weight decay accepted: the frameworks compute in
#: float32 (at most ~3.4e38), and the head's 10x multiplier must stay finite
MAX_RATE = 1e30
MAX_RATE_TEXT = "1e30"


def option(default, help: str, **cli):
    """A dataclass field with its help text (and optional CLI hints: `metavar`,
    `flag`)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_int(name, value, low, *, none=False, high=None):
    if value is None and none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
        or (high is not None and value > high)
    ):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(
            f"{name} must be an integer {rng}{' or None' if none else ''}, got {value!r}"
        )


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------- pipelines


@dataclasses.dataclass(frozen=True)
class BookLoop:
    """The chapter's own loop: its loaders decode and augment every image in every
    epoch (RandomResizedCrop + flip; resize and center crop for testing), fp32."""

    name: ClassVar[str] = "book"
    freeze: bool = option(
        False,
        "exercise 3: train only the new head, the backbone in "
        "eval mode (BatchNorm statistics fixed)",
    )
    workers: int | None = option(
        None,
        "data loader processes; none: automatic (0 on a 2-core machine, else up to 8)",
        metavar="N",
    )

    def __post_init__(self):
        _check_bool("freeze", self.freeze)
        _check_int("workers", self.workers, 0, none=True)


@dataclasses.dataclass(frozen=True)
class FastPipeline:
    """The same computation, faster (docs/speed.md): every image decoded once, the
    book's crops drawn per sample and resized in batches, the book's exact test
    batches, channels_last and bf16 where the hardware has it (torch), one host sync
    per epoch on a GPU. With `freeze`, the backbone's features are computed once for
    the test set and `feature_passes` times (augmented passes, reused in turn) for the
    training set."""

    name: ClassVar[str] = "fast"
    freeze: bool = option(
        False, "exercise 3: train only the new head on features computed once per pass"
    )
    precision: Precision = option(
        "auto", "auto: bf16 on CUDA and on CPUs with bf16 units, fp32 elsewhere (MXNet: fp32)"
    )
    compile: bool = option(False, "torch.compile the network (torch only)")
    decode_cache: str | None = option(
        "memory",
        "where decoded images are kept: memory "
        "(this process), disk ($D2LFT_HOME/decoded), "
        "a folder, or none",
        metavar="WHERE",
    )
    feature_passes: int = option(
        1,
        "with --freeze: augmented feature passes over the training set, reused in turn",
        metavar="N",
    )
    augment: Augment = option("auto", "crop resampler (torch): pil on the CPU, roi_align on CUDA")
    memory_budget_mb: int | None = option(
        None,
        "decoded images kept in memory up to this many MiB (default: a quarter of the "
        "memory available); beyond it they are kept on disk and read per batch",
        metavar="MB",
    )

    def __post_init__(self):
        _check_bool("freeze", self.freeze)
        _check_bool("compile", self.compile)
        _check_int("memory_budget_mb", self.memory_budget_mb, 1, none=True)
        _check_choice("precision", self.precision, Precision.__args__)
        _check_choice("augment", self.augment, Augment.__args__)
        _check_int("feature_passes", self.feature_passes, 1)
        if self.feature_passes != 1 and not self.freeze:
            raise ValueError(
                "feature_passes counts the frozen backbone's feature passes: it needs freeze=True"
            )
        cache = self.decode_cache
        if isinstance(cache, str) and cache.lower() in ("none", ""):
            object.__setattr__(self, "decode_cache", None)
        elif cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(
                f"decode_cache must be 'memory', 'disk', a folder or None, got {cache!r}"
            )
        elif isinstance(cache, os.PathLike):
            object.__setattr__(self, "decode_cache", os.fspath(cache))


@dataclasses.dataclass(frozen=True)
class AutoPipeline:
    """The default: the fast pipeline wherever it fits, else the book's loop. The fast
    pipeline was faster on every machine measured (CPUs of both backends, CUDA); it is
    chosen when its decoded images fit `memory_budget_mb` (default: a quarter of the
    memory available), or else fit on the disk (then they are read from there per
    batch); otherwise the book's loop runs, which decodes every image anew. The choice
    and its reason are recorded in ``History.config['pipeline_choice']``."""

    name: ClassVar[str] = "auto"
    freeze: bool = option(False, "exercise 3: train only the new head")
    memory_budget_mb: int | None = option(
        None, "decoded images kept in memory up to this many MiB", metavar="MB"
    )

    def __post_init__(self):
        _check_bool("freeze", self.freeze)
        _check_int("memory_budget_mb", self.memory_budget_mb, 1, none=True)


@dataclasses.dataclass(frozen=True)
class FixedBatches:
    """Deterministic batches that both backends see bit for bit: no augmentation
    (training images get the test transform), one shared PIL decode-resize-crop, and a
    shuffle order drawn by numpy from the seed (default 0). With the same weights and
    :func:`d2lft.equivalent_sgd` settings the two engines' loss curves agree step by
    step (docs/parity.md)."""

    name: ClassVar[str] = "fixed"


Pipeline = AutoPipeline | BookLoop | FastPipeline | FixedBatches
PIPELINES: dict[str, type] = {
    c.name: c for c in (AutoPipeline, BookLoop, FastPipeline, FixedBatches)
}


def pipeline_from(value: Pipeline | str | None) -> Pipeline:
    """A pipeline object from an object or a name ('auto', 'book', 'fast', 'fixed');
    None is 'auto' (the default)."""
    if value is None:
        return AutoPipeline()
    if isinstance(value, str):
        if value not in PIPELINES:
            raise ValueError(
                f"pipeline must be one of {', '.join(map(repr, PIPELINES))} or an "
                f"option object (d2lft.AutoPipeline(), d2lft.BookLoop(), "
                f"d2lft.FastPipeline(...), d2lft.FixedBatches()), got {value!r}"
            )
        return PIPELINES[value]()
    if isinstance(value, tuple(PIPELINES.values())):
        return value
    raise TypeError(
        f"pipeline must be d2lft.AutoPipeline(...), d2lft.BookLoop(...), "
        f"d2lft.FastPipeline(...), d2lft.FixedBatches() or one of their names, got "
        f"{type(value).__name__}"
    )


# ---------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """How a run is carried out and recorded.

    `devices`: default all GPUs, else the CPU. `seed`: repeatable shuffling and
    augmentation, each epoch seeded from (seed, epoch) so that `resume` continues
    exactly (the initial weights are the builder's: its own `seed=`). `val_fraction`:
    `data_dir` is ONE folder of class subfolders; hold out this fraction of each class
    as the test split (deterministic). `weight_decay`: SGD's, the book's 0.001.
    `verbose`: print the book's lines (and progress bars on a terminal).
    `checkpoint_dir`: write a checkpoint there after every epoch (atomically); the run
    owns that folder while it runs (another run into it meanwhile raises
    BlockingIOError naming this one).
    `resume`: a checkpoint file or folder to continue from (True: `checkpoint_dir`).
    """

    devices: tuple | None = option(None, "devices (default all GPUs, else the CPU)", cli=False)
    seed: int | None = option(
        None, "repeatable initialisation, shuffling and augmentation", metavar="N"
    )
    val_fraction: float | None = option(
        None,
        "--data-dir is ONE folder of class subfolders: "
        "hold out this fraction of each class as the "
        "test split (deterministic)",
        metavar="F",
    )
    weight_decay: float = option(
        BOOK_WEIGHT_DECAY, "SGD weight decay (the book's 0.001)", metavar="WD"
    )
    verbose: bool = option(True, "print the book's lines", cli=False)
    checkpoint_dir: str | None = option(
        None, "write a checkpoint there after every epoch", cli=False, flag="--out"
    )
    resume: str | bool | None = option(None, "a checkpoint to continue from", cli=False)
    dist_timeout: float = option(
        300.0,
        "distributed runs: seconds a worker waits for a lost one before the job fails",
        metavar="S",
    )

    def __post_init__(self):
        if self.devices is not None:
            if isinstance(self.devices, (str, bytes)):
                devices = (self.devices,)
            else:
                try:
                    devices = tuple(self.devices)
                except TypeError:
                    raise ValueError(
                        f"devices must be a list of devices (e.g. ['cpu'] or [0, 1]) or "
                        f"None (all GPUs, else the CPU), got {self.devices!r}"
                    ) from None
            if not devices:
                raise ValueError(
                    "devices must name at least one device, or be None (all GPUs, else the CPU)"
                )
            object.__setattr__(self, "devices", devices)
        _check_int("seed", self.seed, 0, none=True)
        if self.val_fraction is not None:
            v = self.val_fraction
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < 1:
                raise ValueError(
                    f"val_fraction must be a number between 0 and 1 "
                    f"(exclusive), e.g. 0.2, got {v!r}"
                )
            object.__setattr__(self, "val_fraction", float(v))
        wd = self.weight_decay
        if (
            isinstance(wd, bool)
            or not isinstance(wd, numbers.Real)
            or not math.isfinite(wd)
            or wd < 0
            or wd > MAX_RATE
        ):
            raise ValueError(
                f"weight_decay must be a finite number >= 0 and at most {MAX_RATE_TEXT} (the "
                f"book uses {BOOK_WEIGHT_DECAY}), got {wd!r}"
            )
        object.__setattr__(self, "weight_decay", float(wd))
        _check_bool("verbose", self.verbose)
        for name in ("checkpoint_dir", "resume"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, (str, bool)):
                raise ValueError(f"{name} must be a path or None, got {value!r}")
        if self.checkpoint_dir is False or self.checkpoint_dir is True:
            raise ValueError("checkpoint_dir must be a folder path or None")
        if self.resume is True and self.checkpoint_dir is None:
            raise ValueError("resume=True continues from checkpoint_dir=, which is not set")
        if self.resume is False:
            object.__setattr__(self, "resume", None)
        t = self.dist_timeout
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 1 <= t <= 86400:
            raise ValueError(
                f"dist_timeout must be a number of seconds between 1 and 86400, got {t!r}"
            )
        object.__setattr__(self, "dist_timeout", float(t))

    @property
    def resume_from(self) -> str | None:
        """The checkpoint to resume from (`checkpoint_dir` for resume=True)."""
        return self.checkpoint_dir if self.resume is True else self.resume


# ---------------------------------------------------------------- the chapter's arguments


def check_args(learning_rate, batch_size, num_epochs, image_size=224):
    """Check the chapter's arguments; return them as (float, int, int, int).

    numpy scalars are accepted; bools, strings, NaN, infinities and out-of-range
    values raise ValueError saying what is allowed."""
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not math.isfinite(learning_rate)
        or learning_rate <= 0
        or learning_rate > MAX_RATE
    ):
        raise ValueError(
            f"learning_rate must be a finite number > 0 and at most {MAX_RATE_TEXT} (the "
            f"book uses 0.01 with MXNet, 5e-5 with PyTorch), got {learning_rate!r}"
        )
    _check_int("batch_size", batch_size, 1)
    _check_int("num_epochs", num_epochs, 1)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
    return float(learning_rate), int(batch_size), int(num_epochs), int(image_size)


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """One run, resolved and checked: what :func:`d2lft.train_fine_tuning` hands to a
    backend's `make_runner` and to the loop."""

    backend: str
    loss_reduction: str
    learning_rate: float
    batch_size: int
    num_epochs: int
    param_group: bool
    image_size: int
    data_dir: pathlib.Path
    classes: tuple[str, ...]
    pipeline: Pipeline
    run: RunSpec
    #: the data-parallel job this worker belongs to (`d2lft.engine.dist.Job`), if any
    job: Any = dataclasses.field(default=None, compare=False, repr=False)
    #: why this pipeline runs (the 'auto' choice and its reason), for History.config
    pipeline_choice: str = ""
    #: the fast pipeline keeps its decoded images on disk (they exceed its budget)
    store_on_disk: bool = False
    #: the held-out split folder the run is evaluated on ('test', 'val' or 'valid':
    #: the first of them that the data folder has, see `d2lft.data.folders`)
    eval_split: str = "test"
    #: what the user gave as data_dir (a folder or a .zip), absolute, so that a
    #: checkpoint's record resolves from any working directory; None: the hotdog data
    data_source: str | None = None

    @property
    def world_size(self) -> int:
        return self.job.world_size if self.job is not None else 1

    @property
    def rank(self) -> int:
        return self.job.rank if self.job is not None else 0

    @property
    def freeze(self) -> bool:
        return bool(getattr(self.pipeline, "freeze", False))

    def config(self) -> dict[str, Any]:
        """The options, serialised (JSON types): `History.config` starts as this."""
        pipeline = {
            f.name: getattr(self.pipeline, f.name) for f in dataclasses.fields(self.pipeline)
        }
        run = {f.name: getattr(self.run, f.name) for f in dataclasses.fields(self.run)}
        run["devices"] = None if self.run.devices is None else [str(d) for d in self.run.devices]
        run["resume"] = self.run.resume_from
        return {
            "backend": self.backend,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
            "param_group": self.param_group,
            "image_size": self.image_size,
            "data_dir": str(self.data_dir),
            "eval_split": self.eval_split,
            "data_source": self.data_source,
            "classes": list(self.classes),
            "loss_reduction": self.loss_reduction,
            "pipeline": self.pipeline.name,
            "deterministic": self.pipeline.name == "fixed",
            "freeze": self.freeze,
            **{k: v for k, v in pipeline.items() if k != "freeze"},
            **run,
            "pipeline_choice": self.pipeline_choice,
            "store_on_disk": self.store_on_disk,
            "world_size": self.world_size,
            "dist_engine": self.job.engine if self.job is not None else None,
        }


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of an option class that the ``d2lft`` command exposes as flags."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


__all__ = [
    "BOOK_WEIGHT_DECAY",
    "MAX_IMAGE_SIZE",
    "MAX_RATE",
    "MAX_RATE_TEXT",
    "MIN_IMAGE_SIZE",
    "PIPELINES",
    "Augment",
    "BookLoop",
    "FastPipeline",
    "FixedBatches",
    "Pipeline",
    "Precision",
    "RunSpec",
    "TrainPlan",
    "check_args",
    "cli_fields",
    "option",
    "pipeline_from",
]
