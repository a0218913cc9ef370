"""The data hub: the cache folder, checked downloads, safe extraction, the hotdog data.

Backend-neutral: no framework is imported here. Downloads go through pooch, which
writes to a temporary file, checks the hash and only then moves the file into place,
so a failed or corrupt download never leaves a file that is taken as data. Archives
are extracted into a temporary folder beside their destination and renamed into place.

Any number of processes may do this at once (a shared machine, a sweep in parallel
processes): each download and each extraction runs under a file lock, the process
that gets it first does the work, and the others find it done and use it. A finished
copy is never removed. Temporary files and folders carry their process's id, and
those of dead processes (killed during a download or an extraction) are reclaimed by
the next one.

Limits (environment variables, read when used):

- ``D2LFT_MAX_DOWNLOAD_MB``: the most a download may bring (default: about 1.5x the
  real hotdog.zip for the hotdog data, 4096 MB for other URLs);
- ``D2LFT_DOWNLOAD_TIMEOUT``: seconds a whole download may take, from the request
  to the last byte, headers included (default 3600); a server may also stay silent
  for at most 30 s;
- ``D2LFT_DOWNLOAD_SPEED_LIMIT`` and ``D2LFT_DOWNLOAD_SPEED_TIME`` (curl's
  ``--speed-limit`` and ``--speed-time``): a download that brings fewer than that many
  bytes per second (default 1024; 0 turns the check off) over the last that many
  seconds (default 60) is stopped;
- ``D2LFT_MAX_EXTRACT_MB`` (default 20480) and ``D2LFT_MAX_EXTRACT_RATIO`` (default
  100): the most an archive may extract to, in all and as a multiple of its own size
  (a "zip bomb" is refused before anything is written);
- ``D2LFT_MAX_EXTRACT_FILES`` (default 50000): the most entries (files and folders)
  an archive may hold; empty files weigh nothing but each takes an inode.

A value outside its allowed range (or 1e308) is refused with a message that names the
variable and the range.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import logging
import os
import pathlib
import re
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib

import pooch
import requests
import requests.adapters
from tqdm.auto import tqdm

from .._sys.atomic import set_default_mode
from .._sys.env import MAX_MB, MAX_SECONDS, env_number
from .._sys.errors import not_a_file
from .._sys.locks import locked, reclaim, short_base, temp_name
from .folders import EXPECTED_LAYOUT, DataLayoutError, check_splits, find_split_root

DATA_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"


HOTDOG_URL = DATA_HUB + "hotdog.zip"


HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"


HOME_ENV = "D2LFT_HOME"


URL_ENV = "D2LFT_DATA_URL"


PROGRESS_ENV = "D2LFT_PROGRESS"


MAX_DOWNLOAD_ENV = "D2LFT_MAX_DOWNLOAD_MB"


DOWNLOAD_TIMEOUT_ENV = "D2LFT_DOWNLOAD_TIMEOUT"


MAX_EXTRACT_ENV = "D2LFT_MAX_EXTRACT_MB"


MAX_RATIO_ENV = "D2LFT_MAX_EXTRACT_RATIO"


MAX_FILES_ENV = "D2LFT_MAX_EXTRACT_FILES"


SPEED_LIMIT_ENV = "D2LFT_DOWNLOAD_SPEED_LIMIT"


SPEED_TIME_ENV = "D2LFT_DOWNLOAD_SPEED_TIME"


#: the most the hotdog download may bring (the real hotdog.zip is about 260 MB)
HOTDOG_MAX_MB = 400
#: the most a download of another URL may bring, unless $D2LFT_MAX_DOWNLOAD_MB says
DEFAULT_MAX_DOWNLOAD_MB = 4096
DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
DEFAULT_MAX_EXTRACT_MB = 20480
DEFAULT_MAX_RATIO = 100.0
#: the most entries an archive may hold (the hotdog data has about 2,500)
DEFAULT_MAX_FILES = 50_000
#: a download must bring at least this many bytes per second ...
DEFAULT_SPEED_LIMIT = 1024.0
#: ... over the last this many seconds
DEFAULT_SPEED_TIME = 60.0
#: seconds a server may stay silent (connecting, or between two reads)
_SILENCE = 30.0
#: the zip compression methods Python's zipfile reads
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_ZIP_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 93: "zstandard", 98: "ppmd"}


_MARKER = ".d2lft-extracted"


_HTTP_SCHEMES = ("http", "https")


_CHUNK = 1 << 20


_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    getattr(errno, "EDQUOT", -1),
}


class DownloadError(OSError):
    """A download failed; the message names the URL and how to place the file by hand."""


class CacheError(OSError):
    """The cache folder cannot be made or written (read-only, full, not a folder); the
    message names the folder and how to choose another ($D2LFT_HOME)."""


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _cache_write_error(folder, err: OSError, doing: str) -> CacheError:
    """A CacheError saying that `doing` in the cache folder `folder` failed with `err`."""
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "it is on a read-only file system",
        errno.EACCES: "it is not writable",
        errno.EPERM: "it is not writable",
        errno.ENOTDIR: "a part of its path is a file",
        errno.EEXIST: "a file is in the way",
    }.get(getattr(err, "errno", None), str(err))
    if getattr(err, "errno", None) == getattr(errno, "EDQUOT", -1):
        why = "the disk quota is exhausted"
    return CacheError(
        f"cannot write the d2lft cache folder {folder} while {doing}: {why} ({err}). "
        f"Free some space, or set ${HOME_ENV} (or pass root=) to a writable folder"
    )


def cache_dir(root=None) -> pathlib.Path:
    """The folder that holds downloads: `root`, else $D2LFT_HOME, else a per-user cache
    (pooch's `os_cache('d2lft')`, e.g. ~/.cache/d2lft). Created when missing."""
    if root is None or root == "":
        root = os.environ.get(HOME_ENV) or None
    if root is None:
        root = pooch.os_cache("d2lft")
    path = pathlib.Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise CacheError(
            f"the d2lft cache folder {path} is a file, not a folder; set ${HOME_ENV} "
            f"(or pass root=) to a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(
            f"cannot create the d2lft cache folder {path} ({err}); pass root= or set "
            f"${HOME_ENV} to a writable folder"
        ) from err
    return path


def file_sha1(path) -> str:
    """The SHA-1 of a file, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha1(sha1) -> str:
    if not isinstance(sha1, str) or not re.fullmatch(r"[0-9a-fA-F]{40}", sha1.strip()):
        raise ValueError(f"sha1 must be the 40 hex digits of a SHA-1, got {sha1!r}")
    return sha1.strip().lower()


def _local_source(url: str):
    """The local path named by `url` (`file://...` or a plain path), else None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return pathlib.Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):  # C:\...
        return pathlib.Path(url).expanduser()
    return None


class _Watchdog:
    """Ends a download that runs past its deadline, or that brings fewer than
    `speed_limit` bytes per second over the last `speed_time` seconds (curl's
    ``--speed-limit``/``--speed-time``; 0 turns that check off).

    A thread looks every fraction of a second; when a limit is passed it shuts down
    every socket the download opened (:meth:`watch`: a duplicate of each, so TLS
    wrapping does not hide them), so a read blocked on the headers or on the body
    returns at once. `reason` then says which limit ended it. Read timeouts alone
    cannot do this: a server that sends a byte now and then never trips them."""

    def __init__(self, deadline: float, speed_limit: float, speed_time: float):
        self.deadline, self.speed_limit, self.speed_time = deadline, speed_limit, speed_time
        self.start = time.monotonic()
        self.received = 0  # body bytes so far (the reader adds to it)
        self.reason: str | None = None  # "deadline" or "slow" once a limit ended it
        self.window = 0  # bytes that came over the last speed_time seconds, when slow
        self._samples = collections.deque([(self.start, 0)])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._tick = max(0.05, min(1.0, deadline / 20, speed_time / 20))
        self._thread = threading.Thread(target=self._run, name="d2lft-download", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket) -> None:
        """Let the watchdog end `sock`'s connection (a new socket of the download)."""
        dup = sock.dup()
        with self._lock:
            self._sockets.append(dup)
            late = self.reason is not None
        if late:
            self._shut([dup])

    def _limit_passed(self) -> str | None:
        now = time.monotonic()
        if now - self.start > self.deadline:
            return "deadline"
        if self.speed_limit > 0:
            edge = now - self.speed_time  # the window's start
            while len(self._samples) > 1 and self._samples[1][0] <= edge:
                self._samples.popleft()  # keep the newest sample at or before the edge
            then, count = self._samples[0]
            if then <= edge and self.received - count < self.speed_limit * self.speed_time:
                self.window = self.received - count
                return "slow"
        self._samples.append((now, self.received))
        return None

    @staticmethod
    def _shut(sockets) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        while not self._done.wait(self._tick):
            reason = self._limit_passed()
            if reason is not None:
                with self._lock:
                    self.reason = reason
                    sockets = list(self._sockets)
                self._shut(sockets)
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _watched_pool(pool, dog: _Watchdog):
    """`pool` (urllib3), its new connections' sockets shown to `dog` as they open."""
    base = pool.ConnectionCls
    if getattr(base, "_d2lft_dog", None) is not dog:

        class Watched(base):
            _d2lft_dog = dog

            def _new_conn(self):
                sock = super()._new_conn()
                dog.watch(sock)
                return sock

        pool.ConnectionCls = Watched
    return pool


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' HTTP adapter, its connections' sockets shown to a :class:`_Watchdog`."""

    def __init__(self, dog: _Watchdog):
        self.dog = dog
        super().__init__()

    def get_connection_with_tls_context(self, *args, **kwargs):  # requests >= 2.32
        return _watched_pool(super().get_connection_with_tls_context(*args, **kwargs), self.dog)

    def get_connection(self, *args, **kwargs):  # older requests
        return _watched_pool(super().get_connection(*args, **kwargs), self.dog)


class _LimitedHTTPDownloader:
    """A pooch downloader (http/https) that stops a body larger than `max_bytes`, a
    download (headers included) that lasts longer than `deadline` seconds, and one
    slower than `speed_limit` bytes/s over `speed_time` seconds (see
    :class:`_Watchdog`), and shows a tqdm bar if asked."""

    def __init__(
        self,
        max_bytes: int,
        deadline: float,
        progressbar: bool,
        speed: tuple[float, float] = (0.0, DEFAULT_SPEED_TIME),
    ):
        self.max_bytes = int(max_bytes)
        self.deadline = float(deadline)
        self.progressbar = progressbar
        self.speed_limit, self.speed_time = speed

    def too_large(self, url, size) -> DownloadError:
        return DownloadError(
            f"{url} sends more than {_mb(self.max_bytes)} ({size}), more than this "
            f"download may bring; it was stopped and nothing was kept. If the file really "
            f"is that large (a mirror of another file), raise ${MAX_DOWNLOAD_ENV} (MB)"
        )

    def stopped(self, url, dog: _Watchdog) -> DownloadError:
        """Why `dog` ended the download of `url`."""
        if dog.reason == "slow":
            return DownloadError(
                f"{url} brought {dog.window:,} bytes in the last {dog.speed_time:g} s, "
                f"slower than the {dog.speed_limit:g} bytes/s a download must keep "
                f"({_mb(dog.received)} received in all); it was stopped and nothing was "
                f"kept. On a slow connection lower ${SPEED_LIMIT_ENV} (bytes per second, "
                f"0: no limit) or raise ${SPEED_TIME_ENV} (seconds), or place the file by hand"
            )
        return DownloadError(
            f"{url} did not finish within {self.deadline:g} s ({_mb(dog.received)} "
            f"received); it was stopped and nothing was kept. On a slow connection raise "
            f"${DOWNLOAD_TIMEOUT_ENV} (seconds), or place the file by hand"
        )

    def __call__(self, url, output_file, pooch_obj=None):
        dog = _Watchdog(self.deadline, self.speed_limit, self.speed_time)
        try:
            with requests.Session() as session:
                adapter = _WatchedAdapter(dog)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._get(session, url, output_file, dog)
        except DownloadError:
            raise
        except Exception as err:  # a socket the watchdog shut: requests' or urllib3's error
            if dog.reason is not None:
                raise self.stopped(url, dog) from err
            raise
        finally:
            dog.close()
        if dog.reason is not None:  # the body was cut short without an error
            raise self.stopped(url, dog)

    def _get(self, session, url, output_file, dog: _Watchdog) -> None:
        silence = min(_SILENCE, self.deadline)
        with session.get(url, stream=True, timeout=(silence, silence)) as r:
            r.raise_for_status()
            length = r.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            if total is not None and total > self.max_bytes:
                raise self.too_large(url, f"it announces {_mb(total)}")
            bar = None
            if self.progressbar:
                bar = tqdm(total=total, unit="B", unit_scale=True, ncols=79, leave=True)
            read = getattr(r.raw, "read1", None)  # urllib3 >= 2: returns what has come
            chunks = (
                iter(lambda: read(_CHUNK, decode_content=True), b"")
                if read is not None
                else r.iter_content(chunk_size=1 << 14)
            )
            try:
                with open(output_file, "wb") as f:
                    for chunk in chunks:
                        dog.received += len(chunk)
                        if dog.received > self.max_bytes:
                            raise self.too_large(url, "the body did not end")
                        if dog.reason is not None:
                            raise self.stopped(url, dog)
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()


def _max_download_bytes(default_mb: float) -> int:
    return int(env_number(MAX_DOWNLOAD_ENV, default_mb, high=MAX_MB, unit="MiB") * 2**20)


def _download_limits() -> tuple[float, tuple[float, float]]:
    """($D2LFT_DOWNLOAD_TIMEOUT, ($D2LFT_DOWNLOAD_SPEED_LIMIT, $D2LFT_DOWNLOAD_SPEED_TIME))."""
    deadline = env_number(
        DOWNLOAD_TIMEOUT_ENV, DEFAULT_DOWNLOAD_TIMEOUT, high=MAX_SECONDS, unit="seconds"
    )
    limit = env_number(
        SPEED_LIMIT_ENV, DEFAULT_SPEED_LIMIT, low_ok=True, high=2**40, unit="bytes per second"
    )
    span = env_number(SPEED_TIME_ENV, DEFAULT_SPEED_TIME, high=MAX_SECONDS, unit="seconds")
    return deadline, (limit, span)


def _downloader(url: str, progressbar: bool, max_bytes: int | None = None):
    """A downloader for `url`: the limited HTTP downloader above (1 MiB reads), pooch's
    for FTP, or a copier for a local file."""
    source = _local_source(url)
    if source is not None:

        def copy(_url, output_file, _pooch=None):
            shutil.copyfile(source, output_file)  # a FIFO or device: SpecialFileError

        return copy
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in _HTTP_SCHEMES:
        if max_bytes is None:
            max_bytes = _max_download_bytes(DEFAULT_MAX_DOWNLOAD_MB)
        deadline, speed = _download_limits()
        return _LimitedHTTPDownloader(max_bytes, deadline, progressbar, speed)
    if scheme == "ftp":
        return pooch.FTPDownloader(progressbar=progressbar, chunk_size=_CHUNK, timeout=_SILENCE)
    raise ValueError(
        f"cannot download {url!r}: the address must start with http://, "
        f"https://, ftp:// or file://, or be a local file path"
    )


def _want_progressbar() -> bool:
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def aside_path(path: pathlib.Path, digest: str) -> pathlib.Path:
    """Where :func:`set_aside` moves `path` when its SHA-1 is `digest`:
    ``NAME.sha1-DIGEST12.SUFFIX`` beside it (``hotdog.sha1-0123456789ab.zip``)."""
    return path.with_name(f"{path.stem}.sha1-{digest[:12]}{path.suffix}")


def set_aside(path: pathlib.Path, digest: str) -> pathlib.Path:
    """Move `path` (a file found where another was expected, e.g. placed by hand or
    loaded from another source) out of the way, keeping it: files that d2lft did not
    write are never deleted. Returns where it went (see :func:`aside_path`)."""
    aside = aside_path(path, digest)
    os.replace(path, aside)  # the same SHA-1 at `aside`: the same bytes
    return aside


def _by_hand(url, target, sha1) -> str:
    return (
        f"To work offline, download {url} elsewhere and place it at {target} "
        f"(SHA-1 {sha1}); d2lft then uses it without network access. Or point d2lft "
        f"at a mirror with url=... or ${URL_ENV}."
    )


def fetch(
    url: str,
    sha1: str,
    root=None,
    fname=None,
    progressbar=None,
    *,
    max_mb: float | None = None,
) -> pathlib.Path:
    """Download `url` into the cache folder once, checked against `sha1`; return the path.

    A file already in the cache with the right hash is reused without network access
    (so a file placed there by hand works offline). A downloaded file is written to a
    temporary file and moved into place only when its SHA-1 matches; a file with the
    wrong hash is never used: a downloaded one is discarded, one found in the cache (placed
    there by hand, or fetched for another hash) is moved aside with a warning that says
    where (:func:`set_aside`), and put back when its own hash is asked for. `url` may be
    http(s)://, ftp://, file:// or a local path. An HTTP download is stopped beyond
    `max_mb` (default $D2LFT_MAX_DOWNLOAD_MB, else 4096) and beyond
    $D2LFT_DOWNLOAD_TIMEOUT seconds (default 3600, headers included), and when it
    brings less than $D2LFT_DOWNLOAD_SPEED_LIMIT bytes/s (default 1024) over the last
    $D2LFT_DOWNLOAD_SPEED_TIME seconds (default 60). Processes that fetch the same file
    at once download it once (a file lock). Raises DownloadError naming the URL and
    where to place the file by hand.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    url = url.strip()
    sha1 = _check_sha1(sha1)
    folder = cache_dir(root)
    fname = fname or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    target = folder / fname
    if progressbar is None:
        progressbar = _want_progressbar()
    max_bytes = None if max_mb is None else _max_download_bytes(max_mb)
    downloader = _downloader(url, progressbar, max_bytes)  # ValueError: unsupported address
    if target.is_file() and file_sha1(target) == sha1:
        return target  # no lock needed: a file in place is complete (it was renamed there)
    try:
        with locked(folder / f".{short_base(fname)}.lock", f"downloading {fname}") as held:
            path = _fetch_locked(url, sha1, folder, fname, downloader, progressbar)
            held.done()
            return path
    except CacheError:
        raise
    except OSError as err:
        if getattr(err, "errno", None) in _WRITE_ERRNOS and not isinstance(err, DownloadError):
            raise _cache_write_error(folder, err, f"downloading {url}") from err
        raise


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _fetch_locked(url, sha1, folder, fname, downloader, progressbar) -> pathlib.Path:
    """:func:`fetch`'s work, under its lock: reuse, or download into a staging folder
    of this process and rename into place."""
    target = folder / fname
    reclaim(folder, fname)  # staging folders of killed downloads
    stale = ""
    if target.is_file():
        found = file_sha1(target)
        if found == sha1:  # another process downloaded it while this one waited
            return target
        aside = set_aside(target, found)
        stale = (
            f" The file that was at {target} had SHA-1 {found}, not {sha1}, so it "
            f"was not used; it was moved to {aside}."
        )
        warnings.warn(stale.strip(), stacklevel=4)
    kept = aside_path(target, sha1)
    if kept.is_file() and file_sha1(kept) == sha1:  # set aside earlier: put it back
        os.replace(kept, target)
        return target
    staging = folder / temp_name(fname)
    log = pooch.get_logger()
    try:
        staging.mkdir()
        log.info("Downloading data from '%s' to file '%s'.", url, str(target))
        # pooch would name the staging folder: its INFO lines are dropped meanwhile (a
        # filter, not setLevel: pooch's logger lives outside logging's manager, which
        # then never clears its cached "INFO is enabled" after a first message)
        quiet = _below_warning
        log.addFilter(quiet)
        try:
            path = pooch.retrieve(
                url,
                known_hash=f"sha1:{sha1}",
                fname=fname,
                path=staging,
                downloader=downloader,
                progressbar=progressbar,
            )
        finally:
            log.removeFilter(quiet)
        set_default_mode(path)  # pooch's temporary file was 0600: give it open()'s mode
        os.replace(path, target)
    except DownloadError:  # our own limits: the message says it all
        raise
    except ValueError as err:  # pooch: hash mismatch (its temporary file is already gone)
        raise DownloadError(
            f"{url} served a file whose SHA-1 does not match {sha1}; it was discarded and "
            f"nothing was kept in {folder}. If this mirror's file is the one you want, pass "
            f"its sha1=...; otherwise use the genuine file.{stale} "
            f"{_by_hand(url, target, sha1)}"
        ) from err
    except Exception as err:  # requests' and ftplib's errors, a missing local file, a full disk
        if isinstance(err, OSError) and getattr(err, "errno", None) in _WRITE_ERRNOS:
            raise DownloadError(
                f"could not write {target} while downloading {url}: {err}. "
                f"Free some disk space or choose another cache folder with "
                f"root=... or ${HOME_ENV}."
            ) from err
        raise DownloadError(
            f"could not download {url}: {err}.{stale} {_by_hand(url, target, sha1)}"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unsafe_entry(name: str) -> bool:
    norm = name.replace("\\", "/")
    parts = pathlib.PurePosixPath(norm).parts
    return norm.startswith("/") or ".." in parts or (bool(parts) and ":" in parts[0])


def _stamp_ok(dest: pathlib.Path, marker) -> bool:
    stamp = dest / _MARKER
    return dest.is_dir() and stamp.is_file() and (marker is None or stamp.read_text() == marker)


def _entry_problems(archive, infos, dest) -> None:
    """Refuse, before anything is written, an archive whose entries d2lft cannot
    extract faithfully: names that leave `dest`, encrypted entries, compression
    methods Python cannot read, names too long for a file system, a name that is both
    a file and a folder."""

    def refuse(what, names, fix):
        shown = ", ".join(repr(n) for n in names[:3]) + (" ..." if len(names) > 3 else "")
        raise DataLayoutError(
            f"{archive} holds {what} ({shown}); refusing to extract it, nothing was written. {fix}"
        )

    fix = "Extract it with another tool and pass the folder, or re-create the zip"
    bad = [i.filename for i in infos if _unsafe_entry(i.filename)]
    if bad:
        refuse(f"unsafe entries (absolute paths or '..' that would write outside {dest})", bad, "")
    locked_ = [i.filename for i in infos if i.flag_bits & 0x1]
    if locked_:
        refuse(
            "encrypted (password-protected) entries",
            locked_,
            "Re-create the zip without a password, or extract it yourself and pass the folder",
        )
    odd = [
        f"{i.filename} ({_ZIP_METHOD_NAMES.get(i.compress_type, f'method {i.compress_type}')})"
        for i in infos
        if i.compress_type not in _ZIP_METHODS
    ]
    if odd:
        refuse(
            "entries compressed with a method Python's zipfile cannot read",
            odd,
            f"{fix} with {', '.join(_ZIP_METHODS.values())} compression",
        )
    long_ = [
        i.filename
        for i in infos
        if any(len(os.fsencode(part)) > 255 for part in i.filename.replace("\\", "/").split("/"))
    ]
    if long_:
        refuse("names longer than 255 bytes, which no common file system allows", long_, fix)
    files, folders = set(), set()
    for i in infos:
        parts = pathlib.PurePosixPath(i.filename.replace("\\", "/")).parts
        for k in range(1, len(parts)):
            folders.add(parts[:k])
        (folders if i.is_dir() else files).add(parts)
    clash = sorted("/".join(p) for p in files & folders)
    if clash:
        refuse("names that are both a file and a folder", clash, fix)


def _extract_limits(archive: pathlib.Path, infos) -> int:
    """The bytes the archive extracts to; DataLayoutError (a "zip bomb") when it holds
    more than $D2LFT_MAX_EXTRACT_FILES entries (empty files weigh nothing, but each
    takes an inode), or extracts to more than $D2LFT_MAX_EXTRACT_MB or more than
    $D2LFT_MAX_EXTRACT_RATIO times the archive's own size. zipfile never writes more
    than an entry's recorded size (it stops there and checks the CRC), so the recorded
    sizes bound what is written."""
    most = env_number(MAX_FILES_ENV, DEFAULT_MAX_FILES, integer=True, high=10**9, unit="entries")
    if len(infos) > most:
        raise DataLayoutError(
            f"{archive} holds {len(infos):,} entries (files and folders), more than the "
            f"{most:,} allowed; refusing to extract it, nothing was written. If you trust "
            f"it, raise ${MAX_FILES_ENV}"
        )
    total = sum(i.file_size for i in infos)
    cap = env_number(MAX_EXTRACT_ENV, DEFAULT_MAX_EXTRACT_MB, high=MAX_MB, unit="MiB") * 2**20
    ratio_cap = env_number(MAX_RATIO_ENV, DEFAULT_MAX_RATIO, high=10**6, unit="times")
    size = max(archive.stat().st_size, 1)
    if total > cap:
        raise DataLayoutError(
            f"{archive} would extract to {_mb(total)}, more than the {_mb(cap)} allowed; "
            f"refusing to extract it, nothing was written. If you trust it, raise "
            f"${MAX_EXTRACT_ENV} (MB)"
        )
    if total / size > ratio_cap:
        raise DataLayoutError(
            f"{archive} ({_mb(size)}) would extract to {_mb(total)}, {total / size:,.0f} "
            f'times its size (a "zip bomb"; image archives hardly compress); refusing to '
            f"extract it, nothing was written. If you trust it, raise "
            f"${MAX_RATIO_ENV} (default {DEFAULT_MAX_RATIO:g})"
        )
    return total


def _check_space(folder: pathlib.Path, need: int, archive) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise CacheError(
            f"extracting {archive} needs {_mb(need)} but only {_mb(free)} is free in "
            f"{folder}; free some space, or set ${HOME_ENV} to a folder on another disk"
        )


def _discard(path: pathlib.Path) -> None:
    """Remove a stale folder (or file) `path`: renamed first to a temporary name of this
    process, so that a kill in the middle leaves a leftover that is reclaimed later,
    never a half-removed folder under the real name."""
    if not os.path.lexists(path):
        return
    aside = path.parent / temp_name(path.name)
    os.replace(path, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def extract_zip(archive, dest, *, marker=None, check=None) -> pathlib.Path:
    """Extract `archive` into folder `dest` once, safely and atomically; return `dest`.

    Entries with absolute paths, drive letters or `..`, encrypted entries, compression
    methods Python cannot read, and an archive larger than the limits (see the module
    text) are refused before anything is written (DataLayoutError), so nothing lands
    outside `dest`. Extraction goes to a temporary folder beside `dest` that is renamed
    into place, so an interrupted or failed extraction never leaves a half-filled
    folder. `check(folder)`, if given, validates the extracted tree before it is put
    in place. `marker` (e.g. the archive's hash) is recorded; a later call with the
    same marker does nothing. Concurrent calls (threads or processes) extract once: the
    others wait for the lock and find `dest` done; a finished `dest` is never removed.
    """
    archive = pathlib.Path(archive)
    dest = pathlib.Path(dest)
    if _stamp_ok(dest, marker):
        return dest
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError) as err:
        raise DataLayoutError(
            f"{archive} is not a readable zip archive ({err}): it is "
            f"truncated or not a zip file. Delete it and download it again, "
            f"or pass the extracted folder instead"
        ) from err
    with zf:
        infos = zf.infolist()
        _entry_problems(archive, infos, dest)
        total = _extract_limits(archive, infos)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            lock = dest.parent / f".{short_base(dest.name)}.lock"
            with locked(lock, f"extracting {archive}") as held:
                if not _stamp_ok(dest, marker):  # else another process extracted it meanwhile
                    reclaim(dest.parent, dest.name)  # temporary folders of killed extractions
                    _check_space(dest.parent, total, archive)
                    try:
                        _extract_locked(zf, archive, dest, marker, check)
                    except DataLayoutError:  # the archive's fault: nothing to keep a lock for
                        held.done()
                        raise
                held.done()
        except (CacheError, DataLayoutError):
            raise
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                raise DataLayoutError(
                    f"{archive} holds a name too long for the file system of {dest.parent} "
                    f"({err}); nothing was kept. Shorten the names in the archive, or "
                    f"extract it yourself and pass the folder"
                ) from err
            if err.errno in _WRITE_ERRNOS or err.errno in (errno.EPERM, errno.ENOTDIR):
                raise _cache_write_error(dest.parent, err, f"extracting {archive}") from err
            raise
    return dest


def _extract_locked(zf, archive, dest, marker, check) -> None:
    """:func:`extract_zip`'s work, under its lock."""
    tmp = dest.parent / temp_name(dest.name)
    tmp.mkdir()
    try:
        set_default_mode(tmp)
        try:
            zf.extractall(tmp)
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise DataLayoutError(
                f"{archive} is truncated or corrupt ({err}); delete it and download it again"
            ) from err
        except (NotImplementedError, RuntimeError) as err:  # methods, encryption
            raise DataLayoutError(
                f"{archive} cannot be extracted by Python's zipfile ({err}); nothing was "
                f"kept. Extract it with another tool and pass the folder"
            ) from err
        if check is not None:
            try:
                check(tmp)
            except DataLayoutError as err:  # name the archive, not the temporary folder
                raise DataLayoutError(
                    f"{archive} does not hold the expected data, so nothing extracted from it "
                    f"was kept: " + str(err).replace(str(tmp), "(the archive)")
                ) from err
        (tmp / _MARKER).write_text(marker or "")
        _discard(dest)  # stale: no stamp, or another archive's (under the lock: not in use)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def archive_dest(archive: pathlib.Path, digest: str) -> pathlib.Path:
    """Where an archive with SHA-1 `digest` is extracted in the cache: its name (cut
    to 64 characters, so that long names stay within file-name limits) and digest."""
    return cache_dir() / "archives" / f"{archive.stem[:64]}-{digest[:16]}"


def resolve_data_dir(data_dir, min_classes=2) -> pathlib.Path:
    """A folder with train/ and test/ class folders, from a folder or a .zip of one.

    A .zip is extracted once (safely; see :func:`extract_zip`) into the cache folder
    under a name that includes its SHA-1. Raises DataLayoutError showing the expected
    layout when the folder does not have it, or the two splits' classes differ.
    """
    if data_dir is None or data_dir == "":
        raise ValueError(
            f"data_dir must be a folder or a .zip archive, got {data_dir!r}; {EXPECTED_LAYOUT}"
        )
    path = pathlib.Path(data_dir).expanduser()
    if not path.exists():
        raise DataLayoutError(
            f"{path} does not exist; pass a folder or a .zip archive with "
            f"this layout. {EXPECTED_LAYOUT}"
        )
    if not path.is_dir() and not_a_file(path):  # a FIFO, a device: never opened
        raise DataLayoutError(
            f"{path} is {not_a_file(path)}; pass a folder or a .zip archive of one"
        )
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DataLayoutError(
                f"{path} is a file but not a .zip archive; pass a folder or "
                f"a .zip archive. {EXPECTED_LAYOUT}"
            )
        digest = file_sha1(path)
        check = functools.partial(check_splits, min_classes=min_classes)
        path = extract_zip(path, archive_dest(path, digest), marker=digest, check=check)
    return check_splits(path, min_classes)


#: the source of the last :func:`download_hotdog` (``d2lft.load_hotdog``) call of this
#: process, which training uses when it is given no data (:func:`default_data`)
_last_source: dict | None = None


def download_hotdog(
    root: str | os.PathLike | None = None, *, url: str | None = None, sha1: str | None = None
) -> pathlib.Path:
    """Download (once) and extract (once) d2l's hotdog.zip; return the `hotdog` folder.

    `root`: cache folder (default $D2LFT_HOME, else a per-user cache). `url`: a mirror
    (default $D2LFT_DATA_URL, else d2l's data hub; http(s)://, ftp://, file:// or a
    local path). `sha1`: the archive's SHA-1 (default the real hotdog.zip's); a file
    that does not match it is never used (see :func:`fetch`). Offline: place
    hotdog.zip in the cache folder by hand. The source is remembered: training given
    no data uses it (:func:`default_data`).
    """
    global _last_source
    url = url or os.environ.get(URL_ENV) or HOTDOG_URL
    sha1 = _check_sha1(sha1 or HOTDOG_SHA1)
    folder = cache_dir(root)
    extracted = folder / "hotdog.extracted"
    if not _stamp_ok(extracted, sha1):
        cap = HOTDOG_MAX_MB if sha1 == HOTDOG_SHA1 else None  # the real file's size is known
        archive = fetch(url, sha1, root=folder, fname="hotdog.zip", max_mb=cap)
        extract_zip(
            archive, extracted, marker=sha1, check=functools.partial(check_splits, min_classes=2)
        )
    hotdog = extracted / "hotdog"
    if not hotdog.is_dir():
        hotdog = find_split_root(extracted)
    hotdog = resolve_data_dir(hotdog)
    _last_source = {"root": folder, "url": url, "sha1": sha1}
    return hotdog


def default_data() -> pathlib.Path:
    """The data that training uses when it is given none: what the last
    :func:`download_hotdog` (``d2lft.load_hotdog``) call of this process loaded (from
    its cache, extracted again from its source only if that copy is gone), else d2l's
    hotdog data. What a user loaded is what trains."""
    return download_hotdog(**(_last_source or {}))
