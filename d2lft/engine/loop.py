"""The one epoch loop, shared by both backends and every pipeline.

The loop owns what every run needs: per-epoch reseeding (each epoch from
``(seed, epoch)`` alone, so a resumed run continues exactly), resuming (it starts at
the first epoch not done), Ctrl-C and SIGTERM (the run stops, History and the last
complete checkpoint are kept), timing (the book's examples/sec and the wall clock),
peak host and device memory, the divergence check, History, and the callbacks
(:mod:`d2lft.engine.callbacks`). A backend supplies a :class:`Runner` for each
pipeline (the book's loop or the fast pipeline, full or frozen): "run one epoch's
steps, evaluate". Like the book's `train_batch_ch13` / `train_ch13` split: the runner
is the batch step, this is the epoch loop.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .._sys.memory import HostPeak
from ..data.fixed import fixed_loaders
from .callbacks import CallbackList, RunState
from .history import History


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


class Step(NamedTuple):
    """One training step, as a runner reports it: `n` examples, their summed `loss`
    and number of `correct` predictions (Python numbers, or device scalars that the
    runner turns into numbers with :meth:`Runner.to_floats`), and the `seconds` it
    counts towards the book's examples/sec."""

    n: int
    loss: Any
    correct: Any
    seconds: float = 0.0


class Runner(abc.ABC):
    """One backend's way of running one pipeline on one network (a plan's).

    `sync_each`: its steps report host numbers (the loop checks each one as it
    comes); otherwise device scalars, read once per epoch. `num_batches`: batches
    per epoch, when known. `facts`: what the runner found while preparing (the
    precision used, the decode time, ...), added to `History.config`.
    """

    sync_each: bool = True
    num_batches: int | None = None
    devices: list = []
    trained_params: int = 0
    total_params: int = 0

    def __init__(self):
        self.facts: dict = {}

    @abc.abstractmethod
    def set_epoch(self, epoch: int, seed: int | None) -> None:
        """Seed this runner's own generators (loader, crop sampler) for `epoch` from
        `seed` (the epoch's, or None for an unseeded run)."""

    @abc.abstractmethod
    def train_epoch(self, epoch: int) -> Iterator[Step]:
        """Run one epoch's training steps, yielding each as it is done."""

    def finish_epoch(self) -> float:
        """Wait for queued device work; the seconds it took (counted as training)."""
        return 0.0

    @abc.abstractmethod
    def evaluate(self) -> tuple[int, int]:
        """``(correct, total)`` over this worker's test images after this epoch."""

    def to_floats(self, values: list) -> list[float]:
        """Host numbers from what the steps reported."""
        return [float(v) for v in values]

    def device_peak_mb(self) -> float:
        """Peak device memory of the run (MiB; NaN where unknown or on the CPU)."""
        return float("nan")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Give the network back as it was (memory layout, multipliers, gradients)."""


def book_batches(plan, make_loaders, convert, batches=None) -> tuple:
    """``(train_iter, test_iter)`` for the book's loop of either backend: `batches` when
    given (your own, see `train_on_batches`), the shared fixed batches for the
    `FixedBatches` pipeline (turned into the backend's arrays by `convert`), else the
    backend's `make_loaders` (the chapter's loaders)."""
    if batches is not None:
        return batches
    if plan.pipeline.name == "fixed":
        return fixed_loaders(
            plan.data_dir,
            plan.batch_size,
            plan.image_size,
            plan.run.seed,
            convert=convert,
            shard=(plan.world_size, plan.rank),
        )
    return make_loaders(
        plan.data_dir,
        plan.batch_size,
        plan.image_size,
        num_workers=plan.pipeline.workers,
        seed=plan.run.seed,
        shard=(plan.world_size, plan.rank),
    )


def set_fixed_epoch(train_iter, epoch: int) -> None:
    """`FixedBatches` draw their order from (seed, epoch): give them the epoch to run."""
    if hasattr(train_iter, "epoch"):
        train_iter.epoch = epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` of a run seeded with `seed`: epoch 0 uses `seed`
    itself, later epochs a value derived from both, so an epoch's shuffling and
    augmentation do not depend on the epochs before it (what makes `resume=` exact)."""
    if epoch == 0:
        return seed
    return int(hashlib.sha256(f"{seed}:{epoch}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def check_finite(batch_loss: float, epoch: int, batch: int, learning_rate) -> None:
    if not math.isfinite(batch_loss):
        raise TrainingDiverged(
            f"the loss became {batch_loss} in epoch {epoch + 1}, batch {batch + 1}: training "
            f"diverged at learning rate {learning_rate}. Try a lower learning rate (e.g. "
            f"{learning_rate / 10:g})."
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: handled like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread while the run lasts (so
    a scheduler's stop keeps History and the last checkpoint, as Ctrl-C does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def fit(
    make_runner: Callable[[], Runner],
    *,
    num_epochs: int,
    learning_rate: float,
    seed: int | None,
    seed_everything: Callable[[int], None],
    history: History,
    callbacks: CallbackList,
    net=None,
    start_epoch: int = 0,
    job=None,
) -> History:
    """Train: `make_runner()` prepares the data and the step (counted in the wall
    clock and the memory peak), then each epoch from `start_epoch` is seeded
    (`seed_everything` and the runner's own generators, from ``epoch_seed(seed,
    epoch)``), trained, checked for divergence, evaluated, recorded in `history` and
    reported to `callbacks`. With `job` (a :class:`d2lft.engine.dist.Job`), the
    epoch's counts are summed over its workers, so History is the job's on every rank.
    Returns `history`."""
    state = RunState(
        history=history, num_epochs=num_epochs, net=net, rank=0 if job is None else job.rank
    )
    memory = HostPeak().start()
    start = time.perf_counter()
    resumed_examples = history.num_examples
    train_time = 0.0
    runner = None
    with _sigterm_as_interrupt():
        try:
            callbacks.on_train_begin(state)
            runner = make_runner()
            history.devices = [str(d) for d in runner.devices]
            history.trained_params = runner.trained_params
            history.config.update(
                runner.facts,
                trained_params=runner.trained_params,
                total_params=runner.total_params,
            )
            state.num_batches = runner.num_batches
            for epoch in range(start_epoch, num_epochs):
                state.epoch = epoch
                s = None if seed is None else epoch_seed(seed, epoch)
                if s is not None:
                    seed_everything(s)
                runner.set_epoch(epoch, s)
                callbacks.on_epoch_begin(state)
                train_time += _train_epoch(runner, state, callbacks, learning_rate, job)
                callbacks.on_epoch_end(state)
                if state.stop_reason:
                    history.stopped_reason = state.stop_reason
                    break
        except KeyboardInterrupt as err:
            history.completed = False
            history.stopped_reason = (
                "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
            )
            state.error = err
        except BaseException as err:
            state.error = err
            raise
        finally:
            if runner is not None:
                runner.close()
            memory.stop()
            history.peak_host_mb = memory.peak_mb
            history.peak_device_mb = runner.device_peak_mb() if runner else float("nan")
            done = history.num_examples - resumed_examples
            history.examples_per_sec = done / train_time if train_time else float("nan")
            history.wall_seconds = time.perf_counter() - start
            callbacks.on_train_end(state)
    return history


def _train_epoch(
    runner: Runner, state: RunState, callbacks: CallbackList, learning_rate: float, job=None
) -> float:
    """One epoch's training steps and evaluation, recorded in History; returns the
    seconds that count as training."""
    epoch = state.epoch
    loss_sum, correct, n, seconds, pending = 0.0, 0, 0, 0.0, []
    for i, step in enumerate(runner.train_epoch(epoch)):
        loss_sum = step.loss + loss_sum
        correct = step.correct + correct
        n += step.n
        seconds += step.seconds
        state.batch = i
        if runner.sync_each:
            check_finite(float(step.loss), epoch, i, learning_rate)
            state.logs = {"loss": float(step.loss), "n": step.n}
        else:
            pending.append(step.loss)
        callbacks.on_batch_end(state)
    seconds += runner.finish_epoch()
    for i, value in enumerate(runner.to_floats(pending)):
        check_finite(value, epoch, i, learning_rate)
    loss_sum, correct = runner.to_floats([loss_sum, correct])
    test_correct, test_total = runner.evaluate()
    if job is not None:  # every worker's shard: the epoch's numbers are the job's
        loss_sum, correct, n, test_correct, test_total = job.all_reduce_sum(
            [loss_sum, correct, n, test_correct, test_total]
        )
        n, test_total = int(n), int(test_total)
    history = state.history
    history.num_examples += n
    history.add_epoch(loss_sum / max(n, 1), correct / max(n, 1), test_correct / max(test_total, 1))
    return seconds


__all__ = ["Runner", "Step", "Terminated", "TrainingDiverged", "check_finite", "epoch_seed", "fit"]
