"""The reported speed is the book's figure: examples over the seconds of the training
steps (and the device work they queued), not the wall clock with evaluation, decoding
or setup. Checked with a runner whose step times are known and whose evaluation
really takes time (tests/fake_runner.py)."""

from __future__ import annotations

import io

import pytest
from fake_runner import STEPS, N, run_fake

from d2lft import History
from d2lft.engine.callbacks import BookPrinter


def test_examples_per_sec_counts_only_the_training_steps():
    # per epoch: 2 steps of 8 examples, 0.25 s each + 0.5 s finishing = 1 s for 16
    # examples; evaluation sleeps 0.2 s, which must not count
    h = run_fake(2, step_seconds=0.25, finish_seconds=0.5, eval_sleep=0.2)
    assert h.num_examples == 2 * N * STEPS == 32
    assert h.examples_per_sec == pytest.approx(16.0, rel=1e-12)
    assert h.wall_seconds >= 0.4  # the wall clock holds the evaluation
    out = io.StringIO()
    BookPrinter(out).on_train_end(type("S", (), {"history": h, "error": None, "num_epochs": 2}))
    assert out.getvalue().splitlines()[-1] == "16.0 examples/sec on [fake:0]"


def test_a_resumed_run_reports_the_speed_of_its_own_epochs():
    """History.num_examples counts the epochs from before the resume, but the speed
    is this run's: its examples over its steps' seconds."""
    done = History(backend="fake", devices=[])
    done.add_epoch(1.0, 0.5, 0.5)
    done.num_examples = 10_000  # as resume= leaves it: the checkpoint's epochs
    h = run_fake(3, history=done, start_epoch=1, step_seconds=0.5)
    assert h.epochs == 3 and h.num_examples == 10_000 + 2 * N * STEPS
    assert h.examples_per_sec == pytest.approx(N / 0.5, rel=1e-12)
