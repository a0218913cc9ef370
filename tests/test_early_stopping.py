"""EarlyStopping as documented: 'auto' watches a loss for a minimum and an accuracy for
a maximum, `min_delta` is the least change that counts as an improvement in both
modes, and a resumed run stops where the uninterrupted one would (the callback
replays the epochs the checkpoint holds). Run on the real loop with a runner whose
numbers are known (tests/fake_runner.py)."""

from __future__ import annotations

import pytest
from conftest import make_image_folder
from fake_runner import STEPS, N, run_fake

import d2lft
from d2lft import EarlyStopping, History

UP = [0.5, 0.625, 0.75, 0.875, 0.9375, 0.96875]  # dyadic: exact steps
DOWN = [2.0, 1.5, 1.0, 0.5, 0.25, 0.125]


def stop_epoch(h: History) -> int:
    """The number of epochs the run did (len(UP) when it did not stop early)."""
    return h.epochs


@pytest.mark.parametrize(
    "monitor, values",
    [("train_loss", DOWN), ("train_acc", UP), ("test_acc", UP)],
)
def test_auto_mode_follows_what_improves(monitor, values):
    """A loss that falls and an accuracy that rises improve every epoch: never stopped."""
    kw = {"losses": DOWN, "accs": UP, "test_accs": UP}
    stop = EarlyStopping(monitor=monitor, patience=1)
    h = run_fake(len(values), callbacks=[stop], **kw)
    assert stop_epoch(h) == len(values) and h.stopped_reason == "" and h.completed


@pytest.mark.parametrize(
    "monitor, kw",
    [
        ("train_loss", {"losses": UP}),  # a loss that rises
        ("train_acc", {"accs": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]}),
        ("test_acc", {"test_accs": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]}),  # accuracies that fall
    ],
)
def test_auto_mode_stops_what_gets_worse(monitor, kw):
    """Epoch 1 sets the best; with patience 2, epochs 2 and 3 worse: stop after 3."""
    h = run_fake(6, callbacks=[EarlyStopping(monitor=monitor, patience=2)], **kw)
    assert stop_epoch(h) == 3 and h.completed
    assert h.stopped_reason.startswith(f"early stopping: {monitor} has not improved")


@pytest.mark.parametrize("monitor, mode", [("train_loss", "max"), ("test_acc", "min")])
def test_explicit_mode_overrides_auto(monitor, mode):
    """mode='max' on a falling loss (or 'min' on a rising accuracy): every epoch is
    worse by that mode's measure, so patience 1 stops after epoch 2."""
    h = run_fake(6, losses=DOWN, test_accs=UP, callbacks=[EarlyStopping(monitor, 1, mode=mode)])
    assert stop_epoch(h) == 2


@pytest.mark.parametrize(
    "monitor, kw",
    [
        ("test_acc", {"test_accs": [0.5, 0.5625, 0.625, 0.6875, 0.75, 0.8125]}),  # +1/16
        ("train_loss", {"losses": [2.0, 1.9375, 1.875, 1.8125, 1.75, 1.6875]}),  # -1/16
    ],
)
def test_min_delta_counts_in_both_modes(monitor, kw):
    """Steps of 1/16: each epoch improves with min_delta 0 or 1/32; with 1/16 none
    does (an improvement must be larger than min_delta), so patience 1 stops after
    epoch 2; with 1/8, two steps together are no improvement either."""
    for min_delta, patience, epochs in (
        (0.0, 1, 6),
        (1 / 32, 1, 6),
        (1 / 16, 1, 2),
        (1 / 8, 2, 3),
    ):
        stop = EarlyStopping(monitor=monitor, patience=patience, min_delta=min_delta)
        h = run_fake(6, callbacks=[stop], **kw)
        assert stop_epoch(h) == epochs, (monitor, min_delta)


@pytest.mark.parametrize("resume_after", [1, 3, 4])
def test_a_resumed_run_stops_where_the_uninterrupted_one_does(resume_after):
    """The uninterrupted run improves twice, then stalls: patience 3 stops it after
    epoch 6. Resumed after epoch 1, 3 or 4 (History holding those epochs, as
    `resume=` fills it; after 4 the stall has begun), a fresh EarlyStopping stops
    after epoch 6 too, saying the same."""
    accs = [0.5, 0.75, 0.875, 0.8125, 0.8125, 0.8125, 0.8125, 0.8125]
    whole = run_fake(8, test_accs=accs, callbacks=[EarlyStopping(patience=3)])
    assert whole.epochs == 6
    done = History(backend="fake", devices=[])
    for e in range(resume_after):
        done.add_epoch(1.0, 0.5, accs[e])
    done.num_examples = resume_after * N * STEPS
    resumed = run_fake(
        8,
        test_accs=accs,
        callbacks=[EarlyStopping(patience=3)],
        history=done,
        start_epoch=resume_after,
    )
    assert resumed.epochs == 6 and resumed.test_acc == whole.test_acc
    assert resumed.stopped_reason == whole.stopped_reason != ""
    assert resumed.num_examples == whole.num_examples


def test_one_instance_can_watch_two_runs():
    """on_train_begin starts afresh: a second run does not inherit the first's best."""
    stop = EarlyStopping(monitor="test_acc", patience=1)
    assert run_fake(3, test_accs=[0.9, 0.8, 0.7], callbacks=[stop]).epochs == 2
    assert run_fake(3, test_accs=[0.1, 0.2, 0.3], callbacks=[stop]).epochs == 3


def test_a_run_resumed_from_its_checkpoint_stops_at_the_same_epoch(tmp_path, one_torch_thread):
    """End to end: no loss can improve by 1e9, so patience 2 stops after epoch 3. The
    same run stopped by Ctrl-C in epoch 3 and resumed from its checkpoint with a fresh
    EarlyStopping stops after epoch 3 too (epochs 1-2 replayed), not after epoch 5."""
    data = make_image_folder(tmp_path / "d", 4, 2, size=(16, 16))

    class CtrlC(d2lft.Callback):
        def on_batch_end(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    def run(callbacks, **spec):
        with d2lft.using("torch"):
            net = d2lft.build_finetune_net(pretrained=False, seed=0)
            return d2lft.train_fine_tuning(
                net, 1e-4, 4, 6, data_dir=data, image_size=16, seed=0, pipeline="book",
                run=d2lft.RunSpec(verbose=False, **spec), callbacks=callbacks,
            )  # fmt: skip

    def stop():
        return EarlyStopping(monitor="train_loss", patience=2, min_delta=1e9)

    whole = run([stop()])
    assert whole.epochs == 3 and whole.completed
    cut = run([stop(), CtrlC()], checkpoint_dir=tmp_path / "ck")
    assert cut.epochs == 2 and not cut.completed
    resumed = run([stop()], resume=tmp_path / "ck")
    assert resumed.epochs == 3 and resumed.stopped_reason == whole.stopped_reason
