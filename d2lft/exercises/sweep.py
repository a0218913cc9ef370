"""The chapter's exercises 1 and 2: accuracy against learning rate, fine-tuning versus
training from scratch.

    rows = d2lft.lr_sweep([0.001, 0.01, 0.1], num_epochs=2, path='sweep.png')
    print(rows)            # a table; rows[i] is a dict

Backend-neutral: each run goes through d2lft's API under the active backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Sequence

from .._sys.atomic import atomic_write_text
from ..api import build_finetune_net, build_scratch_net, train_fine_tuning
from ..backends import _registry
from ..data import hub
from ..data.folders import check_image_folder
from ..data.split import resolve_images
from ..engine.loop import TrainingDiverged
from ..engine.options import Pipeline, RunSpec, check_args
from ..plot import plot_lr_sweep

MODES = ("finetune", "scratch")
COLUMNS = (
    "backend",
    "mode",
    "learning_rate",
    "epochs",
    "train_loss",
    "train_acc",
    "test_acc",
    "diverged",
    "seconds",
)


class SweepResult(list):
    """A list of row dicts (one per run, see :data:`COLUMNS`) that prints as a table.
    `histories[i]` is the :class:`d2lft.History` of run i (None when it diverged)."""

    def __init__(self, rows=(), histories=()):
        super().__init__(rows)
        self.histories = list(histories)

    def __str__(self):
        head = (
            f"{'backend':<7} {'mode':<9} {'lr':>9} {'epochs':>6} {'loss':>7} "
            f"{'train acc':>9} {'test acc':>8}  note"
        )
        lines = [head, "-" * len(head)]
        for r in self:

            def f(v, spec):
                return (
                    "-"
                    if v is None or (isinstance(v, float) and math.isnan(v))
                    else format(v, spec)
                )

            lines.append(
                f"{r['backend']:<7} {r['mode']:<9} {r['learning_rate']:>9.3g} "
                f"{r['epochs']:>6} {f(r['train_loss'], '7.4g'):>7} "
                f"{f(r['train_acc'], '9.3f'):>9} {f(r['test_acc'], '8.3f'):>8}  "
                f"{'diverged' if r['diverged'] else 'failed' if r.get('error') else ''}"
            )
        return "\n".join(lines)

    @property
    def failed(self) -> list:
        """The rows of runs that failed for a reason other than divergence (their
        'error' says why)."""
        return [r for r in self if r.get("error") and not r["diverged"]]

    def best(self, mode):
        """The row of `mode` with the highest test accuracy (None if all diverged)."""
        rows = [r for r in self if r["mode"] == mode and r["test_acc"] is not None]
        return max(rows, key=lambda r: r["test_acc"]) if rows else None

    def plot(self, path=None, metric="test_acc"):
        """Accuracy against learning rate (log scale), one line per mode."""
        return plot_lr_sweep(list(self), path=path, metric=metric)

    def to_json(self, path=None):
        text = json.dumps(
            [
                {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in r.items()
                }
                for r in self
            ],
            indent=2,
        )
        if path is not None:
            atomic_write_text(path, text)
        return text


def _plan(learning_rates, modes):
    if isinstance(modes, str):
        modes = (modes,)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; valid modes are {MODES}")
    if isinstance(learning_rates, dict):
        unknown = set(learning_rates) - set(MODES)
        if unknown:
            raise ValueError(
                f"unknown mode(s) {sorted(unknown)} in learning_rates; valid modes are {MODES}"
            )
        plan = [(m, lr) for m in modes if m in learning_rates for lr in learning_rates[m]]
    else:
        if isinstance(learning_rates, (int, float)):
            learning_rates = [learning_rates]
        plan = [(m, lr) for m in modes for lr in learning_rates]
    if not plan:
        raise ValueError("no run to do: give at least one learning rate for one mode")
    for _, lr in plan:
        check_args(lr, 1, 1)
    return plan


def lr_sweep(
    learning_rates: Sequence[float] | dict | float,
    *,
    modes: Sequence[str] | str = MODES,
    data_dir: str | os.PathLike | None = None,
    num_epochs: int = 5,
    batch_size: int = 128,
    image_size: int = 224,
    pretrained: bool | str | os.PathLike = True,
    arch: str | None = None,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    verbose: bool = False,
    pipeline: Pipeline | str | None = None,
    run: RunSpec | None = None,
) -> SweepResult:
    """Train one fresh network per (mode, learning rate) and tabulate the results.

    `learning_rates`: a list used for every mode, or ``{'finetune': [...], 'scratch':
    [...]}``. Mode 'finetune' is the chapter's `finetune_net` (pretrained features,
    10x head, `param_group=True`); 'scratch' is its `scratch_net` (`param_group=False`).
    `pretrained`: True (ImageNet), a weights file, or False. The number of classes is
    taken from the data. A run whose loss becomes NaN or infinite is recorded as
    diverged (accuracy None); a run that fails for another reason is recorded with
    its 'error' (see :attr:`SweepResult.failed`, with a warning) and the sweep goes on,
    so finished runs are never lost; Ctrl-C ends the sweep after the interrupted run's
    row. `path`: also draw accuracy against learning rate there
    (PNG). `pipeline` and `run` (a :class:`d2lft.RunSpec`; its seed defaults to `seed`,
    it never prints: `verbose` prints a table row per run) go to every
    :func:`d2lft.train_fine_tuning`. `seed` seeds each network's initialisation too,
    so a sweep repeats exactly.
    """
    plan = _plan(learning_rates, modes)
    run = RunSpec() if run is None else run
    run = dataclasses.replace(run, verbose=False, seed=seed if run.seed is None else run.seed)
    if data_dir is None:
        folder = hub.default_data()
    else:
        folder = resolve_images(data_dir, run.val_fraction)
    run = dataclasses.replace(run, val_fraction=None)  # `folder` is the split already
    num_classes = len(check_image_folder(folder / "train"))
    backend = _registry.get_backend()
    result = SweepResult()
    for mode, lr in plan:
        if mode == "finetune":  # each run starts from the same seeded initialisation
            net = build_finetune_net(num_classes, pretrained, arch, seed=run.seed)
        else:
            net = build_scratch_net(num_classes, arch, seed=run.seed)
        t0 = time.perf_counter()
        try:
            h = train_fine_tuning(
                net,
                lr,
                batch_size,
                num_epochs,
                param_group=(mode == "finetune"),
                data_dir=folder,
                image_size=image_size,
                pipeline=pipeline,
                run=run,
            )
            row = dict(
                train_loss=h.train_loss[-1] if h.epochs else None,
                train_acc=h.train_acc[-1] if h.epochs else None,
                test_acc=h.test_acc[-1] if h.epochs else None,
                epochs=h.epochs,
                diverged=False,
            )
        except Exception as err:  # diverged or failed: keep the finished rows, go on
            h = None
            diverged = isinstance(err, TrainingDiverged)
            row = dict(
                train_loss=None,
                train_acc=None,
                test_acc=None,
                epochs=0,
                diverged=diverged,
                error=str(err) if diverged else f"{type(err).__name__}: {err}",
            )
            if not diverged:
                warnings.warn(f"the {mode} run at lr {lr:g} failed ({row['error']})", stacklevel=2)
        row.update(
            backend=backend,
            mode=mode,
            learning_rate=float(lr),
            seconds=round(time.perf_counter() - t0, 2),
        )
        result.append(
            {k: row[k] for k in COLUMNS} | ({"error": row["error"]} if "error" in row else {})
        )
        result.histories.append(h)
        if verbose:
            print(str(result).splitlines()[-1], flush=True)
        if h is not None and not h.completed:  # Ctrl-C or SIGTERM: stop the sweep here
            break
    if path is not None:
        result.plot(path)
    return result
