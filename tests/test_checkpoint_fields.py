"""Issue 23: a checkpoint from elsewhere (its metadata edited and its hash recomputed,
as anyone can) whose `backend` says "tensorflow" or whose recorded `val_fraction` is
"abc": the message says that the value came from the checkpoint, naming the file and
the field, from the library and from the CLI. The checkpoint and its editor are
test_hostile's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import test_hostile
from conftest import make_image_folder
from test_hostile import edited

import d2lft
from d2lft.io.checkpoint import CheckpointError

checkpoint = test_hostile.checkpoint  # a fixture: a real torch checkpoint, image size 16


def cli(args, home):
    return subprocess.run(
        [sys.executable, "-m", "d2lft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "D2LFT_HOME": str(home),
            "D2LFT_PROGRESS": "0",
            "OMP_NUM_THREADS": "1",
        },
    )


def _set_config(key, value):
    return lambda info: info["config"].update({key: value})


CASES = {
    "backend-tensorflow": (
        lambda info: info.update(backend="tensorflow"),
        "backend is 'tensorflow', not one of 'mxnet', 'torch'",
    ),
    "val-fraction-abc": (
        _set_config("val_fraction", "abc"),
        "config.val_fraction is 'abc', not a number between 0 and 1",
    ),
    "val-fraction-2": (
        _set_config("val_fraction", 2),
        "config.val_fraction is 2, not a number between 0 and 1",
    ),
    "data-dir-a-list": (_set_config("data_dir", [1]), "config.data_dir is [1], not a path"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_recorded_value_is_named_as_the_checkpoints(case, checkpoint, tmp_path):
    change, says = CASES[case]
    (tmp_path / "run").mkdir()
    bad = edited(checkpoint, tmp_path / "run" / "checkpoint.safetensors", change)
    with pytest.raises(CheckpointError) as err:
        d2lft.read_checkpoint(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: a value recorded in this checkpoint is not valid"), msg
    assert says in msg
    with d2lft.using("torch"), pytest.raises(CheckpointError, match="recorded in this"):
        d2lft.load_checkpoint(bad)


@pytest.mark.parametrize("case", ["backend-tensorflow", "val-fraction-abc"])
def test_the_cli_says_the_value_came_from_the_checkpoint(case, checkpoint, tmp_path):
    """`d2lft evaluate` of a folder of class subfolders reads the recorded
    val_fraction; `d2lft predict` reads the recorded backend."""
    change, says = CASES[case]
    (tmp_path / "run").mkdir()
    bad = edited(checkpoint, tmp_path / "run" / "checkpoint.safetensors", change)
    data = make_image_folder(tmp_path / "data", n_train=2, n_test=1, size=(16, 16)) / "train"
    image = next(data.rglob("*.jpg"))
    for args in (
        ["evaluate", "--checkpoint", bad.parent, "--data-dir", data],
        ["predict", "--checkpoint", bad.parent, image],
    ):
        p = cli(args, tmp_path / "home")
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert str(bad) in lines[0] and "recorded in this checkpoint" in lines[0], lines[0]
        assert says in lines[0]
