"""The data hub: the cache folder, checked downloads, safe extraction, the hotdog data.

Backend-neutral: no framework is imported here. Downloads go through pooch, which
writes to a temporary file, checks the hash and only then moves the file into place,
so a failed or corrupt download never leaves a file that is taken as data. Archives
are extracted into a temporary folder beside their destination and renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib

import pooch

from .._sys.atomic import set_default_mode
from .folders import EXPECTED_LAYOUT, DataLayoutError, check_splits, find_split_root

DATA_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"


HOTDOG_URL = DATA_HUB + "hotdog.zip"


HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"


HOME_ENV = "D2LFT_HOME"


URL_ENV = "D2LFT_DATA_URL"


PROGRESS_ENV = "D2LFT_PROGRESS"


_MARKER = ".d2lft-extracted"


_HTTP_SCHEMES = ("http", "https")


_CHUNK = 1 << 20


_WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, getattr(errno, "EDQUOT", -1)}


class DownloadError(OSError):
    """A download failed; the message names the URL and how to place the file by hand."""


def cache_dir(root=None) -> pathlib.Path:
    """The folder that holds downloads: `root`, else $D2LFT_HOME, else a per-user cache
    (pooch's `os_cache('d2lft')`, e.g. ~/.cache/d2lft). Created when missing."""
    if root is None or root == "":
        root = os.environ.get(HOME_ENV) or None
    if root is None:
        root = pooch.os_cache("d2lft")
    path = pathlib.Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
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


def _downloader(url: str, progressbar: bool):
    """pooch's downloader for `url` (1 MiB chunks), or a copier for a local file."""
    source = _local_source(url)
    if source is not None:

        def copy(_url, output_file, _pooch=None):
            shutil.copyfile(source, output_file)

        return copy
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in _HTTP_SCHEMES:
        return pooch.HTTPDownloader(progressbar=progressbar, chunk_size=_CHUNK)
    if scheme == "ftp":
        return pooch.FTPDownloader(progressbar=progressbar, chunk_size=_CHUNK)
    raise ValueError(
        f"cannot download {url!r}: the address must start with http://, "
        f"https://, ftp:// or file://, or be a local file path"
    )


def _want_progressbar() -> bool:
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def _remove(path: pathlib.Path):
    path.unlink(missing_ok=True)


def _by_hand(url, target, sha1) -> str:
    return (
        f"To work offline, download {url} elsewhere and place it at {target} "
        f"(SHA-1 {sha1}); d2lft then uses it without network access. Or point d2lft "
        f"at a mirror with url=... or ${URL_ENV}."
    )


def fetch(url: str, sha1: str, root=None, fname=None, progressbar=None) -> pathlib.Path:
    """Download `url` into the cache folder once, checked against `sha1`; return the path.

    A file already in the cache with the right hash is reused without network access
    (so a file placed there by hand works offline). A downloaded file is written to a
    temporary file and moved into place only when its SHA-1 matches; a file with the
    wrong hash (downloaded, or found in the cache) is never used nor kept. `url` may be
    http(s)://, ftp://, file:// or a local path. Raises DownloadError naming the URL and
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
    downloader = _downloader(url, progressbar)  # ValueError for an unsupported address
    stale = ""
    cached = False
    if target.is_file():
        found = file_sha1(target)
        cached = found == sha1
        if found != sha1:  # pooch replaces it; say so if that fails
            stale = (
                f" The file already at {target} had SHA-1 {found}, not {sha1}, so it "
                f"was not used and has been removed."
            )
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha1:{sha1}",
            fname=fname,
            path=folder,
            downloader=downloader,
            progressbar=progressbar,
        )
    except ValueError as err:  # pooch: hash mismatch (its temporary file is already gone)
        _remove(target)
        raise DownloadError(
            f"{url} served a file whose SHA-1 does not match {sha1}; it was discarded and "
            f"nothing was kept in {folder}. If this mirror's file is the one you want, pass "
            f"its sha1=...; otherwise use the genuine file.{stale} "
            f"{_by_hand(url, target, sha1)}"
        ) from err
    except Exception as err:  # requests' and ftplib's errors, a missing local file, a full disk
        _remove(target)
        if isinstance(err, OSError) and getattr(err, "errno", None) in _WRITE_ERRNOS:
            raise DownloadError(
                f"could not write {target} while downloading {url}: {err}. "
                f"Free some disk space or choose another cache folder with "
                f"root=... or ${HOME_ENV}."
            ) from err
        raise DownloadError(
            f"could not download {url}: {err}.{stale} {_by_hand(url, target, sha1)}"
        ) from err
    path = pathlib.Path(path)
    if not cached:  # pooch's temporary file was 0600: give it open()'s mode
        set_default_mode(path)
    return path


def _unsafe_entry(name: str) -> bool:
    norm = name.replace("\\", "/")
    parts = pathlib.PurePosixPath(norm).parts
    return norm.startswith("/") or ".." in parts or (bool(parts) and ":" in parts[0])


def _stamp_ok(dest: pathlib.Path, marker) -> bool:
    stamp = dest / _MARKER
    return dest.is_dir() and stamp.is_file() and (marker is None or stamp.read_text() == marker)


def extract_zip(archive, dest, *, marker=None, check=None) -> pathlib.Path:
    """Extract `archive` into folder `dest` once, safely and atomically; return `dest`.

    Entries with absolute paths, drive letters or `..` are refused before anything is
    written (DataLayoutError), so nothing lands outside `dest`. Extraction goes to a
    temporary folder beside `dest` that is renamed into place, so an interrupted or
    failed extraction never leaves a half-filled folder. `check(folder)`, if given,
    validates the extracted tree before it is put in place. `marker` (e.g. the
    archive's hash) is recorded; a later call with the same marker does nothing.
    """
    archive = pathlib.Path(archive)
    dest = pathlib.Path(dest)
    if _stamp_ok(dest, marker):
        return dest
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataLayoutError(
            f"{archive} is not a readable zip archive ({err}): it is "
            f"truncated or not a zip file. Delete it and download it again, "
            f"or pass the extracted folder instead"
        ) from err
    with zf:
        bad = [i.filename for i in zf.infolist() if _unsafe_entry(i.filename)]
        if bad:
            raise DataLayoutError(
                f"{archive} holds unsafe entries {bad[:3]} (absolute paths "
                f"or '..' that would write outside {dest}); refusing to "
                f"extract it. Nothing was written."
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        )
        try:
            set_default_mode(tmp)  # mkdtemp's 0700 -> what os.mkdir would give
            try:
                zf.extractall(tmp)
            except (zipfile.BadZipFile, EOFError, zlib.error) as err:
                raise DataLayoutError(
                    f"{archive} is truncated or corrupt ({err}); delete it and download it again"
                ) from err
            if check is not None:
                check(tmp)
            (tmp / _MARKER).write_text(marker or "")
            if dest.exists():
                shutil.rmtree(dest)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not _stamp_ok(dest, marker):  # else another process extracted it first
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


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
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DataLayoutError(
                f"{path} is a file but not a .zip archive; pass a folder or "
                f"a .zip archive. {EXPECTED_LAYOUT}"
            )
        digest = file_sha1(path)
        dest = cache_dir() / "archives" / f"{path.stem}-{digest[:16]}"
        path = extract_zip(path, dest, marker=digest, check=check_splits)
    return check_splits(path, min_classes)


def download_hotdog(
    root: str | os.PathLike | None = None, *, url: str | None = None, sha1: str | None = None
) -> pathlib.Path:
    """Download (once) and extract (once) d2l's hotdog.zip; return the `hotdog` folder.

    `root`: cache folder (default $D2LFT_HOME, else a per-user cache). `url`: a mirror
    (default $D2LFT_DATA_URL, else d2l's data hub; http(s)://, ftp://, file:// or a
    local path). `sha1`: the archive's SHA-1 (default the real hotdog.zip's); a file
    that does not match it is never used nor kept. Offline: place hotdog.zip in the
    cache folder by hand.
    """
    url = url or os.environ.get(URL_ENV) or HOTDOG_URL
    sha1 = _check_sha1(sha1 or HOTDOG_SHA1)
    folder = cache_dir(root)
    extracted = folder / "hotdog.extracted"
    if not _stamp_ok(extracted, sha1):
        archive = fetch(url, sha1, root=folder, fname="hotdog.zip")
        extract_zip(archive, extracted, marker=sha1, check=check_splits)
    hotdog = extracted / "hotdog"
    if not hotdog.is_dir():
        hotdog = find_split_root(extracted)
    return resolve_data_dir(hotdog)
