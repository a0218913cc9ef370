"""A newcomer's first commands: offline, every command and example prints the advice
alone (no traceback, exit status 2); the command's errors name its flags, not Python
arguments; --help shows every default; `info --json` is pure JSON; resuming a finished
run says so."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import d2lft
from d2lft import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
#: Python argument names the command must not show (its flags do the same)
PY_ARGS = re.compile(
    r"(?<![\w/.-])(url|sha1|root|pretrained|source_classes|classes|val_fraction|split|"
    r"skip_bad|arch|image_size|batch_size|num_epochs|learning_rate|data_dir)="
)
#: a proxy where nothing listens: every download fails at once, as offline
OFFLINE = {
    k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(n_train=4, n_test=2)  # conftest's `tiny`


def offline_env(tmp_path):
    env = dict(os.environ, **OFFLINE, D2LFT_PROGRESS="0", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env.update(
        D2LFT_HOME=str(tmp_path / "home"),
        TORCH_HOME=str(tmp_path / "torch"),
        MXNET_HOME=str(tmp_path / "mxnet"),
        PYTHONPATH=str(REPO),
        no_proxy="",
        NO_PROXY="",
    )
    for k in ("D2LFT_BACKEND", "D2LFT_DEBUG", "D2LFT_DATA_URL", "MXNET_GLUON_REPO"):
        env.pop(k, None)
    return env


def assert_advice_alone(proc, prog, *needles):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    # one line of progress ("Downloading ...") at most, then the message
    assert 1 <= len(err) <= 2, proc.stderr
    assert err[-1].startswith(f"{prog}: error: could not download"), err[-1]
    assert "To work offline, download" in err[-1]
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    assert not PY_ARGS.search(err[-1]), err[-1]
    return err[-1]


def test_the_chapter_examples_offline(tmp_path, tiny):
    env = offline_env(tmp_path)
    py = sys.executable
    proc = subprocess.run(
        [py, "examples/finetune_torch.py", "--epochs", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = assert_advice_alone(proc, "finetune_torch.py", "hotdog.zip", "--data-url URL")
    assert f"place it at {tmp_path / 'home' / 'hotdog.zip'}" in text
    proc = subprocess.run(
        [py, "examples/finetune_mxnet.py", "--data-dir", str(tiny), "--epochs", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = assert_advice_alone(proc, "finetune_mxnet.py", "resnet18_v2-a81db45f.params")
    assert "--pretrained PATH" in text and str(tmp_path / "mxnet" / "models") in text


def test_the_command_offline_without_imagenet_weights(tmp_path, tiny):
    env = offline_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "d2lft", "train", "--data-dir", str(tiny), "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = assert_advice_alone(proc, "d2lft train", "ImageNet ResNet-18 weights")
    assert "resnet18-f37072fd.pth" in text and "--pretrained PATH" in text
    assert "--pretrained none" in text


@pytest.fixture
def run_dir(tmp_path, tiny):
    with d2lft.using("torch"):
        net = d2lft.build_scratch_net(seed=0)
        h = d2lft.train_fine_tuning(
            net, None, 4, 1, data_dir=tiny, image_size=32, run=d2lft.RunSpec(verbose=False)
        )
        # recorded as trained on the chapter's hotdog data (data_source None), which
        # evaluate then scores by default (a run on a folder scores that folder)
        config = {**h.config, "data_source": None}
        d2lft.save_checkpoint(net, tmp_path / "run", epoch=1, history=h, config=config)
    return tmp_path / "run"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "1"],
        ["compare", "--epochs", "1"],
        ["sweep", "--lrs", "0.1", "--epochs", "1"],
        ["show"],
        ["evaluate", "--checkpoint", "RUN"],
    ],
    ids=["train", "compare", "sweep", "show", "evaluate"],
)
def test_every_command_without_the_data_offline(argv, tmp_path, monkeypatch, capsys, run_dir):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("D2LFT_DATA_URL", raising=False)
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert cli.main([*argv, "--backend", "torch"] if argv[0] != "show" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"d2lft {argv[0]}: error: could not download"), err
    assert "--data-dir URL --sha1 SHA1" in err[-1] and not PY_ARGS.search(err[-1])


@pytest.mark.parametrize(
    "library, command",
    [
        (
            "pass the same val_fraction=F (CLI: --val-fraction F) to score; or pass "
            "split=None (CLI: --split all)",
            "pass the same --val-fraction F to score; or pass --split all",
        ),
        (
            "Or point d2lft at a mirror with url=... or $D2LFT_DATA_URL.",
            "Or point d2lft at a mirror with --data-dir URL --sha1 SHA1 (or $D2LFT_DATA_URL).",
        ),
        (
            "cannot read image /a/seed=3/x.jpg: broken; remove or replace the file, or pass "
            "skip_bad=True to skip unreadable images with a warning (with skip_bad=True files "
            "are decoded once when the dataset is built)",
            "cannot read image /a/seed=3/x.jpg: broken; remove or replace the file",
        ),
        (
            "holds resnet18_v1 weights but arch='resnet18_v2': pass arch='resnet18_v1'",
            "holds resnet18_v1 weights but --arch resnet18_v2: pass --arch resnet18_v1",
        ),
        (
            "choose another cache folder with root=... or $D2LFT_HOME.",
            "choose another cache folder with $D2LFT_HOME.",
        ),
    ],
)
def test_library_messages_in_the_commands_words(library, command):
    assert cli.cli_words(library) == command


def test_head_init_errors_name_flags(tmp_path, tiny, capsys):
    base = ["train", "--data-dir", str(tiny), "--epochs", "1", "--init-head", "hotdog=hotdog"]
    base += ["--out", str(tmp_path / "o"), "--pretrained", "none"]
    # MXNet's random features come with no source classifier at all
    assert cli.main([*base, "--backend", "mxnet"]) == 2
    err = capsys.readouterr().err
    assert "--pretrained imagenet, or --pretrained PATH" in err and not PY_ARGS.search(err)
    # torchvision's random net has a classifier, but no class names
    assert cli.main([*base, "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "pass --source-classes FILE" in err and not PY_ARGS.search(err), err
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class{i}" for i in range(1000)))
    assert cli.main([*base, "--backend", "torch", "--source-classes", str(names)]) == 2
    err = capsys.readouterr().err
    assert "'hotdog' is not among the 1000 source classes" in err
    assert "--source-classes FILE" in err and not PY_ARGS.search(err), err


def test_help_shows_every_default():
    parser = cli.build_parser()
    missing = []
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            if "(default: " not in text and "(required)" not in text:
                missing.append(f"{name} {action.option_strings or action.dest}")
    assert not missing, missing
    train = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "(default: off)" in train and "(default: finetune)" in train


def test_info_json_is_pure_json_and_resume_of_a_finished_run(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    argv = ["train", "scratch", "--backend", "torch", "--data-dir", str(tiny), "--epochs", "1"]
    argv += ["--batch-size", "4", "--image-size", "32", "--out", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    proc = subprocess.run(
        [sys.executable, "-m", "d2lft", "info", "--json", str(out)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["epoch"] == 1
    assert cli.main([*argv, "--resume"]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text
    assert "nothing to train:" in text and "already holds all 1 epoch(s)" in text
