"""Issue 23: huge numbers in the environment (1e308, a number with 400 digits) are
refused with a message that names the variable and its allowed range, for every
D2LFT_* variable that holds a number, instead of an OverflowError where it is used."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import make_image_folder

from d2lft._sys import locks, memory
from d2lft.data import decode_cache, hub

LIMIT = 120


def _download_limits():
    hub._download_limits()


def _max_download():
    hub._max_download_bytes(4096)


def _lock_timeout():
    locks.lock_timeout()


def _memory():
    memory.available_bytes()


def _decode_cache():
    decode_cache.memory_limit_mb()


def _extract(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x.txt", b"x")
    with zipfile.ZipFile(archive) as zf:
        hub._extract_limits(archive, zf.infolist())


#: variable -> (its reader, the range its message must state)
READERS = {
    "D2LFT_MEMORY_MB": (_memory, "> 0 and <= 100,000,000 (MiB)"),
    "D2LFT_MAX_DOWNLOAD_MB": (_max_download, "> 0 and <= 100,000,000 (MiB)"),
    "D2LFT_DOWNLOAD_TIMEOUT": (_download_limits, "> 0 and <= 10,000,000 (seconds)"),
    "D2LFT_DOWNLOAD_SPEED_LIMIT": (_download_limits, ">= 0 and <= 1,099,511,627,776"),
    "D2LFT_DOWNLOAD_SPEED_TIME": (_download_limits, "> 0 and <= 10,000,000 (seconds)"),
    "D2LFT_LOCK_TIMEOUT": (_lock_timeout, "> 0 and <= 10,000,000 (seconds)"),
    "D2LFT_DECODE_CACHE_MB": (_decode_cache, "whole number >= 0 and <= 100,000,000 (MiB"),
    "D2LFT_MAX_EXTRACT_MB": (_extract, "> 0 and <= 100,000,000 (MiB)"),
    "D2LFT_MAX_EXTRACT_RATIO": (_extract, "> 0 and <= 1,000,000 (times)"),
    "D2LFT_MAX_EXTRACT_FILES": (_extract, "whole number > 0 and <= 1,000,000,000 (entries)"),
}


@pytest.mark.parametrize("name", sorted(READERS))
@pytest.mark.parametrize("value", ["1e308", "9" * 400, "inf", "-5"])
def test_out_of_range_values_name_the_variable_and_its_range(name, value, monkeypatch, tmp_path):
    reader, allowed = READERS[name]
    monkeypatch.setenv(name, value)
    call = (lambda: reader(tmp_path)) if reader is _extract else reader
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(f"${name} must be "), msg
    assert allowed in msg and "fix or unset the variable" in msg, msg
    assert value[:20] in msg and "\n" not in msg


@pytest.mark.parametrize("name", sorted(READERS))
def test_values_in_range_are_taken(name, monkeypatch, tmp_path):
    reader, _ = READERS[name]
    monkeypatch.setenv(name, "100000")  # in range for every one of them
    (lambda: reader(tmp_path))() if reader is _extract else reader()


def cli(args, home, **env):
    return subprocess.run(
        [sys.executable, "-m", "d2lft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        env={
            **os.environ,
            "D2LFT_HOME": str(home),
            "D2LFT_PROGRESS": "0",
            "OMP_NUM_THREADS": "1",
            **env,
        },
    )


def one_line(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "OverflowError" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("d2lft ")]
    assert len(lines) == 1, p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_the_issues_two_cases_through_the_cli(tmp_path):
    """`D2LFT_MEMORY_MB=1e308` (train) and `D2LFT_MAX_DOWNLOAD_MB=1e308` (a URL as
    --data-dir) crashed with OverflowError; now one line names each variable."""
    data = make_image_folder(tmp_path / "data", n_train=2, n_test=1, size=(16, 16))
    train = ["train", "scratch", "--backend", "torch", "--epochs", "1", "--image-size", "16"]
    p = cli(
        [*train, "--data-dir", data, "--out", tmp_path / "o"], tmp_path, D2LFT_MEMORY_MB="1e308"
    )
    one_line(p, "$D2LFT_MEMORY_MB must be a number > 0 and <= 100,000,000 (MiB)", "'1e308'")
    assert not (tmp_path / "o").exists()
    url = "http://127.0.0.1:1/data.zip"  # never reached: the variable is checked first
    p = cli(
        [*train, "--data-dir", url, "--sha1", "0" * 40, "--out", tmp_path / "o"],
        tmp_path,
        D2LFT_MAX_DOWNLOAD_MB="1e308",
    )
    one_line(p, "$D2LFT_MAX_DOWNLOAD_MB must be a number > 0 and <= 100,000,000 (MiB)")
