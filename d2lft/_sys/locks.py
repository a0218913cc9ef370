"""Cross-process safety for shared folders: file locks, and temporary names that say
which process made them, so that the leftovers of a killed process are reclaimed by
the next run without touching a live process's files.

- :func:`locked` holds a `filelock` lock (``fcntl.flock`` on Unix: the system drops it
  when its process dies, so a killed process never leaves a stale lock); a second
  process waits for it, saying so after a moment, up to ``$D2LFT_LOCK_TIMEOUT``
  seconds (default 3600). Once the guarded work is done for good, the lock file is
  removed (only a failed or killed attempt leaves one, empty and harmless).
- :func:`own_folder` makes a process the only writer of an output folder (a run's
  --out) for as long as it runs: a second process is refused at once with
  :class:`FolderInUse`, whose message names the first (pid, host, start, command).
- :func:`temp_name` names a temporary file or folder ``.<base>.<host>-<pid>.<tag>.tmp``;
  :func:`reclaim` removes those of `base` whose process (on this host) is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import shlex
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


#: the lock file that a folder's owner holds, and the file that says who that is
OWNER_LOCK = ".d2lft-owner.lock"
OWNER_INFO = ".d2lft-owner.json"
#: folders owned by a process that started this one (``d2lft train --nproc``'s workers)
OWNED_ENV = "D2LFT_OWNED_FOLDERS"
_OWNED: dict[str, list] = {}  # realpath -> [lock, depth], the folders this process owns


class FolderInUse(BlockingIOError):
    """Another process owns (is writing into) the folder."""


def _command(limit: int = 300) -> str:
    """This process's command line (the interpreter's name without its folder), cut to
    `limit` characters."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv) or ["python"]
    text = " ".join(shlex.join([pathlib.Path(argv[0]).name, *argv[1:]]).split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _owner_info(folder: pathlib.Path) -> str:
    """Who owns `folder`, as recorded by its owner (waiting a moment for an owner that
    has just taken the lock to record itself)."""
    end = time.monotonic() + 1.0
    while True:
        try:
            info = json.loads((folder / OWNER_INFO).read_text())
            return (
                f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > end:
                return "its details are not recorded"
            time.sleep(0.05)


#: the folders owned by the process that started this one (read once, at import)
_INHERITED = [k for k in os.environ.get(OWNED_ENV, "").split(os.pathsep) if k]


def _set_owned_env() -> None:
    """Tell the processes this one starts which folders it owns."""
    keys = list(dict.fromkeys(_INHERITED + [k for k, (lock, _) in _OWNED.items() if lock]))
    if keys:
        os.environ[OWNED_ENV] = os.pathsep.join(keys)
    else:
        os.environ.pop(OWNED_ENV, None)


@contextlib.contextmanager
def own_folder(folder, flag: str = ""):
    """Make this process the only writer of `folder` (created when missing) while the
    block runs, through a lock file in it (``fcntl.flock``: the system drops it when
    the process dies, even by SIGKILL). Another process that asks for the same folder
    meanwhile gets :class:`FolderInUse` at once, naming the owner (pid, host, start
    time, command); `flag` (e.g. ``"--out "``) prefixes the folder in that message.
    Re-entrant within a process, and inherited by the processes it starts (a
    distributed job's workers write where their launcher owns). A folder this call
    created and that is still empty afterwards is removed."""
    folder = pathlib.Path(folder).expanduser()
    key = os.path.realpath(folder)
    if key in _OWNED or key in _INHERITED:
        entry = _OWNED.setdefault(key, [None, 0])
        entry[1] += 1
        try:
            yield folder
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _OWNED[key]
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = _try_lock(folder / OWNER_LOCK)
    if lock is None:
        raise FolderInUse(
            f"{flag}{folder} is being written by another run ({_owner_info(folder)}); wait "
            f"for it to finish, stop it, or choose another output folder"
        )
    _OWNED[key] = [lock, 1]
    _set_owned_env()
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": _command(),
        }
        tmp = folder / temp_name(OWNER_INFO)
        tmp.write_text(json.dumps(info))
        os.replace(tmp, folder / OWNER_INFO)
        yield folder
    finally:
        del _OWNED[key]
        _set_owned_env()
        for name in (OWNER_INFO, OWNER_LOCK):  # removed while held (see _try_lock)
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
        lock.release()
        with contextlib.suppress(OSError):
            if created and not os.listdir(folder):
                os.rmdir(folder)


def _try_lock(path: pathlib.Path, tries: int = 20):
    """The lock file `path`, locked without waiting; None when another process holds
    it. Its owner removes it before letting go, so a lock taken on a file that has
    meanwhile been removed (or replaced) is let go and taken again on the file there."""
    for _ in range(tries):
        lock = filelock.FileLock(os.fspath(path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return None
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        try:
            current = os.stat(path)
            if fd is None or os.path.samestat(current, os.fstat(fd)):
                return lock
        except OSError:  # removed meanwhile
            pass
        lock.release()
    return None


__all__ = [
    "FolderInUse",
    "LockTimeout",
    "lock_timeout",
    "locked",
    "own_folder",
    "reclaim",
    "short_base",
    "temp_name",
]
