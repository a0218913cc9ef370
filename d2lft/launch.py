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
import os
import signal
import socket
import subprocess
import sys
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
GRACE_SECONDS = 10.0


class LaunchError(RuntimeError):
    """A distributed job could not be started, or one of its workers failed."""


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


def torchrun(
    argv: list[str],
    nproc: int,
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout: float = 300.0,
) -> int:
    """Run `argv` (a ``d2lft`` command) as `nproc` torchrun workers on this machine;
    return the job's exit status."""
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
    proc = subprocess.run(cmd, env=_thread_env(nproc), check=False)
    return proc.returncode


def _stop(procs, grace=GRACE_SECONDS):
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def ps_lite(argv: list[str], nproc: int, *, timeout: float = 300.0, poll: float = 0.2) -> int:
    """Run `argv` (a ``d2lft`` command) as `nproc` MXNet ``dist_sync`` workers with a
    scheduler and one server on 127.0.0.1, watched: the first worker that fails stops
    the job (within `poll` seconds plus a grace period). Returns the exit status."""
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
    helpers = [
        subprocess.Popen(serve, env=dict(env, DMLC_ROLE=role)) for role in ("scheduler", "server")
    ]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "d2lft", *worker_argv(argv)], env=dict(env, DMLC_ROLE="worker")
        )
        for _ in range(nproc)
    ]
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                _stop(workers + helpers)
                i = failed[0]
                sig = -codes[i] if codes[i] < 0 else None
                how = f"was killed by signal {sig}" if sig else f"exited with status {codes[i]}"
                print(
                    f"d2lft: worker {i} of the ps-lite job {how}; the other workers and "
                    f"the servers were stopped",
                    file=sys.stderr,
                    flush=True,
                )
                return codes[i] if codes[i] > 0 else 1
            if all(c == 0 for c in codes):
                _stop(helpers, grace=timeout)
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:
        _stop(workers + helpers)
        return 130


__all__ = [
    "LAUNCH_FLAGS",
    "LaunchError",
    "check_port",
    "free_port",
    "ps_lite",
    "torchrun",
    "worker_argv",
]
