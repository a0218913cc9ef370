"""Backend-neutral pieces of a training run: argument checks, divergence, printing."""
from __future__ import annotations

import math
import sys


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def check_args(learning_rate, batch_size, num_epochs, image_size=224):
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("num_epochs", num_epochs, 1),
                             ("image_size", image_size, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_finite(batch_loss: float, epoch: int, batch: int, learning_rate):
    if not math.isfinite(batch_loss):
        raise TrainingDiverged(
            f"the loss became {batch_loss} in epoch {epoch + 1}, batch {batch + 1}: training "
            f"diverged at learning rate {learning_rate}. Try a lower learning rate (e.g. "
            f"{learning_rate / 10:g}).")


class Reporter:
    """Prints a line per epoch and the book's two closing lines."""

    def __init__(self, history, num_epochs, verbose=True, stream=None):
        self.history = history
        self.num_epochs = num_epochs
        self.verbose = verbose
        self.stream = stream or sys.stdout

    def batch(self, epoch, i):
        pass

    def epoch(self, epoch):
        if self.verbose and self.num_epochs > 1:
            h = self.history
            print(f"epoch {epoch + 1}/{self.num_epochs}: loss {h.train_loss[-1]:.3f}, "
                  f"train acc {h.train_acc[-1]:.3f}, test acc {h.test_acc[-1]:.3f}",
                  file=self.stream, flush=True)

    def done(self):
        if self.verbose:
            if not self.history.completed:
                print(f"stopped: {self.history.stopped_reason}", file=self.stream)
            print(str(self.history), file=self.stream, flush=True)
