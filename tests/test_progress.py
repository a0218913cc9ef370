"""Training shows that it goes on (issue 23, 6): a tqdm bar with its rate and the time
left on a terminal (a real pty, sized 0x0 as under `script`), one line per epoch when
stderr is a file or a pipe, nothing with D2LFT_PROGRESS=0."""

from __future__ import annotations

import os
import pathlib
import pty
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train_cmd(data, out):
    return [
        sys.executable,
        "-m",
        "d2lft",
        "train",
        "scratch",
        "--backend",
        "torch",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "32",
    ]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "D2LFT_PROGRESS"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MPLBACKEND="Agg", **extra)
    return env


def _read_all(fd) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    return out


def test_a_terminal_shows_a_bar_with_rate_and_time_left(toy_data, tmp_path):
    master, slave = pty.openpty()  # a new pty reports 0x0, as `script` gives without a tty
    proc = subprocess.Popen(
        _train_cmd(toy_data, tmp_path / "run"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(),
        cwd=tmp_path,
    )
    os.close(slave)
    try:
        text = _read_all(master).decode("utf-8", "replace")
    finally:
        os.close(master)
    assert proc.wait(timeout=300) == 0, text
    for epoch in (1, 2):
        # tqdm's bar: the epoch, batches done of all, elapsed<left, the rate
        assert re.search(
            rf"epoch {epoch}/2: +\d+%\|.*\| \d+/6 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+batch/s\]",
            text,
        ), text
    assert "done in" not in text  # the bar, not the log lines


def test_a_pipe_gets_one_line_per_epoch(toy_data, tmp_path):
    r = subprocess.run(
        _train_cmd(toy_data, tmp_path / "run"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if " done in " in ln]
    assert len(lines) == 2, r.stderr
    assert re.fullmatch(r"epoch 1/2 done in \d+s \([\d.]+ examples/s\); about \d+s left", lines[0])
    assert re.fullmatch(r"epoch 2/2 done in \d+s \([\d.]+ examples/s\)", lines[1])
    assert "\r" not in r.stderr and "batch/s" not in r.stderr  # no bar in a log


@pytest.mark.parametrize(("env", "bar"), [("0", None), ("1", False)])
def test_progress_switch(monkeypatch, env, bar):
    import types

    import d2lft
    from d2lft.engine import callbacks as cb

    monkeypatch.setenv("D2LFT_PROGRESS", env)
    plan = types.SimpleNamespace(run=d2lft.RunSpec(), rank=0)
    found = [c for c in d2lft.api.default_callbacks(plan) if isinstance(c, cb.ProgressBar)]
    if bar is None:  # D2LFT_PROGRESS=0: neither a bar nor epoch lines
        assert found == []
    else:  # under pytest stderr is no terminal: epoch lines
        assert [c.bar for c in found] == [bar]


def test_duration_words():
    from d2lft.engine.callbacks import _duration

    assert [_duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m 05s", "1h 02m"]
