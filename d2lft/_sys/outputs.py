"""Which files in a folder d2lft wrote: a hidden record (``.d2lft-outputs.json``) of
the outputs a command put there besides a run's own files (``export``'s model.onnx
beside the checkpoint, ``evaluate --out``'s files), each with its size and SHA-256, so
that a later ``train --out`` into that folder recognises them as d2lft's (and
``--overwrite`` replaces them with the rest of the run), while a file the user put in
their place, or edited, is still the user's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib

from .locks import locked, temp_name

RECORD = ".d2lft-outputs.json"


def _digest(path: pathlib.Path) -> list:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        size = os.fstat(f.fileno()).st_size
    return [size, h.hexdigest()]


def _read(folder: pathlib.Path) -> dict:
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(folder: pathlib.Path, data: dict) -> None:
    if not data:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / RECORD)
        return
    tmp = folder / temp_name(RECORD)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, folder / RECORD)


def _update(folder: pathlib.Path, change) -> None:
    with locked(folder / (RECORD + ".lock"), "recording what d2lft wrote", timeout=60) as held:
        data = _read(folder)
        change(data)
        _write(folder, data)
        held.done()  # no lock file left beside the user's files


def record(*paths) -> None:
    """Record `paths` (files d2lft has just written) in their folders' records."""
    for path in paths:
        path = pathlib.Path(path).expanduser()
        if path.is_file():
            digest = _digest(path)
            _update(path.parent, lambda data, p=path, d=digest: data.__setitem__(p.name, d))


def written(folder) -> set[str]:
    """The names in `folder` that d2lft recorded and that are still as it wrote them."""
    folder = pathlib.Path(folder).expanduser()
    out = set()
    for name, recorded in _read(folder).items():
        path = folder / name
        with contextlib.suppress(OSError, ValueError, TypeError, IndexError):
            # the size first: a changed file is told without reading it through
            same = path.is_file() and path.stat().st_size == recorded[0]
            if same and _digest(path) == list(recorded):
                out.add(name)
    return out


def forget(folder, names) -> None:
    """Drop `names` from `folder`'s record (d2lft removed or replaced them)."""
    folder = pathlib.Path(folder).expanduser()
    if (folder / RECORD).exists():
        _update(folder, lambda data: [data.pop(n, None) for n in names])


__all__ = ["RECORD", "forget", "record", "written"]
