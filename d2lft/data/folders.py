"""Image folders: `<split>/<class>/*.jpg`, their checks and their listing.

Both backends list image folders with :func:`list_images`, so they read the same files
in the same order (torchvision's: folders sorted by path, files sorted by name).
Backend-neutral: no framework is imported.
"""

from __future__ import annotations

import os
import pathlib
import stat
import warnings

from .images import IMAGE_SUFFIXES, BadImageError, check_image_file

#: The held-out split folders accepted beside train/, in the order one is picked: the
#: first that holds class folders (a Kaggle-style test/ of loose, unlabelled images is
#: passed over for a labelled val/ or valid/).
HELD_OUT_SPLITS = ("test", "val", "valid")

EXPECTED_LAYOUT = """expected layout:
  <folder>/train/<class_a>/*.jpg
  <folder>/train/<class_b>/*.jpg
  <folder>/test/<class_a>/*.jpg     (the held-out images: test/, or val/ or valid/)
  <folder>/test/<class_b>/*.jpg
(the hotdog data: hotdog/train/hotdog, hotdog/train/not-hotdog, hotdog/test/...;
a folder with several of test/, val/, valid/ is evaluated on the first of them, in
that order, that holds class folders)"""


class DataLayoutError(ValueError):
    """An image folder or archive does not have the expected layout."""


def _hidden(name: str) -> bool:
    """Hidden files/folders and macOS archive debris (`.DS_Store`, `._x.jpg`, `__MACOSX`)."""
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _subfolders(folder: pathlib.Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _special(path: str) -> bool:
    """Whether `path` exists but is not a regular file (a FIFO, socket or device, even
    through a symlink): such a file is never opened (reading a FIFO waits forever)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # missing, or a broken symlink: reading it fails with a clear error
        return False


def _iter_image_paths(class_dir, special=None):
    """The image files under `class_dir` (subfolders included, symlinked subfolders not
    followed), in torchvision's order: folders sorted by path, files sorted by name.
    Files with an image name that are not regular files are left out (and appended to
    the list `special` when given)."""
    found = []
    for dirpath, dirnames, fnames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found.append((dirpath, sorted(f for f in fnames if _is_image_name(f))))
    for dirpath, fnames in sorted(found):
        for f in fnames:
            path = os.path.join(dirpath, f)
            if _special(path):
                if special is not None:
                    special.append(path)
                continue
            yield path


def held_out_split(folder) -> str | None:
    """The name of `folder`'s held-out split: the first of :data:`HELD_OUT_SPLITS`
    (test/, val/, valid/) that holds class folders, else the first that exists (its
    check then says what is wrong with it), else None."""
    folder = pathlib.Path(folder)
    present = [s for s in HELD_OUT_SPLITS if (folder / s).is_dir()]
    for name in present:
        if _subfolders(folder / name):
            return name
    return present[0] if present else None


def held_out(folder) -> pathlib.Path:
    """The held-out split folder of a folder that holds train/ (see
    :func:`held_out_split`)."""
    name = held_out_split(folder)
    if name is None:
        raise DataLayoutError(
            f"{folder} has no test/, val/ or valid/ folder beside train/; {EXPECTED_LAYOUT}"
        )
    return pathlib.Path(folder) / name


def is_split_root(folder) -> bool:
    """Whether `folder` holds train/ and a held-out split (test/, val/ or valid/)."""
    folder = pathlib.Path(folder)
    return (folder / "train").is_dir() and held_out_split(folder) is not None


def find_split_root(folder) -> pathlib.Path:
    """The folder that holds `train/` and a held-out split (`test/`, `val/` or
    `valid/`): `folder` itself or its only subfolder (a zip of `hotdog/` extracts to
    `<dest>/hotdog/train`)."""
    folder = pathlib.Path(folder)
    if is_split_root(folder):
        return folder
    subs = [folder / s for s in _subfolders(folder)] if folder.is_dir() else []
    if len(subs) == 1 and is_split_root(subs[0]):
        return subs[0]
    found = ", ".join(p.name + "/" for p in subs[:6]) or "no subfolders"
    raise DataLayoutError(
        f"{folder} has no train/ folder beside a test/, val/ or valid/ folder "
        f"(found {found}); {_one_folder_hint(folder, subs)}{EXPECTED_LAYOUT}"
    )


def _holds_images(folder: pathlib.Path, limit: int = 1000) -> bool:
    """Whether `folder` has an image file among its first `limit` entries."""
    try:
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if i >= limit:
                    return False
                if _is_image_name(entry.name):
                    return True
    except OSError:
        pass
    return False


def _one_folder_hint(folder: pathlib.Path, subs: list) -> str:
    """What to do when `folder` is one folder of classes (its subfolders, at least two
    and none of them a split, hold images): split it with val_fraction."""
    if len(subs) == 1:  # a zip of chairs/ extracts to <dest>/chairs/<class>/
        inner = [subs[0] / s for s in _subfolders(subs[0])]
        if len(inner) >= 2:
            folder, subs = subs[0], inner
    names = {p.name for p in subs}
    if len(subs) < 2 or names & {"train", *HELD_OUT_SPLITS}:
        return ""
    if not all(_holds_images(p) for p in subs[:20]):
        return ""
    return (
        f"{folder} itself holds class subfolders of images, one folder of classes: to "
        f"hold out part of each class for evaluation, pass val_fraction=0.2 "
        f"(CLI: --val-fraction 0.2). Or arrange the images as follows. "
    )


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
        hint = (
            f" It holds {loose} image(s) directly: move them into one subfolder per class."
            if loose
            else ""
        )
        need = (
            "training needs at least 2 classes"
            if min_classes >= 2
            else "it needs at least one class folder"
        )
        raise DataLayoutError(
            f"{folder} has {len(classes)} class folder(s) {classes}; "
            f"{need}.{hint} {EXPECTED_LAYOUT}"
        )
    for c in classes:
        if next(_iter_image_paths(folder / c), None) is None:
            raise DataLayoutError(
                f"class folder {folder / c} holds no image "
                f"({', '.join(IMAGE_SUFFIXES)}): add images or remove the "
                f"folder; {EXPECTED_LAYOUT}"
            )
    return classes


def count_images(folder) -> int:
    """How many image files the class folders of one split folder hold (no file is
    opened; 0 for a folder that is not there)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return 0
    return sum(sum(1 for _ in _iter_image_paths(folder / c)) for c in _subfolders(folder))


def list_images(folder, *, skip_bad=False, min_classes=1):
    """`(classes, samples)` for one split folder: sorted class names and
    `[(path, class_index)]`, the same files in the same order for both backends.

    Every file with an image suffix (:data:`IMAGE_SUFFIXES`, any case; subfolders
    included; hidden files skipped; FIFOs, sockets and devices skipped with a warning,
    never opened) is checked: by default its header is read and an
    unreadable file raises BadImageError naming it; with `skip_bad=True` each file is
    decoded (about 0.6 ms a JPEG) and unreadable ones are left out with one warning
    that names them. A class left with no image raises DataLayoutError.
    """
    folder = pathlib.Path(folder)
    classes = check_image_folder(folder, min_classes)
    samples, bad, special = [], [], []
    for idx, c in enumerate(classes):
        n = len(samples)
        for path in _iter_image_paths(folder / c, special):
            try:
                check_image_file(path, deep=skip_bad)
            except BadImageError as err:
                if not skip_bad:
                    raise
                bad.append((path, err.__cause__))
                continue
            samples.append((path, idx))
        if len(samples) == n:
            raise DataLayoutError(
                f"class folder {folder / c} holds no readable image "
                f"({len(bad)} unreadable file(s) skipped); {EXPECTED_LAYOUT}"
            )
    if special:
        warnings.warn(
            f"skipped {len(special)} file(s) in {folder} that are not regular files "
            f"(FIFOs, sockets or devices; never read): {', '.join(special[:5])}"
            f"{' ...' if len(special) > 5 else ''}",
            stacklevel=2,
        )
    if bad:
        shown = "; ".join(f"{p} ({e})" for p, e in bad[:5])
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) in {folder}: {shown}"
            f"{' ...' if len(bad) > 5 else ''}",
            stacklevel=2,
        )
    return classes, samples


def check_splits(folder, min_classes=1) -> pathlib.Path:
    """The folder holding `train/` and a held-out split under `folder` (itself or its
    only subfolder), checked: class folders with images, the same classes in both
    splits, at least `min_classes` of them. Raises DataLayoutError showing the
    expected layout."""
    root = find_split_root(folder)
    train = check_image_folder(root / "train", min_classes)
    evaluated = held_out(root)
    test = check_image_folder(evaluated, 1)
    if train != test:
        raise DataLayoutError(
            f"the classes in {root / 'train'} {train} differ from those in "
            f"{evaluated} {test}: both splits need the same class "
            f"folders. {EXPECTED_LAYOUT}"
        )
    return root
