"""The data hub, the cache folder, download, extraction, folder checks and image decoding.

Backend-neutral: no framework is imported here. Downloads go through pooch, which
writes to a temporary file, checks the hash and only then moves the file into place,
so a failed or corrupt download never leaves a file that is taken as data.

Both backends list image folders with :func:`list_images` and decode images with
:func:`load_rgb` (PIL), so they accept the same files (:data:`IMAGE_SUFFIXES`) in the
same order and see the same RGB pixels.
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
import warnings
import zipfile
import zlib

from ._io import set_default_mode

DATA_HUB = "http://d2l-data.s3-accelerate.amazonaws.com/"
HOTDOG_URL = DATA_HUB + "hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
HOME_ENV = "D2LFT_HOME"
URL_ENV = "D2LFT_DATA_URL"
PROGRESS_ENV = "D2LFT_PROGRESS"
#: The file suffixes (case-insensitive) that both backends read as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
_MARKER = ".d2lft-extracted"
_HTTP_SCHEMES = ("http", "https")
_CHUNK = 1 << 20
_WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, getattr(errno, "EDQUOT", -1)}

EXPECTED_LAYOUT = """expected layout:
  <folder>/train/<class_a>/*.jpg
  <folder>/train/<class_b>/*.jpg
  <folder>/test/<class_a>/*.jpg
  <folder>/test/<class_b>/*.jpg
(the hotdog data: hotdog/train/hotdog, hotdog/train/not-hotdog, hotdog/test/...)"""


#: ImageNet mean and standard deviation (RGB), the chapter's normalisation
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def test_resize(image_size: int) -> int:
    """The chapter's test-time resize for `image_size` crops: 256 for 224, scaled
    (``round(image_size * 256 / 224)``); the square image is then center-cropped."""
    return int(round(image_size * 256 / 224))


class DownloadError(OSError):
    """A download failed; the message names the URL and how to place the file by hand."""


class DataLayoutError(ValueError):
    """An image folder or archive does not have the expected layout."""


class BadImageError(ValueError):
    """An image file cannot be read; the message names the file."""


# --------------------------------------------------------------------------- cache, hashes

def cache_dir(root=None) -> pathlib.Path:
    """The folder that holds downloads: `root`, else $D2LFT_HOME, else a per-user cache
    (pooch's `os_cache('d2lft')`, e.g. ~/.cache/d2lft). Created when missing."""
    if root is None or root == "":
        root = os.environ.get(HOME_ENV) or None
    if root is None:
        import pooch
        root = pooch.os_cache("d2lft")
    path = pathlib.Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the d2lft cache folder {path} ({err}); pass root= or set "
                      f"${HOME_ENV} to a writable folder") from err
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
    import pooch
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
    raise ValueError(f"cannot download {url!r}: the address must start with http://, "
                     f"https://, ftp:// or file://, or be a local file path")


def _want_progressbar() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return False
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def _remove(path: pathlib.Path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _by_hand(url, target, sha1) -> str:
    return (f"To work offline, download {url} elsewhere and place it at {target} "
            f"(SHA-1 {sha1}); d2lft then uses it without network access. Or point d2lft "
            f"at a mirror with url=... or ${URL_ENV}.")


# --------------------------------------------------------------------------- download

def fetch(url: str, sha1: str, root=None, fname=None, progressbar=None) -> pathlib.Path:
    """Download `url` into the cache folder once, checked against `sha1`; return the path.

    A file already in the cache with the right hash is reused without network access
    (so a file placed there by hand works offline). A downloaded file is written to a
    temporary file and moved into place only when its SHA-1 matches; a file with the
    wrong hash (downloaded, or found in the cache) is never used nor kept. `url` may be
    http(s)://, ftp://, file:// or a local path. Raises DownloadError naming the URL and
    where to place the file by hand.
    """
    import pooch

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
            stale = (f" The file already at {target} had SHA-1 {found}, not {sha1}, so it "
                     f"was not used and has been removed.")
    try:
        path = pooch.retrieve(url, known_hash=f"sha1:{sha1}", fname=fname, path=folder,
                              downloader=downloader, progressbar=progressbar)
    except ValueError as err:  # pooch: hash mismatch (its temporary file is already gone)
        _remove(target)
        raise DownloadError(
            f"{url} served a file whose SHA-1 does not match {sha1}; it was discarded and "
            f"nothing was kept in {folder}. If this mirror's file is the one you want, pass "
            f"its sha1=...; otherwise use the genuine file.{stale} "
            f"{_by_hand(url, target, sha1)}") from err
    except Exception as err:  # requests' and ftplib's errors, a missing local file, a full disk
        _remove(target)
        if isinstance(err, OSError) and getattr(err, "errno", None) in _WRITE_ERRNOS:
            raise DownloadError(f"could not write {target} while downloading {url}: {err}. "
                                f"Free some disk space or choose another cache folder with "
                                f"root=... or ${HOME_ENV}.") from err
        raise DownloadError(f"could not download {url}: {err}.{stale} "
                            f"{_by_hand(url, target, sha1)}") from err
    path = pathlib.Path(path)
    if not cached:          # pooch's temporary file was 0600: give it open()'s mode
        set_default_mode(path)
    return path


# --------------------------------------------------------------------------- archives

def _unsafe_entry(name: str) -> bool:
    norm = name.replace("\\", "/")
    parts = pathlib.PurePosixPath(norm).parts
    return (norm.startswith("/") or ".." in parts or (bool(parts) and ":" in parts[0]))


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
        raise DataLayoutError(f"{archive} is not a readable zip archive ({err}): it is "
                              f"truncated or not a zip file. Delete it and download it again, "
                              f"or pass the extracted folder instead") from err
    with zf:
        bad = [i.filename for i in zf.infolist() if _unsafe_entry(i.filename)]
        if bad:
            raise DataLayoutError(f"{archive} holds unsafe entries {bad[:3]} (absolute paths "
                                  f"or '..' that would write outside {dest}); refusing to "
                                  f"extract it. Nothing was written.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp",
                                            dir=dest.parent))
        try:
            set_default_mode(tmp)        # mkdtemp's 0700 -> what os.mkdir would give
            try:
                zf.extractall(tmp)
            except (zipfile.BadZipFile, EOFError, zlib.error) as err:
                raise DataLayoutError(f"{archive} is truncated or corrupt ({err}); delete it "
                                      f"and download it again") from err
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


# --------------------------------------------------------------------------- folders

def _hidden(name: str) -> bool:
    """Hidden files/folders and macOS archive debris (`.DS_Store`, `._x.jpg`, `__MACOSX`)."""
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _subfolders(folder: pathlib.Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _iter_image_paths(class_dir):
    """The image files under `class_dir` (subfolders included, symlinked subfolders not
    followed), in torchvision's order: folders sorted by path, files sorted by name."""
    found = []
    for dirpath, dirnames, fnames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found.append((dirpath, sorted(f for f in fnames if _is_image_name(f))))
    for dirpath, fnames in sorted(found):
        for f in fnames:
            yield os.path.join(dirpath, f)


def find_split_root(folder) -> pathlib.Path:
    """The folder that holds `train/` and `test/`: `folder` itself or its only subfolder
    (a zip of `hotdog/` extracts to `<dest>/hotdog/train`)."""
    folder = pathlib.Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    subs = [folder / s for s in _subfolders(folder)] if folder.is_dir() else []
    if len(subs) == 1 and (subs[0] / "train").is_dir() and (subs[0] / "test").is_dir():
        return subs[0]
    found = ", ".join(p.name + "/" for p in subs[:6]) or "no subfolders"
    raise DataLayoutError(f"{folder} has no train/ and test/ folders (found {found}); "
                          f"{EXPECTED_LAYOUT}")


def check_image_folder(folder, min_classes=1) -> list:
    """Check one split folder (`.../train`) and return its class names, sorted.

    Raises DataLayoutError naming the folder and showing the expected layout when it
    has fewer than `min_classes` class folders, or a class folder holds no image.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} is not a folder; {EXPECTED_LAYOUT}")
    classes = _subfolders(folder)
    min_classes = max(int(min_classes), 1)
    if len(classes) < min_classes:
        loose = sum(1 for f in folder.iterdir() if f.is_file() and _is_image_name(f.name))
        hint = (f" It holds {loose} image(s) directly: move them into one subfolder per "
                f"class." if loose else "")
        need = ("training needs at least 2 classes" if min_classes >= 2
                else "it needs at least one class folder")
        raise DataLayoutError(f"{folder} has {len(classes)} class folder(s) {classes}; "
                              f"{need}.{hint} {EXPECTED_LAYOUT}")
    for c in classes:
        if next(_iter_image_paths(folder / c), None) is None:
            raise DataLayoutError(f"class folder {folder / c} holds no image "
                                  f"({', '.join(IMAGE_SUFFIXES)}): add images or remove the "
                                  f"folder; {EXPECTED_LAYOUT}")
    return classes


# --------------------------------------------------------------------------- images

_SKIP_HINT = ("remove or replace the file, or pass skip_bad=True to skip unreadable images "
              "with a warning")


def check_image_file(path, deep=False):
    """Raise BadImageError naming `path` unless it opens as an image.

    The default reads only the header (about 60 us a file). `deep=True` also decodes
    it (JPEGs at 1/8 scale, about 0.6 ms a file), which catches truncated files.
    """
    from PIL import Image
    try:
        with Image.open(path) as im:
            if deep:
                im.draft("RGB", (1, 1))
                im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {path}: {err}; {_SKIP_HINT}") from err


def to_rgb(im):
    """`im` (any PIL mode) as an 8-bit RGB PIL image.

    16-bit and 32-bit modes are scaled to 8 bits (PIL's own convert clips them, which
    turns most 16-bit images white); alpha is dropped, as torchvision and OpenCV do;
    palette, grayscale, CMYK, YCbCr and 1-bit modes use PIL's conversion.
    """
    from PIL import Image
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        import numpy as np
        arr = np.asarray(im)
        if im.mode.startswith("I;16"):
            arr = arr.astype(np.uint16) >> 8
        elif im.mode == "I":
            arr = arr / 257.0 if arr.size and arr.max() > 255 else arr
        else:  # float images: 0..1 or 0..255
            arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im.convert("RGB")


def load_rgb(path):
    """Decode the image file at `path` into an 8-bit RGB PIL image (see :func:`to_rgb`).

    Raises BadImageError naming the file when it cannot be decoded (corrupt,
    truncated, not an image).
    """
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {path}: {err}; {_SKIP_HINT} (with skip_bad="
                            f"True files are decoded once when the dataset is built)") from err


def list_images(folder, *, skip_bad=False, min_classes=1):
    """`(classes, samples)` for one split folder: sorted class names and
    `[(path, class_index)]`, the same files in the same order for both backends.

    Every file with an image suffix (:data:`IMAGE_SUFFIXES`, any case; subfolders
    included; hidden files skipped) is checked: by default its header is read and an
    unreadable file raises BadImageError naming it; with `skip_bad=True` each file is
    decoded (about 0.6 ms a JPEG) and unreadable ones are left out with one warning
    that names them. A class left with no image raises DataLayoutError.
    """
    folder = pathlib.Path(folder)
    classes = check_image_folder(folder, min_classes)
    samples, bad = [], []
    for idx, c in enumerate(classes):
        n = len(samples)
        for path in _iter_image_paths(folder / c):
            try:
                check_image_file(path, deep=skip_bad)
            except BadImageError as err:
                if not skip_bad:
                    raise
                bad.append((path, err.__cause__))
                continue
            samples.append((path, idx))
        if len(samples) == n:
            raise DataLayoutError(f"class folder {folder / c} holds no readable image "
                                  f"({len(bad)} unreadable file(s) skipped); {EXPECTED_LAYOUT}")
    if bad:
        shown = "; ".join(f"{p} ({e})" for p, e in bad[:5])
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {folder}: {shown}"
                      f"{' ...' if len(bad) > 5 else ''}", stacklevel=2)
    return classes, samples


def resolve_data_dir(data_dir, min_classes=2) -> pathlib.Path:
    """A folder with train/ and test/ class folders, from a folder or a .zip of one.

    A .zip is extracted once (safely; see :func:`extract_zip`) into the cache folder
    under a name that includes its SHA-1. Raises DataLayoutError showing the expected
    layout when the folder does not have it, or the two splits' classes differ.
    """
    if data_dir is None or data_dir == "":
        raise ValueError("data_dir must be a folder or a .zip archive, got "
                         f"{data_dir!r}; {EXPECTED_LAYOUT}")
    path = pathlib.Path(data_dir).expanduser()
    if not path.exists():
        raise DataLayoutError(f"{path} does not exist; pass a folder or a .zip archive with "
                              f"this layout. {EXPECTED_LAYOUT}")
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DataLayoutError(f"{path} is a file but not a .zip archive; pass a folder or "
                                  f"a .zip archive. {EXPECTED_LAYOUT}")
        digest = file_sha1(path)
        dest = cache_dir() / "archives" / f"{path.stem}-{digest[:16]}"
        path = extract_zip(path, dest, marker=digest, check=check_splits)
    return check_splits(path, min_classes)


def check_splits(folder, min_classes=1) -> pathlib.Path:
    """The folder holding `train/` and `test/` under `folder` (itself or its only
    subfolder), checked: class folders with images, the same classes in both splits,
    at least `min_classes` of them. Raises DataLayoutError showing the expected layout."""
    root = find_split_root(folder)
    train = check_image_folder(root / "train", min_classes)
    test = check_image_folder(root / "test", 1)
    if train != test:
        raise DataLayoutError(f"the classes in {root / 'train'} {train} differ from those in "
                              f"{root / 'test'} {test}: both splits need the same class "
                              f"folders. {EXPECTED_LAYOUT}")
    return root


def download_hotdog(root=None, *, url=None, sha1=None) -> pathlib.Path:
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
