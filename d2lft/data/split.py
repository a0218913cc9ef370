"""Your own images: one folder of class subfolders split into train/ and test/.

    d2lft.train_fine_tuning(net, lr, data_dir='chairs/', val_fraction=0.2)

`chairs/<class>/*.jpg` (or a .zip of such a folder, or a folder with only `train/`)
is split once, deterministically: each class's files are sorted, shuffled with a
random generator seeded by (`seed`, class name), and the first `val_fraction` of them
(at least one, rounded) go to test/. The split is made of links (hard links where the
file system allows, else symbolic links, else copies) in the cache folder, built in a
temporary folder and renamed into place, and reused while the files are unchanged.
`split.json` in it lists which file went where (its "sources" maps each link,
`test/<class>/00000-<name>`, to the user's file; see :func:`source_paths`).

Backend-neutral, no framework imported.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import random
import shutil
import zipfile

from .._sys.atomic import set_default_mode
from .._sys.errors import not_a_file
from .._sys.locks import locked, reclaim, short_base, temp_name
from .folders import (
    EXPECTED_LAYOUT,
    DataLayoutError,
    check_image_folder,
    check_splits,
    find_split_root,
    held_out_split,
    list_images,
)
from .hub import (
    _WRITE_ERRNOS,
    CacheError,
    _cache_write_error,
    archive_dest,
    cache_dir,
    extract_zip,
    file_sha1,
    resolve_data_dir,
)

_STAMP = "split.json"


def _check_fraction(val_fraction):
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise ValueError(
            f"val_fraction must be a number between 0 and 1 (exclusive), e.g. "
            f"0.2, got {val_fraction!r}"
        )
    return float(val_fraction)


def _unzip(path: pathlib.Path) -> pathlib.Path:
    digest = file_sha1(path)
    return extract_zip(path, archive_dest(path, digest), marker=digest)


def _class_root(path: pathlib.Path) -> pathlib.Path:
    """The folder whose subfolders are the classes: `path`, its `train/` when it has no
    held-out split (test/, val/, valid/), or its only subfolder (a zip of `chairs/`
    extracts to `<dest>/chairs/`)."""
    if (path / "train").is_dir() and held_out_split(path) is None:
        return path / "train"
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subs) == 1:
        only = subs[0]
        inner = [p for p in only.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if inner:  # <dest>/chairs/<class>/... rather than <dest>/<class>/
            return _class_root(only)
    return path


def split_image_folder(
    folder: str | os.PathLike,
    val_fraction: float = 0.2,
    *,
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Split a folder of class subfolders into `train/` and `test/` (see the module
    text); return the new folder, which has the layout that training expects."""
    val_fraction = _check_fraction(val_fraction)
    folder = pathlib.Path(folder).expanduser().resolve()
    classes, samples = list_images(folder, min_classes=2)
    by_class = {c: sorted(os.fspath(p) for p, i in samples if classes[i] == c) for c in classes}
    few = [c for c, files in by_class.items() if len(files) < 2]
    if few:
        raise DataLayoutError(
            f"class folder(s) {few} in {folder} hold fewer than 2 images: "
            f"each class needs one image for train/ and one for test/"
        )
    plan = {
        "source": os.fspath(folder),
        "val_fraction": val_fraction,
        "seed": seed,
        "train": {},
        "test": {},
    }
    for c, files in by_class.items():
        files = list(files)
        random.Random(f"{seed}:{c}").shuffle(files)
        n_test = min(max(1, round(len(files) * val_fraction)), len(files) - 1)
        plan["test"][c] = sorted(files[:n_test])
        plan["train"][c] = sorted(files[n_test:])
    key = hashlib.sha1()
    for c, files in by_class.items():
        for f in files:
            st = os.stat(f)
            key.update(os.fsencode(f"{c}\0{f}\0{st.st_size}\0{st.st_mtime_ns}\n"))
    key.update(f"{val_fraction}:{seed}".encode())
    base = cache_dir(root) / "splits"
    dest = base / f"{folder.name[:64]}-{key.hexdigest()[:16]}"
    if (dest / _STAMP).is_file():
        return dest
    try:
        base.mkdir(parents=True, exist_ok=True)
        with locked(base / f".{short_base(dest.name)}.lock", f"splitting {folder}") as held:
            if not (dest / _STAMP).is_file():  # else another process made it meanwhile
                reclaim(base, dest.name)  # temporary folders of killed processes
                _build_split(plan, dest)
            held.done()
    except CacheError:
        raise
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise DataLayoutError(
                f"a file name in {folder} is too long for the cache's file system "
                f"({err}); shorten it, or set $D2LFT_HOME to a folder on another disk"
            ) from err
        if err.errno in _WRITE_ERRNOS:
            raise _cache_write_error(base, err, f"splitting {folder}") from err
        raise
    return dest


def _build_split(plan: dict, dest: pathlib.Path) -> None:
    """Make the split folder `dest` from `plan`: links in a temporary folder of this
    process, renamed into place (a half-made split is never seen under `dest`)."""
    tmp = dest.parent / temp_name(dest.name)
    tmp.mkdir()
    try:
        set_default_mode(tmp)  # what os.mkdir would give
        used = {}
        for split in ("train", "test"):
            for c, files in plan[split].items():
                d = tmp / split / c
                d.mkdir(parents=True)
                for i, f in enumerate(files):
                    used[_link(f, tmp / _link_name(split, c, i, f))] = True
        plan["linked_by"] = sorted(used)
        plan["sources"] = _plan_sources(plan)
        (tmp / _STAMP).write_text(json.dumps(plan, indent=1))
        if dest.exists():  # no stamp: a leftover that is not a split; under the lock
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _link_name(split, cls, i, source) -> str:
    """The path, relative to the split folder, of the link to the i-th (sorted) file
    `source` of class `cls` in `split` (posix separators, as split.json records it)."""
    name = pathlib.PurePath(source).name
    if len(os.fsencode(name)) > 240:  # "00000-" + a name near the 255-byte limit
        stem, suffix = os.path.splitext(name)
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
        while len(os.fsencode(stem)) > 100:
            stem = stem[:-1]
        name = f"{stem}-{digest}{suffix[:16]}"
    return f"{split}/{cls}/{i:05d}-{name}"


def _plan_sources(plan) -> dict:
    """{link path relative to the split folder: source file} from a split plan."""
    return {
        _link_name(split, c, i, f): f
        for split in ("train", "test")
        for c, files in plan.get(split, {}).items()
        for i, f in enumerate(files)
    }


def split_sources(split_dir) -> dict:
    """{link path relative to `split_dir` ('test/<class>/00000-x.jpg'): the user's
    source file} for a split folder made by :func:`split_image_folder`, read from its
    split.json (its "sources" entry, or recomputed from the plan for split folders made
    before that entry existed); {} for a folder that is not such a split."""
    stamp = pathlib.Path(split_dir) / _STAMP
    try:
        plan = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(plan, dict):
        return {}
    sources = plan.get("sources")
    if isinstance(sources, dict):
        return {str(k): str(v) for k, v in sources.items()}
    return _plan_sources(plan)


def source_paths(paths, split_dir) -> list:
    """`paths` (files under the split folder `split_dir`, e.g. what an image folder of
    its test/ lists) mapped back to the user's source files; paths that are not links
    of that split are returned unchanged."""
    split_dir = pathlib.Path(split_dir)
    sources = split_sources(split_dir)
    if not sources:
        return [os.fspath(p) for p in paths]
    out = []
    for p in paths:
        try:
            rel = pathlib.Path(p).relative_to(split_dir).as_posix()
        except ValueError:
            rel = None
        out.append(sources.get(rel, os.fspath(p)))
    return out


def _link(src, dst) -> str:
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        pass
    try:
        os.symlink(src, dst)
        return "symbolic link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def resolve_images(data_dir, val_fraction=None, *, seed=0) -> pathlib.Path:
    """A folder with train/ and test/ from what a user has: such a folder or a .zip
    of one; or, with `val_fraction`, a folder (or .zip) of class subfolders, split
    once by :func:`split_image_folder`."""
    if val_fraction is None:
        return resolve_data_dir(data_dir)
    _check_fraction(val_fraction)
    path = pathlib.Path(data_dir).expanduser()
    if not path.exists():
        raise DataLayoutError(
            f"{path} does not exist; with val_fraction pass a folder (or a "
            f".zip) of class subfolders: <folder>/<class>/*.jpg"
        )
    if not path.is_dir() and not_a_file(path):  # a FIFO, a device: never opened
        raise DataLayoutError(
            f"{path} is {not_a_file(path)}; with val_fraction pass a folder (or a .zip) "
            f"of class subfolders"
        )
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataLayoutError(f"{path} is a file but not a .zip archive")
        path = _unzip(path)
    path = _class_root(path)
    try:
        root = find_split_root(path)
    except DataLayoutError:
        pass
    else:
        raise ValueError(
            f"{path} already has train/ and {held_out_split(root)}/ folders: drop "
            f"val_fraction to use them as they are"
        )
    try:
        check_image_folder(path, 2)
    except DataLayoutError as err:
        raise DataLayoutError(
            f"with val_fraction, {path} must hold one subfolder per class "
            f"(<folder>/<class>/*.jpg): {err}"
        ) from None
    return check_splits(split_image_folder(path, val_fraction, seed=seed))


def class_names(data_dir: str | os.PathLike, val_fraction: float | None = None) -> list[str]:
    """The class names (sorted class folder names) that training on `data_dir` uses."""
    return check_image_folder(resolve_images(data_dir, val_fraction) / "train")


__all__ = [
    "split_image_folder",
    "resolve_images",
    "class_names",
    "split_sources",
    "source_paths",
    "EXPECTED_LAYOUT",
]
