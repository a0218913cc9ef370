"""Callbacks: what happens around the loop's epochs and batches (printing, progress
bars, live curves, checkpoints, memory settings, early stopping), and your own.

A callback is an object with any of these methods, each taking the loop's
:class:`RunState`; the loop calls them in this order::

    on_train_begin                 once, before the data is prepared
      on_epoch_begin               each epoch (after it was seeded)
        on_batch_end               after each training step
      on_epoch_end                 after the epoch's evaluation, once History has it
    on_train_end                   once, also after an error or Ctrl-C (state.error)

:func:`d2lft.train_fine_tuning` calls d2lft's own callbacks first, in this order:
:class:`HeapRetention`, :class:`ProgressBar`, :class:`LiveCurve`, the checkpointer
(:class:`d2lft.io.checkpoint.Checkpointer`), :class:`BookPrinter`; then yours
(``callbacks=[...]``), in the order given. A callback stops the run after the current
epoch by setting ``state.stop_reason`` (see :class:`EarlyStopping`); the run then
counts as completed, with the reason in ``History.stopped_reason``.

Keep a callback to observing and deciding; what it may change is ``state.stop_reason``
(and its own attributes). Learn from Keras (`fit` + `CallbackList`) and fastai (named
events), without their mazes of mutable attributes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from .._sys import heap
from ..plot import close, plot_history
from .history import History

EVENTS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


@dataclasses.dataclass
class RunState:
    """What callbacks see: the run's History (with its config), the epoch and batch
    being run (0-based), the number of batches per epoch when known, the network, and
    `stop_reason` (set it to stop after this epoch). `error` is the exception that
    ended the run, in `on_train_end`; `logs` holds the last batch's numbers when the
    runner has them on the host (`loss`: the batch's summed loss, `n`). `rank`: this
    worker's in a distributed run (0 otherwise); History is the same on every rank, so
    a callback that stops a distributed run must decide from it."""

    history: History
    num_epochs: int
    net: Any = None
    epoch: int = 0
    batch: int = 0
    num_batches: int | None = None
    stop_reason: str = ""
    error: BaseException | None = None
    rank: int = 0
    logs: dict = dataclasses.field(default_factory=dict)


class Callback:
    """Base class with every event doing nothing; override the ones you need."""

    def on_train_begin(self, state: RunState) -> None: ...
    def on_epoch_begin(self, state: RunState) -> None: ...
    def on_batch_end(self, state: RunState) -> None: ...
    def on_epoch_end(self, state: RunState) -> None: ...
    def on_train_end(self, state: RunState) -> None: ...


class CallbackList:
    """Callbacks called in order. Objects need not subclass :class:`Callback`: any
    object with some of the event methods works (a missing method is skipped)."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not any(callable(getattr(cb, e, None)) for e in EVENTS):
                raise TypeError(
                    f"{cb!r} is not a callback: it has none of the methods {', '.join(EVENTS)}"
                )

    def _call(self, event, state):
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(state)

    def on_train_begin(self, state):
        self._call("on_train_begin", state)

    def on_epoch_begin(self, state):
        self._call("on_epoch_begin", state)

    def on_batch_end(self, state):
        self._call("on_batch_end", state)

    def on_epoch_end(self, state):
        self._call("on_epoch_end", state)

    def on_train_end(self, state):
        """Every callback's `on_train_end` runs, even if one of them raises (the first
        error is raised afterwards): cleanups must not be skipped."""
        first = None
        for cb in self.callbacks:
            fn = getattr(cb, "on_train_end", None)
            if fn is None:
                continue
            try:
                fn(state)
            except BaseException as err:  # noqa: BLE001 - re-raised below
                first = first or err
        if first is not None:
            raise first


# ---------------------------------------------------------------- d2lft's own


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # pragma: no cover - a broken IPython
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_on() -> bool:
    """Whether training reports its progress at all: not when $D2LFT_PROGRESS is 0."""
    return os.environ.get("D2LFT_PROGRESS", "1") != "0"


def want_progress(stream=None) -> bool:
    """Training progress *bars*: off when $D2LFT_PROGRESS is 0, else on when the stream
    (stderr) is a terminal or we run in Jupyter (elsewhere :class:`ProgressBar` prints
    one line per epoch instead)."""
    if not progress_on():
        return False
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()


def _duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``1h 02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class BookPrinter(Callback):
    """The pipeline chosen and why (``pipeline: fast: ..``, where 'auto' or 'fast'
    chose), a line per epoch (``epoch 2/5: loss .., train acc .., test acc ..``, for
    runs of several epochs) and the book's two closing lines (``loss .., train acc ..,
    test acc ..`` / ``.. examples/sec on [..]``); ``test`` is the held-out split's
    name (``val acc`` for a val/ folder)."""

    def __init__(self, stream=None):
        self.stream = stream

    def on_train_begin(self, state):
        choice = state.history.config.get("pipeline_choice")
        if choice:  # the default pipeline says what it chose and why
            print(f"pipeline: {choice}", file=self.stream or sys.stdout, flush=True)

    def on_epoch_end(self, state):
        h = state.history
        if state.num_epochs > 1:
            print(
                f"epoch {state.epoch + 1}/{state.num_epochs}: loss {h.train_loss[-1]:.3f}, "
                f"train acc {h.train_acc[-1]:.3f}, {h.eval_split} acc {h.test_acc[-1]:.3f}",
                file=self.stream or sys.stdout,
                flush=True,
            )

    def on_train_end(self, state):
        if state.error is not None and not isinstance(state.error, KeyboardInterrupt):
            return
        out = self.stream or sys.stdout
        h = state.history
        if h.stopped_reason:
            print(f"stopped: {h.stopped_reason}", file=out)
        resumed = h.config.get("resumed_from")
        if resumed and h.epochs >= state.num_epochs and not math.isfinite(h.examples_per_sec):
            print(
                f"nothing to train: {resumed['path']} already holds all {h.epochs} "
                f"epoch(s) of this run (ask for more with a larger number of epochs); "
                f"its last epoch:",
                file=out,
            )
            print(h.summary_lines()[0], file=out, flush=True)
            return
        print(str(h), file=out, flush=True)


class ProgressBar(Callback):
    """Progress within each epoch. `bar=True` (on a terminal or in Jupyter, where
    :func:`want_progress` is true): a tqdm bar over the epoch's batches, shown as the
    epoch starts, with the rate and the time left. `bar=False` (a log file, a pipe):
    one line per epoch on `stream` (stderr), ``epoch 1/5 done in 9m 58s (48.2
    examples/s); about 39m 52s left``, so a log shows that the run goes on without
    a bar's carriage returns. Written where :func:`progress_on` allows."""

    def __init__(self, bar: bool = True, stream=None):
        self.bar = bar
        self.stream = stream
        self._bar = None
        self._epoch_start = 0.0
        self._done: list[float] = []  # seconds of each epoch run so far
        self._examples_before = 0

    def _open(self, state):
        stream = self.stream or sys.stderr
        # a terminal that reports no size (0x0, e.g. a pty under `script`) makes tqdm
        # draw nothing: give it the usual 80 columns instead
        cols, rows = shutil.get_terminal_size()
        self._bar = tqdm(
            total=state.num_batches,
            unit="batch",
            leave=False,
            file=stream,
            ncols=None if in_notebook() else cols,
            nrows=None if in_notebook() else rows,
            desc=f"epoch {state.epoch + 1}/{state.num_epochs}",
        )

    def on_epoch_begin(self, state):
        self._epoch_start = time.perf_counter()
        if self.bar:
            self._close()
            self._open(state)

    def on_batch_end(self, state):
        if not self.bar:
            return
        if self._bar is None:
            self._open(state)
        self._bar.update(1)

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, state):
        self._close()
        if self.bar:
            return
        seconds = time.perf_counter() - self._epoch_start
        self._done.append(seconds)
        n = state.history.num_examples - self._examples_before
        self._examples_before = state.history.num_examples
        left = state.num_epochs - state.epoch - 1
        mean = sum(self._done) / len(self._done)
        rate = f" ({n / seconds:.1f} examples/s)" if seconds > 0 and n > 0 else ""
        tail = f"; about {_duration(left * mean)} left" if left else ""
        print(
            f"epoch {state.epoch + 1}/{state.num_epochs} done in {_duration(seconds)}{rate}{tail}",
            file=self.stream or sys.stderr,
            flush=True,
        )

    def on_train_begin(self, state):
        self._examples_before = state.history.num_examples  # a resumed run's are done

    def on_train_end(self, state):
        self._close()


class LiveCurve(Callback):
    """In Jupyter, the learning curve redrawn after every epoch (as the book's
    Animator)."""

    def __init__(self):
        self._handle = None

    def on_epoch_end(self, state):
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython missing
            return
        fig = plot_history(state.history)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        close(fig)


class HeapRetention(Callback):
    """Keeps freed memory in the heap while the run trains (glibc; see
    :mod:`d2lft._sys.heap`), so CPU steps do not page-fault their activations in anew;
    malloc's defaults return at the end. Records ``config['retain_heap']``."""

    def __init__(self):
        self._ctx = None

    def on_train_begin(self, state):
        self._ctx = heap.retain()
        state.history.config["retain_heap"] = self._ctx.__enter__()

    def on_train_end(self, state):
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)


class EarlyStopping(Callback):
    """Stop when `monitor` ('test_acc', 'train_acc' or 'train_loss') has not improved
    by more than `min_delta` for `patience` epochs (``mode``: 'max' for accuracies,
    'min' for the loss; 'auto' picks). The run counts as completed; History says why
    it stopped."""

    def __init__(self, monitor="test_acc", patience=2, min_delta=0.0, mode="auto"):
        if monitor not in ("test_acc", "train_acc", "train_loss"):
            raise ValueError(
                f"monitor must be 'test_acc', 'train_acc' or 'train_loss', got {monitor!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        if mode == "auto":
            mode = "min" if monitor == "train_loss" else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0

    def on_train_begin(self, state):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        for value in getattr(state.history, self.monitor):  # epochs of a resumed run
            self._update(value)

    def _update(self, value) -> bool:
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return better

    def on_epoch_end(self, state):
        value = getattr(state.history, self.monitor)[-1]
        if not self._update(value) and self.wait >= self.patience:
            state.stop_reason = (
                f"early stopping: {self.monitor} has not improved on "
                f"{self.best:.4f} for {self.wait} epoch(s)"
            )


__all__ = [
    "EVENTS",
    "BookPrinter",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "HeapRetention",
    "LiveCurve",
    "ProgressBar",
    "RunState",
    "in_notebook",
    "progress_on",
    "want_progress",
]
