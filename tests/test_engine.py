"""The training engine: options checked once and recorded, one loop for every pipeline
and backend, its callbacks and their order, early stopping, SIGTERM, and the CLI's
flags built from the options."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import d2lft
from d2lft.engine import callbacks as cb
from d2lft.engine.options import PIPELINES, RunSpec, cli_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LR = {"torch": 1e-4, "mxnet": 0.01}


class Recorder(d2lft.Callback):
    """Every event, in order, with what the state said then."""

    def __init__(self, log, name="rec"):
        self.log, self.name = log, name

    def on_train_begin(self, state):
        self.log.append((self.name, "train_begin", len(state.history.train_loss)))

    def on_epoch_begin(self, state):
        self.log.append((self.name, "epoch_begin", state.epoch))

    def on_batch_end(self, state):
        self.log.append((self.name, "batch_end", state.epoch, state.batch))

    def on_epoch_end(self, state):
        self.log.append((self.name, "epoch_end", state.epoch, len(state.history.test_acc)))

    def on_train_end(self, state):
        self.log.append(
            (self.name, "train_end", type(state.error).__name__ if state.error else None)
        )


@pytest.mark.parametrize("pipeline", ["book", "fast", "fixed"])
def test_one_loop_drives_every_pipeline_with_the_documented_events(backend, toy_data, pipeline):
    log = []
    net = d2lft.build_finetune_net(pretrained=False, seed=0)
    h = d2lft.train_fine_tuning(
        net,
        LR[backend],
        16,
        2,
        data_dir=toy_data,
        image_size=32,
        seed=0,
        pipeline=pipeline,
        run=RunSpec(verbose=False),
        callbacks=[Recorder(log, "a"), Recorder(log, "b")],
    )
    assert h.epochs == 2 and h.completed and h.config["pipeline"] == pipeline
    a = [e for e in log if e[0] == "a"]
    batches = [("a", "batch_end", e, i) for e in range(2) for i in range(3)]
    assert a == [
        ("a", "train_begin", 0),
        ("a", "epoch_begin", 0),
        *batches[:3],
        ("a", "epoch_end", 0, 1),
        ("a", "epoch_begin", 1),
        *batches[3:],
        ("a", "epoch_end", 1, 2),
        ("a", "train_end", None),
    ]
    # callbacks run in the order given, event by event
    assert [e[0] for e in log[:2]] == ["a", "b"] and log[-2:][0][0] == "a"


def test_history_config_is_the_options_serialised(toy_data):
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        pipe = d2lft.FastPipeline(precision="fp32", decode_cache=None)
        run = RunSpec(verbose=False, weight_decay=0.002, seed=3)
        h = d2lft.train_fine_tuning(
            net, 1e-4, 16, 1, data_dir=toy_data, image_size=32, pipeline=pipe, run=run
        )
    c = h.config
    for f in dataclasses.fields(pipe):
        assert c[f.name] == getattr(pipe, f.name), f.name
    for f in dataclasses.fields(run):
        if f.name not in ("devices", "resume"):
            assert c[f.name] == getattr(run, f.name), f.name
    assert c["pipeline"] == "fast" and c["learning_rate"] == 1e-4 and c["batch_size"] == 16
    assert c["loss_reduction"] == "sum" and c["classes"] == ["hotdog", "not-hotdog"]
    assert c["trained_params"] == c["total_params"] > 10**6
    assert d2lft.History.from_json(h.to_json()).config == c  # JSON types only


def test_the_learning_rate_defaults_to_the_books(backend, toy_data):
    ft = d2lft.build_finetune_net(pretrained=False)
    plan = d2lft.plan_run(ft, data_dir=toy_data, image_size=32)
    assert plan.learning_rate == d2lft.BOOK_LEARNING_RATES[backend]["finetune"]
    scratch = d2lft.build_scratch_net()
    plan = d2lft.plan_run(scratch, data_dir=toy_data, image_size=32, param_group=False)
    assert plan.learning_rate == d2lft.BOOK_LEARNING_RATES[backend]["scratch"]


def test_early_stopping_ends_a_run_as_completed(toy_data):
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False, seed=0)
        stop = d2lft.EarlyStopping(monitor="train_loss", patience=1, min_delta=1e9)
        h = d2lft.train_fine_tuning(
            net,
            1e-4,
            16,
            5,
            data_dir=toy_data,
            image_size=32,
            seed=0,
            run=RunSpec(verbose=False),
            callbacks=[stop],
        )
    # epoch 1 sets the best; epoch 2 cannot improve by 1e9: stop after it
    assert h.epochs == 2 and h.completed
    assert "early stopping: train_loss has not improved" in h.stopped_reason
    with pytest.raises(ValueError, match="monitor must be"):
        d2lft.EarlyStopping(monitor="val_loss")
    with pytest.raises(ValueError, match="patience must be"):
        d2lft.EarlyStopping(patience=0)


def test_a_callback_error_still_runs_every_cleanup(toy_data):
    log = []

    class Boom(d2lft.Callback):
        def on_epoch_end(self, state):
            raise RuntimeError("a user's callback failed")

    from d2lft._sys import heap

    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        with pytest.raises(RuntimeError, match="user's callback failed"):
            d2lft.train_fine_tuning(
                net,
                1e-4,
                16,
                2,
                data_dir=toy_data,
                image_size=32,
                run=RunSpec(verbose=False),
                callbacks=[Boom(), Recorder(log)],
            )
    assert log[-1] == ("rec", "train_end", "RuntimeError")
    assert not heap.active()  # the heap retention callback restored malloc's defaults
    with pytest.raises(TypeError, match="is not a callback"):
        cb.CallbackList([object()])


def test_sigterm_keeps_history_and_the_last_checkpoint(tmp_path):
    """SIGTERM (a scheduler stopping the job) is handled like Ctrl-C: the run ends
    with History saved, the last complete checkpoint intact, exit status 130."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "d", n_train=24, n_test=4, size=(32, 32))
    script = textwrap.dedent(f"""
        import os, signal, sys
        import d2lft
        class Term(d2lft.Callback):
            def on_batch_end(self, state):
                if state.epoch == 1 and state.batch == 0:
                    os.kill(os.getpid(), signal.SIGTERM)
        d2lft.use("torch")
        net = d2lft.build_finetune_net(pretrained=False, seed=0)
        h = d2lft.train_fine_tuning(net, 1e-4, 16, 3, data_dir={str(data)!r}, image_size=32,
                                    run=d2lft.RunSpec(verbose=False,
                                                      checkpoint_dir={str(tmp_path / "ck")!r}),
                                    callbacks=[Term()])
        print(h.completed, h.stopped_reason, h.epochs)
        sys.exit(0 if h.completed else 130)
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), D2LFT_PROGRESS="0")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "terminated", "(SIGTERM)", "1"]
    assert d2lft.read_checkpoint(tmp_path / "ck").epoch == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process untouched


# ---------------------------------------------------------------- the CLI's flags


def _help(command):
    from d2lft import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command].format_help()


def test_cli_flags_come_from_the_options():
    text = _help("train")
    for cls in (*PIPELINES.values(), RunSpec):
        for f in cli_fields(cls):
            assert "--" + f.name.replace("_", "-") in text, f.name
    for flag in (
        "--pipeline",
        "--precision",
        "--freeze",
        "--compile",
        "--decode-cache",
        "--feature-passes",
        "--workers",
        "--weight-decay",
    ):
        assert flag in text and flag in _help("compare") and flag in _help("sweep")
    assert "(default: auto)" in text and "(default: 128)" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--precision", "bf16"],
            "--precision is an option of --pipeline fast, not of --pipeline auto",
        ),
        (
            ["--pipeline", "fixed", "--freeze"],
            "--freeze is an option of --pipeline auto, book or fast",
        ),
        (["--pipeline", "fast", "--feature-passes", "0", "--freeze"], "--feature-passes: "),
        (["--pipeline", "fast", "--feature-passes", "2"], "needs --freeze"),
        (["--pipeline", "book", "--workers", "-1"], "--workers: workers must be an integer >= 0"),
        (["--workers", "2"], "--workers is an option of --pipeline book, not of --pipeline auto"),
        (["--weight-decay", "-1"], "--weight-decay: weight_decay must be"),
        (["--val-fraction", "1.5"], "--val-fraction: val_fraction must be"),
    ],
)
def test_cli_option_errors_come_before_any_training(toy_data, monkeypatch, capsys, argv, message):
    from d2lft import api, cli

    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("training started"))
    code = cli.main(
        [
            "train",
            "--backend",
            "torch",
            "--pretrained",
            "none",
            "--data-dir",
            str(toy_data),
            "--out",
            "unused",
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_compare_checks_both_runs_before_training(toy_data, tmp_path, monkeypatch, capsys):
    """`compare --pretrained FILE` used to train the fine-tuning run for minutes, then
    fail on the scratch run; now both runs are built and checked first (and the source
    weights are the fine-tuning run's only)."""
    from d2lft import api, cli

    with d2lft.using("torch"):
        weights = d2lft.save_params(
            d2lft.build_finetune_net(pretrained=False), tmp_path / "w.safetensors"
        )
    trained = []

    class Stop(Exception):
        pass

    def fake_train(net, plan, *a):
        trained.append(plan)
        raise Stop

    monkeypatch.setattr(api, "train", fake_train)
    with pytest.raises(Stop):  # it gets as far as the first training
        cli.main(
            [
                "compare",
                "--backend",
                "torch",
                "--pretrained",
                str(weights),
                "--data-dir",
                str(toy_data),
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--pipeline",
                "fast",
                "--precision",
                "fp32",
                "--out",
                str(tmp_path / "c"),
            ]
        )
    assert len(trained) == 1 and trained[0].pipeline == d2lft.FastPipeline(precision="fp32")
    capsys.readouterr()
    # a problem with the second (scratch) run is found before the first one trains
    trained.clear()

    def bad_scratch(*a, **k):
        raise ValueError("the scratch run cannot be built")

    monkeypatch.setattr(api, "build_scratch_net", bad_scratch)
    code = cli.main(
        [
            "compare",
            "--backend",
            "torch",
            "--data-dir",
            str(toy_data),
            "--pretrained",
            "none",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "c2"),
        ]
    )
    assert code == 2 and trained == []
    assert "the scratch run cannot be built" in capsys.readouterr().err


def test_cli_trains_with_speed_options(toy_data, tmp_path, capsys):
    from d2lft import cli

    code = cli.main(
        [
            "train",
            "--backend",
            "torch",
            "--pretrained",
            "none",
            "--data-dir",
            str(toy_data),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--pipeline",
            "fast",
            "--precision",
            "fp32",
            "--freeze",
            "--feature-passes",
            "2",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    h = d2lft.History.from_json(tmp_path / "o" / "metrics.json")
    assert h.config["pipeline"] == "fast" and h.config["freeze"] is True
    assert h.config["feature_passes"] == 2 and h.config["precision_used"] == "fp32"
    assert h.trained_params == 512 * 2 + 2 and math.isfinite(h.train_loss[0])
    ck = d2lft.read_checkpoint(tmp_path / "o")
    assert ck.config["pipeline"] == "fast" and ck.config["seed"] == 0
