"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

Temporary files are made private (0600) whatever the umask; what d2lft renames into
place is given the mode that a plain `open()` / `os.mkdir()` would have given it
instead (:func:`default_file_mode`, :func:`default_dir_mode`), and a file that
replaces an existing one keeps that file's permission bits, as overwriting it in
place would.

Temporary names record the process that made them (:func:`d2lft._sys.locks.temp_name`):
the next write of the same file removes those of processes that are gone (a
checkpoint save killed by SIGKILL leaves one), never a live process's.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import threading

from .locks import reclaim, temp_name

_UMASK_LOCK = threading.Lock()


def _umask_from_proc():
    """The umask from the `Umask:` line of /proc/self/status (Linux >= 4.7), else None."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux:
    /proc/self/status); elsewhere set and restored at once, under a lock."""
    mask = _umask_from_proc()
    if mask is not None:
        return mask
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, 'w')` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The mode `os.mkdir(path)` gives a new folder: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def set_default_mode(path) -> None:
    """Give `path` (a file or a folder, e.g. a private temporary one) the mode that a plain
    `open()` / `os.mkdir()` would have given it under the current umask."""
    path = pathlib.Path(path)
    os.chmod(path, default_dir_mode() if path.is_dir() else default_file_mode())


def _mode_for(path: pathlib.Path) -> int:
    """The mode for a file about to replace `path`: its permission bits when it exists
    (as overwriting it with open() keeps them), else the default for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        return default_file_mode()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path` atomically,
    on error it is removed and `path` is left as it was. The new file gets the mode of
    the file it replaces, else the umask's default (not the temporary file's 0600)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reclaim(path.parent, path.name)  # what killed writes of this file left
    tmp = path.parent / temp_name(path.name)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:  # a read-only or full folder: name the file asked for
        raise type(err)(err.errno, err.strerror, os.fspath(path)) from err
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(path))
            os.replace(tmp, path)
        except OSError as err:  # a full disk, a folder in the way: name the file asked for
            if err.errno is None or err.filename not in (None, os.fspath(tmp)):
                raise
            raise type(err)(err.errno, err.strerror, os.fspath(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
