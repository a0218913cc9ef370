"""A signal to the launcher of `d2lft train --nproc 2` stops the whole job.

SIGINT, SIGTERM and SIGHUP to the launcher (and to it only) must reach every process
of the job (torchrun and its workers, which torchrun puts in sessions of their own;
MXNet's scheduler, server and workers), end it within seconds with exit status 130
and "interrupted", and leave the last checkpoint intact. A worker that dies shows
d2lft's one line, and the frameworks' tracebacks go to the log file that line names.
Real processes and signals; every process a test starts is killed in a `finally`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_image_folder

import d2lft
from d2lft import launch

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 500  # far more than a test waits for: the job is always mid-run
STOP_SECONDS = launch.GRACE_SECONDS + 20  # the grace period, plus a busy machine's slack


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), D2LFT_PROGRESS="0", OMP_NUM_THREADS="1")


def _stat(pid):
    """(ppid, start time) of a live process, else None (ended, or a zombie)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else (int(fields[1]), fields[19])


def _tree(root):
    """{pid: start time} of every live process descending from `root`."""
    stats = {int(n): _stat(n) for n in os.listdir("/proc") if n.isdigit()}
    stats = {p: s for p, s in stats.items() if s}
    out, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in stats.items():
            if ppid == parent and pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def _alive(procs):
    """The pids of `procs` ({pid: start time}) still running (the same process)."""
    return [p for p, start in procs.items() if (_stat(p) or (None, None))[1] == start]


def _kill_all(procs):
    for pid in _alive(procs):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 + 8 training and 4 + 4 test images of 32 px: an epoch takes well under a second."""
    return make_image_folder(
        tmp_path_factory.mktemp("sig") / "d", n_train=8, n_test=4, size=(32, 32)
    )


def _start(backend, data, out):
    argv = [sys.executable, "-m", "d2lft", "train", "scratch", "--backend", backend]
    argv += ["--data-dir", str(data), "--image-size", "32", "--batch-size", "8", "--seed", "0"]
    argv += ["--pipeline", "fixed", "--epochs", str(EPOCHS), "--out", str(out), "--nproc", "2"]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # the test's own session: nothing of it outlives the test
    )


def _mid_run(proc, out, want, limit=240):
    """Wait until the job has written a checkpoint and all its `want` processes run;
    return them ({pid: start time})."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        tree = _tree(proc.pid)
        if (out / "checkpoint.safetensors").exists() and len(tree) >= want:
            return tree
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"the job did not get going: {proc.communicate()[1][-3000:]}")


#: each signal once, each backend with two of them
CASES = [
    ("torch", "SIGTERM"),
    ("torch", "SIGHUP"),
    ("mxnet", "SIGTERM"),
    ("mxnet", "SIGINT"),
]


@pytest.mark.parametrize(("backend", "signame"), CASES)
def test_a_signal_to_the_launcher_stops_the_whole_job(backend, signame, tiny, tmp_path):
    """The signal goes to the launcher only; within seconds no process of the job is
    left (torch: torchrun and 2 workers; MXNet: scheduler, server and 2 workers), the
    launcher exits 130 saying the job was interrupted, and the checkpoint is intact."""
    out = tmp_path / "run"
    proc = _start(backend, tiny, out)
    family = {}
    try:
        family = _mid_run(proc, out, want=3 if backend == "torch" else 4)
        assert len(family) >= 3, family
        t0 = time.monotonic()
        os.kill(proc.pid, getattr(signal, signame))
        try:
            _, err = proc.communicate(timeout=STOP_SECONDS + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher was still running {STOP_SECONDS + 30} s after {signame}")
        took = time.monotonic() - t0
        left = _alive(family)
        assert not left, f"{signame} left processes of the job running: {left}"
        assert took < STOP_SECONDS, took
        assert proc.returncode == 130, (proc.returncode, err[-3000:])
        assert f"2-worker job was interrupted ({signame})" in err, err[-3000:]
        assert "failed" not in err and "Traceback" not in err, err[-3000:]
        kept = d2lft.read_checkpoint(out)  # its hash verifies: intact
        assert 1 <= kept.epoch < EPOCHS and kept.config["world_size"] == 2
    finally:
        _kill_all(family)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_a_killed_torch_worker_shows_d2lfts_line_and_keeps_the_rest_in_the_log(tiny, tmp_path):
    """SIGKILL one torch worker: gloo's RuntimeError and torchrun's ChildFailedError
    traceback go to the job's log, and stderr ends with d2lft's one line naming it."""
    out = tmp_path / "run"
    proc = _start("torch", tiny, out)
    family = {}
    try:
        family = _mid_run(proc, out, want=3)
        workers = sorted(p for p in family if _stat(p)[0] != proc.pid)  # torchrun's children
        assert len(workers) == 2, family
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=STOP_SECONDS + 120)
        assert proc.returncode not in (0, 130), proc.returncode
        assert not _alive(family)
        lines = err.strip().splitlines()
        log = out / launch.LOG_NAME
        assert lines and lines[-1].startswith("d2lft train: error: the 2-worker job failed")
        assert str(log) in lines[-1] and "--resume" in lines[-1]
        assert all(line.startswith("d2lft") for line in lines), err[-3000:]
        assert "Traceback" in log.read_text()  # the frameworks' own account is kept
        d2lft.read_checkpoint(out)
    finally:
        _kill_all(family)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


# ------------------------------------------------- the launcher's job, without a framework

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
if len(sys.argv) > 1:  # a grandchild in a session of its own, as torchrun's workers are
    subprocess.Popen([sys.executable, __file__], start_new_session=True)
print("d2lft: warning: shown once", file=sys.stderr, flush=True)
print("Traceback (most recent call last): only in the log", file=sys.stderr, flush=True)
time.sleep(600)
"""


def test_what_ignores_the_signal_is_killed_after_the_grace_period(tmp_path):
    """A job whose processes ignore SIGTERM (and one that escaped into a session of its
    own) is killed the grace period after the signal; only d2lft's lines are shown,
    each once, and the rest is in the log."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    log = tmp_path / "job.log"
    code = (
        "import os, signal, sys, threading\n"
        "from d2lft import launch\n"
        f"job = launch._Job({str(log)!r}, grace=1.0)\n"
        "with job:\n"
        f"    a = job.start([sys.executable, {str(script)!r}, 'spawn'], dict(os.environ))\n"
        f"    b = job.start([sys.executable, {str(script)!r}], dict(os.environ))\n"
        "    import time\n"
        "    while not os.path.getsize(" + repr(str(log)) + ") or len(job.procs) < 2:\n"
        "        time.sleep(0.1)\n"
        "    time.sleep(1.5)\n"
        "    job.remember()\n"
        "    print(sorted(job.family), flush=True)\n"
        "    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "    while job.signum is None:\n"
        "        time.sleep(0.05)\n"
        "    print(job.interrupted([a, b]).code, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    family = {}
    try:
        deadline = time.monotonic() + 60
        while len(family) < 3 and time.monotonic() < deadline and proc.poll() is None:
            family = _tree(proc.pid)
            time.sleep(0.1)
        assert len(family) == 3, family  # two children and the escaped grandchild
        out, err = proc.communicate(timeout=60)
        assert out.strip().splitlines()[-1] == "130", (out, err)
        assert not _alive(family)
        assert err.splitlines() == ["d2lft: warning: shown once"], err
        assert log.read_text().count("only in the log") == 3
    finally:
        _kill_all(family)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
