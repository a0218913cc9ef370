"""A runner with known numbers, for tests of the epoch loop (`d2lft.engine.loop.fit`):
each epoch's train loss, train accuracy and test accuracy are given, and so are the
seconds its steps and its evaluation take (no framework is imported)."""

from __future__ import annotations

import time

from d2lft.engine.callbacks import CallbackList
from d2lft.engine.history import History
from d2lft.engine.loop import Runner, Step, fit

#: examples per training step, and steps per epoch
N, STEPS = 8, 2


class FakeRunner(Runner):
    """Epoch e reports train loss `losses[e]`, train accuracy `accs[e]` and test
    accuracy `test_accs[e]` (each step: N examples); each step counts `step_seconds`
    towards the book's examples/sec, `finish_seconds` more per epoch come from
    :meth:`finish_epoch`, and evaluation really sleeps `eval_sleep` seconds (wall clock
    that must not count as training)."""

    devices = ["fake:0"]

    def __init__(
        self, losses, accs, test_accs, step_seconds=0.25, finish_seconds=0.0, eval_sleep=0.0
    ):
        super().__init__()
        self.losses, self.accs, self.test_accs = losses, accs, test_accs
        self.step_seconds, self.finish_seconds = step_seconds, finish_seconds
        self.eval_sleep = eval_sleep
        self.num_batches = STEPS
        self.epoch = 0

    def set_epoch(self, epoch, seed):
        self.epoch = epoch

    def train_epoch(self, epoch):
        for _ in range(STEPS):
            yield Step(N, self.losses[epoch] * N, self.accs[epoch] * N, self.step_seconds)

    def finish_epoch(self):
        return self.finish_seconds

    def evaluate(self):
        time.sleep(self.eval_sleep)
        return round(self.test_accs[self.epoch] * 4096), 4096  # exact for k/4096


def run_fake(
    num_epochs,
    losses=None,
    accs=None,
    test_accs=None,
    callbacks=(),
    history=None,
    start_epoch=0,
    **runner,
) -> History:
    """`fit` over a FakeRunner (metrics default to constants); returns History."""
    losses = losses or [1.0] * num_epochs
    accs = accs or [0.5] * num_epochs
    test_accs = test_accs or [0.5] * num_epochs
    return fit(
        lambda: FakeRunner(losses, accs, test_accs, **runner),
        num_epochs=num_epochs,
        learning_rate=0.1,
        seed=0,
        seed_everything=lambda s: None,
        history=history or History(backend="fake", devices=[]),
        callbacks=CallbackList(callbacks),
        start_epoch=start_epoch,
    )
