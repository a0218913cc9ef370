"""Starting a data-parallel job on this machine: ``d2lft train ... --nproc N``.

Each backend's framework brings its own engine, and this module only starts it:

- ``torchrun`` (torch.distributed): ``python -m torch.distributed.run --nproc-per-node
  N -m d2lft train ...``; with ``--nnodes``/``--node-rank``/``--master-addr``/
  ``--master-port`` the same command on each machine joins one job (torchrun's
  static rendezvous). torchrun watches its workers: when one dies it stops the others
  (they get SIGTERM, which d2lft handles like Ctrl-C) and exits with an error.
- ``ps-lite`` (MXNet's parameter server, ``kvstore='dist_sync'``): a scheduler, one
  server and N workers, started here with the ``DMLC_*`` environment on 127.0.0.1.
  ps-lite has no watchdog, so this module is one: when a worker fails, the others
  and the servers are stopped and the job ends with an error naming the worker.

Each worker gets ``cores // N`` compute threads (unless OMP_NUM_THREADS is set). The
workers run the very command given, without the launch flags, and join the job
through the environment (see :mod:`d2lft.engine.dist`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

from ._sys.threads import physical_cores

#: the CLI's launch flags (removed from the workers' command)
LAUNCH_FLAGS = {
    "--nproc": 1,
    "--nnodes": 1,
    "--node-rank": 1,
    "--master-addr": 1,
    "--master-port": 1,
}
#: seconds a job has to stop by itself (after a signal, or when a worker failed)
#: before what is left of it is killed
GRACE_SECONDS = 10.0
#: the signals that stop a job when the launcher gets them
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
EXIT_INTERRUPTED = 130
#: where, in the run's --out, the frameworks' messages (torchrun, gloo, ps-lite, the
#: workers' stderr) are kept
LOG_NAME = ".d2lft-job.log"


class LaunchError(RuntimeError):
    """A distributed job could not be started, or one of its workers failed."""


@dataclasses.dataclass
class Outcome:
    """How a job ended: its exit status; the signal that stopped the launcher (then
    the status is 130); what failed; the log that holds the frameworks' messages."""

    code: int
    signal: int | None = None
    detail: str = ""
    log: pathlib.Path | None = None

    @property
    def signal_name(self) -> str:
        return _signal_name(self.signal) if self.signal else ""


def worker_argv(argv: list[str]) -> list[str]:
    """`argv` without the launch flags (what each worker runs)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = 0 if "=" in a else LAUNCH_FLAGS[name]
            continue
        out.append(a)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Refuse a port this machine cannot listen on (already in use)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host in ("127.0.0.1", "localhost") else "", port))
        except OSError as err:
            raise LaunchError(
                f"--master-port {port} cannot be used on this machine ({err}): choose a free port"
            ) from None


def _thread_env(nproc: int) -> dict:
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, physical_cores() // nproc))
    return env


class _Job:
    """The processes of one job started here, watched and stopped together.

    Each process runs in a session of its own, so that a signal reaches it once,
    through the launcher: SIGINT, SIGTERM and SIGHUP to the launcher are relayed to
    the job (SIGINT as SIGINT, the others as SIGTERM, which d2lft's workers handle
    like Ctrl-C: the run stops and its last checkpoint stays as it is). Whatever is
    left of the job `grace` seconds later, or at a second signal, is killed: every
    process started from the launcher, torchrun's workers (sessions of their own too)
    included. The processes' stderr goes to the `log` file, and only d2lft's own
    lines (its errors and warnings, each distinct line once) are shown; the log is
    removed when the job succeeds.
    """

    def __init__(self, log: os.PathLike | None = None, grace: float = GRACE_SECONDS):
        self.grace = grace
        self.log_path = pathlib.Path(log) if log is not None else None
        self.procs: list[subprocess.Popen] = []
        self.family: dict[int, str] = {}  # pid -> start time, every process of the job
        self.signum: int | None = None
        self.hurry = False
        self._lock = threading.Lock()
        self._shown: set[str] = set()
        self._copiers: list[threading.Thread] = []
        self._old: dict = {}
        self._log = None
        self.succeeded = False
        self._made = False

    # -------------------------------------------------------------- lifetime

    def __enter__(self) -> _Job:
        if self.log_path is not None:
            self._made = not self.log_path.parent.exists()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in __exit__)
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop(self.procs)
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            for t in self._copiers:
                t.join(5.0)
            if self._log is not None:
                self._log.close()
                if self.succeeded:  # nothing to look into: --out keeps the run's files only
                    with contextlib.suppress(OSError):
                        self.log_path.unlink()
                        if self._made:  # a folder made for the log alone (another node's)
                            self.log_path.parent.rmdir()

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        else:  # a second Ctrl-C: do not wait for the job to stop by itself
            self.hurry = True

    def start(self, cmd: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stderr=subprocess.PIPE if self._log is not None else None,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.family[proc.pid] = _start_time(proc.pid)
        if proc.stderr is not None:
            t = threading.Thread(target=self._copy, args=(proc.stderr,), daemon=True)
            t.start()
            self._copiers.append(t)
        return proc

    def _copy(self, stream) -> None:
        """Copy a process's stderr into the log; show d2lft's own lines."""
        for raw in iter(stream.readline, b""):
            with self._lock:
                self._log.write(raw)
                self._log.flush()
                line = raw.decode(errors="replace")
                if line.startswith("d2lft") and line not in self._shown:
                    self._shown.add(line)
                    with contextlib.suppress(OSError, ValueError):  # stderr closed
                        sys.stderr.write(line)
                        sys.stderr.flush()
        stream.close()

    # -------------------------------------------------------------- stopping

    def remember(self) -> None:
        """Add the processes now descending from the job's own to its family."""
        for p in self.procs:
            if _start_time(p.pid) == self.family.get(p.pid):  # still that process
                self.family.update(_descendants(p.pid))

    def stop(self, first, rest=(), sig: int = signal.SIGTERM) -> None:
        """Send `sig` once to `first` (still running), then SIGTERM to `rest` once
        `first` have ended; past the grace period (or at a second signal), kill every
        process of the job that is left."""
        self.remember()
        deadline = time.monotonic() + self.grace
        for group, s in ((first, sig), (rest, signal.SIGTERM)):
            for p in group:
                if p.poll() is None:
                    with contextlib.suppress(OSError):
                        p.send_signal(s)
            while any(p.poll() is None for p in group):
                if self.hurry or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        for pid, started in self.family.items():
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5.0)

    def interrupted(self, first, rest=()) -> Outcome:
        """Stop the job after a signal to the launcher."""
        self.stop(
            first, rest, sig=signal.SIGINT if self.signum == signal.SIGINT else signal.SIGTERM
        )
        return Outcome(EXIT_INTERRUPTED, signal=self.signum, log=self.log_path)

    def failed(self, code: int, detail: str) -> Outcome:
        """Stop what is left of the job after one of its processes failed."""
        self.stop(self.procs)
        return Outcome(code if code > 0 else 1, detail=detail, log=self.log_path)


def _start_time(pid: int) -> str | None:
    """A process's start time (from /proc), which tells it from a later one that got
    the same pid; None when it has ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":  # a zombie: ended, not yet reaped
        return None
    return fields[19].decode()


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process descending from `root` (Linux's /proc; an
    empty dict elsewhere)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
        starts[int(name)] = fields[19].decode()
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in out:
            out[pid] = starts[pid]
            todo += children.get(pid, [])
    return out


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def torchrun(
    argv: list[str],
    nproc: int,
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout: float = 300.0,
    log: os.PathLike | None = None,
    poll: float = 0.2,
) -> Outcome:
    """Run `argv` (a ``d2lft`` command) as `nproc` torchrun workers on this machine
    (torchrun's and the workers' stderr into `log`, d2lft's own lines shown); return
    how the job ended. SIGINT, SIGTERM or SIGHUP to this process stops the job (see
    :class:`_Job`)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--monitor-interval",
        "1",
    ]
    if nnodes == 1 and master_addr is None and master_port is None:
        cmd += ["--standalone"]
    else:
        addr = master_addr or "127.0.0.1"
        port = master_port or 29500
        if node_rank == 0:
            check_port(addr, port)
        cmd += [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(node_rank),
            "--master-addr",
            addr,
            "--master-port",
            str(port),
            "--rdzv-conf",
            f"join_timeout={int(timeout)}",
        ]
    cmd += ["-m", "d2lft", *worker_argv(argv)]
    with _Job(log) as job:
        proc = job.start(cmd, _thread_env(nproc))
        for step in itertools.count():
            if job.signum is not None:
                return job.interrupted([proc])
            code = proc.poll()
            if code is not None:
                if code == 0:
                    job.succeeded = True
                    return Outcome(0)
                how = f"torchrun exited with status {code}" if code > 0 else ""
                return job.failed(code, how or f"torchrun was killed by signal {-code}")
            if step % 10 == 0:  # torchrun's workers, for when torchrun itself is lost
                job.remember()
            time.sleep(poll)


def ps_lite(
    argv: list[str],
    nproc: int,
    *,
    timeout: float = 300.0,
    poll: float = 0.2,
    log: os.PathLike | None = None,
) -> Outcome:
    """Run `argv` (a ``d2lft`` command) as `nproc` MXNet ``dist_sync`` workers with a
    scheduler and one server on 127.0.0.1, watched: the first worker that fails stops
    the job (within `poll` seconds plus a grace period), and so does SIGINT, SIGTERM
    or SIGHUP to this process. Returns how the job ended."""
    env = _thread_env(nproc)
    env.update(
        DMLC_PS_ROOT_URI="127.0.0.1",
        DMLC_PS_ROOT_PORT=str(free_port()),
        DMLC_NUM_SERVER="1",
        DMLC_NUM_WORKER=str(nproc),
        DMLC_NODE_HOST="127.0.0.1",
        MXNET_OMP_MAX_THREADS=env["OMP_NUM_THREADS"],
    )
    serve = [sys.executable, "-c", "import mxnet"]  # a server role runs on import
    with _Job(log) as job:
        helpers = [job.start(serve, dict(env, DMLC_ROLE=role)) for role in ("scheduler", "server")]
        workers = [
            job.start(
                [sys.executable, "-m", "d2lft", *worker_argv(argv)],
                dict(env, DMLC_ROLE="worker"),
            )
            for _ in range(nproc)
        ]
        while True:
            if job.signum is not None:
                return job.interrupted(workers, helpers)
            codes = [w.poll() for w in workers]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                sig = -codes[i] if codes[i] < 0 else None
                how = f"was killed by signal {sig}" if sig else f"exited with status {codes[i]}"
                return job.failed(
                    codes[i],
                    f"worker {i} {how}; the other workers and the servers were stopped",
                )
            if all(c == 0 for c in codes):
                job.grace = timeout
                job.stop(helpers)
                job.succeeded = True
                return Outcome(0)
            time.sleep(poll)


__all__ = [
    "LAUNCH_FLAGS",
    "LOG_NAME",
    "STOP_SIGNALS",
    "LaunchError",
    "Outcome",
    "check_port",
    "free_port",
    "ps_lite",
    "torchrun",
    "worker_argv",
]
