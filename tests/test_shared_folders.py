"""Run folders and caches may be shared between machines (NFS): a temporary file or
folder is reclaimed only when its process ran on this host and is gone. Another
host's are never touched, whatever its process id means here, and whatever its name
looks like once made safe for a file name (dots, long names that differ at the end)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from d2lft._sys import locks
from d2lft._sys.atomic import atomic_write_text

LONG = "gpu-a100-partition-rack12-node-0"  # 32 characters: the old cut


@pytest.fixture(scope="module")
def dead_pid():
    """The id of a process that has ended (and was waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def left_by(monkeypatch, folder, base, host, pid, is_dir=False):
    """A temporary name of `base` in `folder`, as process `pid` on `host` makes it."""
    monkeypatch.setattr(locks.socket, "gethostname", lambda: host)
    name = locks.temp_name(base).replace(f"-{os.getpid()}.", f"-{pid}.")
    path = folder / name
    path.mkdir() if is_dir else path.write_text("half written")
    return path


@pytest.mark.parametrize(
    "here, there",
    [
        ("alpha", "beta"),
        ("node.1", "node_1"),  # the same once dots become underscores
        (LONG + "1", LONG + "2"),  # the same in their first 32 characters
        ("alpha.example.org", "alpha_example_org"),
    ],
)
def test_another_hosts_temporary_files_are_never_reclaimed(
    tmp_path, monkeypatch, dead_pid, here, there
):
    base = "metrics.json"
    theirs = [
        left_by(monkeypatch, tmp_path, base, there, dead_pid),
        left_by(monkeypatch, tmp_path, base, there, dead_pid, is_dir=True),
    ]
    ours_dead = left_by(monkeypatch, tmp_path, base, here, dead_pid)
    ours_live = left_by(monkeypatch, tmp_path, base, here, os.getpid())
    assert locks.reclaim(tmp_path, base) == [ours_dead]  # as `here`, the last one set
    atomic_write_text(tmp_path / base, "{}")  # every write reclaims first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [base, ours_live.name, *(p.name for p in theirs)]
    )


def test_a_dead_process_of_this_host_is_reclaimed_by_the_next_write(tmp_path, dead_pid):
    base = "checkpoint.safetensors"
    name = locks.temp_name(base).replace(f"-{os.getpid()}.", f"-{dead_pid}.")
    (tmp_path / name).write_bytes(b"half a checkpoint")
    atomic_write_text(tmp_path / base, "new")
    assert [p.name for p in tmp_path.iterdir()] == [base]
