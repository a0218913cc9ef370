"""The callbacks' promises: yours run after d2lft's own, so that `on_epoch_end` already
sees this epoch's checkpoint; every `on_train_end` runs (cleanups are never skipped),
even when an earlier one raises, and the first error is raised afterwards."""

from __future__ import annotations

import pytest
from fake_runner import run_fake

import d2lft
from d2lft.engine.callbacks import CallbackList, RunState


class Ends(d2lft.Callback):
    """Records its on_train_end in `log`; raises `error` there when given."""

    def __init__(self, log, name, error=None):
        self.log, self.name, self.error = log, name, error

    def on_train_end(self, state):
        self.log.append(self.name)
        if self.error is not None:
            raise self.error


def test_every_on_train_end_runs_when_earlier_ones_raise():
    log = []
    first, second = RuntimeError("first"), KeyboardInterrupt()
    callbacks = CallbackList(
        [Ends(log, "a", first), Ends(log, "b"), Ends(log, "c", second), Ends(log, "d")]
    )
    with pytest.raises(RuntimeError) as info:
        callbacks.on_train_end(RunState(history=d2lft.History("fake", []), num_epochs=1))
    assert log == ["a", "b", "c", "d"] and info.value is first


def test_the_loop_runs_every_cleanup_after_a_failing_one():
    """Through the loop: a callback whose on_train_end fails does not skip the next
    one's, and the run raises its error (not a silent success)."""
    log = []
    with pytest.raises(OSError, match="disk full"):
        run_fake(2, callbacks=[Ends(log, "a", OSError("disk full")), Ends(log, "b")])
    assert log == ["a", "b"]


def test_your_callbacks_see_this_epochs_checkpoint(toy_data, tmp_path, one_torch_thread):
    """d2lft's checkpointer runs before your callbacks: in your on_epoch_end the
    checkpoint on disk is this epoch's (its epoch number and its History's epochs)."""
    seen = []

    class Look(d2lft.Callback):
        def on_epoch_end(self, state):
            ck = d2lft.read_checkpoint(tmp_path / "ck")
            seen.append((state.epoch + 1, ck.epoch, ck.history.epochs))

    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False, seed=0)
        d2lft.train_fine_tuning(
            net,
            1e-4,
            16,
            2,
            data_dir=toy_data,
            image_size=16,
            seed=0,
            pipeline="book",
            run=d2lft.RunSpec(verbose=False, checkpoint_dir=tmp_path / "ck"),
            callbacks=[Look()],
        )
    assert seen == [(1, 1, 1), (2, 2, 2)]
