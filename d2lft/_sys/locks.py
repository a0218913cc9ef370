"""Cross-process safety for shared folders: file locks, and temporary names that say
which process made them, so that the leftovers of a killed process are reclaimed by
the next run without touching a live process's files.

- :func:`locked` holds a `filelock` lock (``fcntl.flock`` on Unix: the system drops it
  when its process dies, so a killed process never leaves a stale lock); a second
  process waits for it, saying so after a moment, up to ``$D2LFT_LOCK_TIMEOUT``
  seconds (default 3600). Once the guarded work is done for good, the lock file is
  removed (only a failed or killed attempt leaves one, empty and harmless).
- :func:`temp_name` names a temporary file or folder ``.<base>.<host>-<pid>.<tag>.tmp``;
  :func:`reclaim` removes those of `base` whose process (on this host) is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import shutil
import socket
import sys
import time
import uuid

import filelock

from .env import MAX_SECONDS, env_number

LOCK_TIMEOUT_ENV = "D2LFT_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 3600.0
#: the longest base name kept in a temporary name (file names are limited to 255 bytes)
_BASE_CHARS = 80
_NOTICE_AFTER = 2.0
#: the longest host name kept in a temporary name
_HOST_CHARS = 32


class LockTimeout(TimeoutError):
    """Another process held a lock for longer than the lock timeout."""


def _host() -> str:
    """This host's name as temporary names record it: the name itself when it is short
    and plain, else a readable part and a hash of the whole name, so that two hosts
    never share one (``node.1`` and ``node_1``, or long names that differ at the end,
    on a folder shared over NFS)."""
    raw = socket.gethostname() or "host"
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    if safe == raw and len(safe) <= _HOST_CHARS:
        return safe
    return f"{safe[: _HOST_CHARS - 9]}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def short_base(name: str) -> str:
    """`name` cut to a length that leaves room for a temporary name's additions."""
    return name[:_BASE_CHARS]


def temp_name(base: str) -> str:
    """A hidden temporary name for `base` that records this host and process:
    ``.<base>.<host>-<pid>.<random>.tmp``."""
    return f".{short_base(base)}.{_host()}-{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not; where this
    cannot be told, e.g. on Windows, it is taken to run, so nothing is removed)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _owner(name: str, base: str):
    """(host, pid) recorded in temporary name `name` of `base`, else None."""
    prefix = f".{short_base(base)}."
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return None
    m = re.fullmatch(r"([A-Za-z0-9_-]+)-(\d+)\.[0-9a-f]+", name[len(prefix) : -len(".tmp")])
    return (m.group(1), int(m.group(2))) if m else None


def reclaim(folder, base: str) -> list[pathlib.Path]:
    """Remove the temporary files and folders of `base` in `folder` left by processes
    of this host that no longer run; return what was removed. Those of live processes
    and of other hosts are left alone."""
    folder = pathlib.Path(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        owner = _owner(name, base)
        if owner is None or owner[0] != _host() or _pid_alive(owner[1]):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def lock_timeout() -> float:
    return env_number(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT, high=MAX_SECONDS, unit="seconds")


@contextlib.contextmanager
def locked(path, what: str, *, timeout: float | None = None):
    """Hold the lock file `path` (created when missing) while the block runs; `what`
    says in messages what the lock protects. A process that has to wait says so on
    stderr after a moment and gives up with :class:`LockTimeout` after `timeout`
    seconds (default ``$D2LFT_LOCK_TIMEOUT``, 3600)."""
    path = pathlib.Path(path)
    timeout = lock_timeout() if timeout is None else timeout
    lock = filelock.FileLock(os.fspath(path))
    try:
        try:
            lock.acquire(timeout=min(_NOTICE_AFTER, timeout))
        except filelock.Timeout:
            print(
                f"d2lft: waiting for another process that is {what} (lock {path})",
                file=sys.stderr,
                flush=True,
            )
            start = time.monotonic()
            try:
                lock.acquire(timeout=max(0.0, timeout - _NOTICE_AFTER))
            except filelock.Timeout:
                raise LockTimeout(
                    f"another process has been {what} for more than {timeout:g} s (lock "
                    f"{path}, waited {time.monotonic() - start + _NOTICE_AFTER:.0f} s); wait "
                    f"for it to finish, stop it, or raise ${LOCK_TIMEOUT_ENV}"
                ) from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.ENOENT):
            raise OSError(
                err.errno, f"cannot create the lock file {path} ({err.strerror})", str(path)
            ) from err
        raise
    try:
        yield _Held(path)
    finally:
        lock.release()


class _Held:
    """A lock being held (what :func:`locked` yields)."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def done(self) -> None:
        """Say that the work this lock guards is done for good (its result is in place,
        and every process checks for it once it holds the lock): the lock file is
        removed, so that finished work leaves no lock file behind. A process still
        waiting on the removed file gets it, finds the work done and goes on; one that
        comes later makes a new lock file and finds the same."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)


__all__ = [
    "LockTimeout",
    "lock_timeout",
    "locked",
    "reclaim",
    "short_base",
    "temp_name",
]
