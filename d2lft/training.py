"""Backend-neutral pieces of a training run: argument checks, divergence, printing."""
from __future__ import annotations

import math
import numbers
import sys
import time


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def check_args(learning_rate, batch_size, num_epochs, image_size=224):
    """Check the training arguments; return them as (float, int, int, int).

    numpy scalars are accepted; bools, strings, NaN, infinities and out-of-range
    values raise ValueError saying what is allowed."""
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0 (the book uses 0.01 with "
                         f"MXNet, 5e-5 with PyTorch), got {learning_rate!r}")
    checked = [float(learning_rate)]
    for name, value, low in (("batch_size", batch_size, 1), ("num_epochs", num_epochs, 1),
                             ("image_size", image_size, 8)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        checked.append(int(value))
    return tuple(checked)


PIPELINES = ("book", "fast")
PRECISIONS = ("auto", "fp32", "bf16")


def check_speed_options(pipeline="book", freeze=False, precision="auto", feature_passes=1,
                        deterministic=False, compile=False):
    """Check `train_fine_tuning`'s speed options (see docs/speed.md)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if pipeline == "book" and precision == "bf16":
        raise ValueError("pipeline='book' is the chapter's fp32 loop; precision='bf16' needs "
                         "pipeline='fast'")
    if pipeline == "book" and compile:
        raise ValueError("compile=True needs pipeline='fast'")
    if isinstance(feature_passes, bool) or not isinstance(feature_passes, int) \
            or feature_passes < 1:
        raise ValueError(f"feature_passes must be an integer >= 1, got {feature_passes!r}")
    if deterministic and (pipeline == "fast" or freeze):
        raise ValueError("deterministic=True feeds its own fixed batches to the book's loop; "
                         "it cannot be combined with pipeline='fast' or freeze=True")


def end_epoch(history, report, epoch, loss_sum, correct, n, test_acc, *, net=None,
              checkpoint_dir=None, save=None):
    """Every training loop's epoch end: count the examples, record the epoch's mean
    loss, train and test accuracy in `history`, report it, then, with a
    `checkpoint_dir`, write the checkpoint of `net` with `save` (default
    `d2lft.checkpoint.save_checkpoint`, same signature)."""
    history.num_examples += n
    history.add_epoch(loss_sum / max(n, 1), correct / max(n, 1), test_acc)
    report.epoch(epoch)
    if checkpoint_dir is not None:
        if save is None:
            from .checkpoint import save_checkpoint as save
        save(net, checkpoint_dir, epoch=epoch + 1, history=history)


def finish_run(history, *, start, train_time, resumed_examples, memory, report):
    """Close a run: the book's examples/sec (examples over the seconds spent in
    training steps, this session only), wall-clock seconds, peak memory, and the
    book's closing lines."""
    history.examples_per_sec = ((history.num_examples - resumed_examples) / train_time
                                if train_time else float("nan"))
    history.wall_seconds = time.perf_counter() - start
    memory.finish(history)
    report.done()
    return history


def check_finite(batch_loss: float, epoch: int, batch: int, learning_rate):
    if not math.isfinite(batch_loss):
        raise TrainingDiverged(
            f"the loss became {batch_loss} in epoch {epoch + 1}, batch {batch + 1}: training "
            f"diverged at learning rate {learning_rate}. Try a lower learning rate (e.g. "
            f"{learning_rate / 10:g}).")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # pragma: no cover - a broken IPython
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def want_progress(stream=None) -> bool:
    """Training progress bars: off when $D2LFT_PROGRESS is 0, else on when the stream
    (stderr) is a terminal or we run in Jupyter."""
    import os
    if os.environ.get("D2LFT_PROGRESS", "1") == "0":
        return False
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()


class Reporter:
    """Prints a line per epoch and the book's two closing lines; shows a tqdm progress
    bar over each epoch's batches (see :func:`want_progress`) and, in Jupyter, a
    learning curve redrawn after every epoch (as the book's Animator)."""

    def __init__(self, history, num_epochs, verbose=True, stream=None, batches=None,
                 progress=None, live=None):
        self.history = history
        self.num_epochs = num_epochs
        self.verbose = verbose
        self.stream = stream or sys.stdout
        try:
            self.num_batches = len(batches) if batches is not None else None
        except TypeError:
            self.num_batches = None
        self.progress = (verbose and want_progress()) if progress is None else progress
        self.live = (verbose and in_notebook()) if live is None else live
        self._bar = None
        self._live_handle = None

    def batch(self, epoch, i):
        if not self.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.num_batches, unit="batch", leave=False,
                             desc=f"epoch {epoch + 1}/{self.num_epochs}")
        self._bar.update(1)

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _draw_live(self):
        try:
            from IPython.display import display
            from .plot import _pyplot, plot_history
        except ImportError:  # pragma: no cover - IPython missing
            return
        fig = plot_history(self.history)
        if self._live_handle is None:
            self._live_handle = display(fig, display_id=True)
        else:
            self._live_handle.update(fig)
        _pyplot().close(fig)

    def epoch(self, epoch):
        self._close_bar()
        if self.live and self.history.epochs:
            self._draw_live()
        if self.verbose and self.num_epochs > 1:
            h = self.history
            print(f"epoch {epoch + 1}/{self.num_epochs}: loss {h.train_loss[-1]:.3f}, "
                  f"train acc {h.train_acc[-1]:.3f}, test acc {h.test_acc[-1]:.3f}",
                  file=self.stream, flush=True)

    def done(self):
        self._close_bar()
        if self.verbose:
            if not self.history.completed:
                print(f"stopped: {self.history.stopped_reason}", file=self.stream)
            print(str(self.history), file=self.stream, flush=True)
