"""A new user's first hour (issue 23, 6): what the commands say and do when a user
tries the README's steps on their own data."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import make_image_folder

REPO = pathlib.Path(__file__).resolve().parents[1]


def d2lft_cli(*args, cwd=None, timeout=300):
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        D2LFT_PROGRESS="0",
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
        D2LFT_DATA_URL="http://127.0.0.1:9/nothing-here.zip",  # never the internet
    )
    return subprocess.run(
        [sys.executable, "-m", "d2lft", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


# ---------------------------------------------------------------- wrong layout


def test_one_folder_of_classes_is_told_about_val_fraction(toy_data, tmp_path):
    """`--data-dir hymenoptera_data/train`: one folder of class subfolders. The error
    suggests --val-fraction 0.2, and that suggestion works."""
    from d2lft.data.split import class_names

    r = d2lft_cli(
        "train", "finetune", "--data-dir", toy_data / "train", "--out", tmp_path / "run"
    )
    assert r.returncode == 2
    assert r.stderr.startswith("d2lft train: error:")
    assert "holds class subfolders of images" in r.stderr
    assert "--val-fraction 0.2" in r.stderr and "val_fraction=" not in r.stderr
    assert class_names(toy_data / "train", 0.2) == ["hotdog", "not-hotdog"]


def test_no_val_fraction_hint_for_folders_without_images(tmp_path):
    """Subfolders without images (or a folder with train/ but no held-out split) get
    the layout, not the val_fraction suggestion."""
    from d2lft.data.folders import DataLayoutError, find_split_root

    for name in ("a", "b"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    with pytest.raises(DataLayoutError) as err:
        find_split_root(tmp_path / "empty")
    assert "holds class subfolders" not in str(err.value)
    assert "expected layout" in str(err.value)
    make_image_folder(tmp_path / "splits", n_train=1, n_test=1, size=(8, 8))
    (tmp_path / "splits" / "test").rename(tmp_path / "splits" / "other")
    with pytest.raises(DataLayoutError) as err:
        find_split_root(tmp_path / "splits")
    assert "holds class subfolders" not in str(err.value)
