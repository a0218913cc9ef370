"""The data hub, the cache folder, download, extraction and folder checks.

Backend-neutral: no framework is imported here. Downloads go through pooch, which
writes to a temporary file, checks the hash and only then moves the file into place,
so a failed or corrupt download never leaves a file that is taken as data.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import zipfile

DATA_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"
HOTDOG_URL = DATA_HUB + "hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
HOME_ENV = "D2LFT_HOME"
URL_ENV = "D2LFT_DATA_URL"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_MARKER = ".d2lft-extracted"

EXPECTED_LAYOUT = """expected layout:
  <folder>/train/<class_a>/*.jpg
  <folder>/train/<class_b>/*.jpg
  <folder>/test/<class_a>/*.jpg
  <folder>/test/<class_b>/*.jpg
(the hotdog data: hotdog/train/hotdog, hotdog/train/not-hotdog, hotdog/test/...)"""


class DownloadError(OSError):
    """A download failed; the message names the URL and how to place the file by hand."""


class DataLayoutError(ValueError):
    """An image folder or archive does not have the expected layout."""


def cache_dir(root=None) -> pathlib.Path:
    """The folder that holds downloads: `root`, else $D2LFT_HOME, else a per-user cache."""
    if root is None:
        root = os.environ.get(HOME_ENV)
    if root is None:
        import pooch
        root = pooch.os_cache("d2lft")
    path = pathlib.Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(url: str, sha1: str, root=None, fname=None, progressbar=None) -> pathlib.Path:
    """Download `url` into the cache folder once, checked against `sha1`.

    A file already in the cache with the right hash is reused without network access
    (so a file placed there by hand works offline). A file with the wrong hash is
    never used nor kept.
    """
    import pooch
    import requests

    folder = cache_dir(root)
    fname = fname or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    target = folder / fname
    if progressbar is None:
        progressbar = _want_progressbar()
    try:
        path = pooch.retrieve(url, known_hash=f"sha1:{sha1}", fname=fname, path=folder,
                              progressbar=progressbar)
    except ValueError as err:  # pooch: hash mismatch (the temporary file is already gone)
        _remove(target)
        raise DownloadError(
            f"{url} served a file whose SHA-1 does not match {sha1}; it was discarded. "
            f"If the mirror is right, pass its sha1=...; otherwise place the genuine file at "
            f"{target}.") from err
    except (requests.RequestException, OSError) as err:
        _remove(target)
        raise DownloadError(
            f"could not download {url}: {err}. If this machine is offline, download the file "
            f"elsewhere and place it at {target} (SHA-1 {sha1}), or point d2lft at a mirror "
            f"with url=... or ${URL_ENV}.") from err
    return pathlib.Path(path)


def _want_progressbar() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return False
    return os.environ.get("D2LFT_PROGRESS", "1") != "0"


def _remove(path: pathlib.Path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def extract_zip(archive, dest, *, marker=None) -> pathlib.Path:
    """Extract `archive` into folder `dest` once, safely and atomically.

    Entries with absolute paths or `..` are refused (nothing is written outside
    `dest`). Extraction goes to a temporary folder that is renamed into place, so an
    interrupted extraction never leaves a half-filled folder. `marker` (e.g. the
    archive's hash) is recorded; a later call with the same marker does nothing.
    """
    archive = pathlib.Path(archive)
    dest = pathlib.Path(dest)
    stamp = dest / _MARKER
    if dest.is_dir() and stamp.is_file() and (marker is None or stamp.read_text() == marker):
        return dest
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataLayoutError(f"{archive} is not a readable zip archive ({err}); delete it and "
                              f"download it again") from err
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise DataLayoutError(f"{archive} holds an unsafe entry {name!r} (absolute path "
                                      f"or '..'); refusing to extract it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            try:
                zf.extractall(tmp)
            except (zipfile.BadZipFile, EOFError, OSError, zlib_error()) as err:
                raise DataLayoutError(f"{archive} is truncated or corrupt ({err}); delete it and "
                                      f"download it again") from err
            (tmp / _MARKER).write_text(marker or "")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def zlib_error():
    import zlib
    return zlib.error


def find_split_root(folder) -> pathlib.Path:
    """The folder that holds `train/` and `test/`: `folder` itself or its only subfolder
    (a zip of `hotdog/` extracts to `<dest>/hotdog/train`)."""
    folder = pathlib.Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] \
        if folder.is_dir() else []
    if len(subs) == 1 and (subs[0] / "train").is_dir() and (subs[0] / "test").is_dir():
        return subs[0]
    raise DataLayoutError(f"{folder} has no train/ and test/ folders; {EXPECTED_LAYOUT}")


def check_image_folder(folder, min_classes=1) -> list:
    """Check one split folder (`.../train`) and return its class names, sorted.

    Raises DataLayoutError naming the folder and showing the expected layout when it
    has no class folders, or a class folder holds no image.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} is not a folder; {EXPECTED_LAYOUT}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < min_classes or not classes:
        raise DataLayoutError(f"{folder} has {len(classes)} class folder(s), needs at least "
                              f"{max(min_classes, 1)}; {EXPECTED_LAYOUT}")
    for c in classes:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (folder / c).iterdir()):
            raise DataLayoutError(f"class folder {folder / c} holds no image "
                                  f"({', '.join(IMAGE_SUFFIXES)}); {EXPECTED_LAYOUT}")
    return classes


def resolve_data_dir(data_dir) -> pathlib.Path:
    """A folder with train/ and test/ class folders, from a folder or a .zip of one."""
    path = pathlib.Path(data_dir).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):
        import hashlib
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        path = extract_zip(path, path.with_name(path.stem + ".extracted"), marker=digest)
    if not path.exists():
        raise DataLayoutError(f"{path} does not exist; {EXPECTED_LAYOUT}")
    root = find_split_root(path)
    train = check_image_folder(root / "train")
    test = check_image_folder(root / "test")
    if train != test:
        raise DataLayoutError(f"train classes {train} differ from test classes {test} in {root}")
    return root


def download_hotdog(root=None, *, url=None, sha1=None) -> pathlib.Path:
    """Download (once) and extract (once) d2l's hotdog.zip; return the `hotdog` folder.

    `root`: cache folder (default $D2LFT_HOME, else a per-user cache). `url`: a mirror
    (default $D2LFT_DATA_URL, else d2l's data hub). `sha1`: the archive's SHA-1
    (default the real hotdog.zip's).
    """
    url = url or os.environ.get(URL_ENV) or HOTDOG_URL
    sha1 = (sha1 or HOTDOG_SHA1).lower()
    folder = cache_dir(root)
    extracted = folder / "hotdog.extracted"
    stamp = extracted / _MARKER
    if not (stamp.is_file() and stamp.read_text() == sha1):
        archive = fetch(url, sha1, root=folder, fname="hotdog.zip")
        extract_zip(archive, extracted, marker=sha1)
    hotdog = extracted / "hotdog"
    if not hotdog.is_dir():
        hotdog = find_split_root(extracted)
    return resolve_data_dir(hotdog)
