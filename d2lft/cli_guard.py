"""What the `d2lft` command guards: the user's files (--out) and its own output
streams, and how an error becomes one line that names the command's flags.

- A second run into the same --out needs --resume (continue it) or --overwrite
  (replace it); anything in --out that d2lft did not write is never written over. A
  run owns its --out while it runs (a second one is refused at once), and an
  --overwrite run replaces the earlier run only once it has a checkpoint of its own.
- Every command that writes refuses an --out that exists unless --overwrite is given;
  a picture's --out replaces only a PNG file, an ONNX --out only a file.
- An error d2lft can explain (bad input, a file or folder it cannot use, a limit)
  ends as one line on stderr and exit status 2 (D2LFT_DEBUG=1 shows the traceback);
  a closed output pipe ends quietly with 141.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import sys

from ._sys import outputs
from ._sys.locks import own_folder
from .data.hub import HOME_ENV
from .data.images import _SKIP_HINT, BadImageError
from .io.checkpoint import FILE_NAME, RUN_FILES, check_checkpoint_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: what `compare` and `sweep` write into their --out besides run folders
COMPARE_FILES = ("compare.json", "compare.png")
SWEEP_FILES = ("sweep.json", "sweep.png")
#: what `evaluate` writes into its --out
EVALUATE_FILES = ("evaluation.json", "confusion.png", "predictions.png")


def add_overwrite_flag(p, what: str = "the run", where: str = "in") -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} already {where} --out (without it, d2lft refuses to write "
        f"over it) (default: off)",
    )


def _run_files(folder: pathlib.Path) -> list[str]:
    return [n for n in RUN_FILES if (folder / n).exists()]


def check_run_out(out, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a `train` --out that would lose or mix with earlier
    files: a file, a folder holding files d2lft did not write, or a folder holding a
    run when neither --resume nor --overwrite is given."""
    out = pathlib.Path(out).expanduser()
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pick one")
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if not out.is_dir():
        return
    try:
        check_checkpoint_dir(out)
    except ValueError as err:
        raise ValueError(f"--out {out}: {err}") from None
    found = _run_files(out)
    if found and not resume and not overwrite:
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(found)}): pass --resume to "
            f"continue it, --overwrite to replace it, or choose a new --out"
        )


def check_outputs(out, names, *, overwrite: bool, runs=()) -> None:
    """Refuse a `compare` or `sweep` --out that already holds their outputs (`names`,
    or runs in the subfolders `runs`) unless --overwrite is given; refuse a file."""
    out = pathlib.Path(out).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder")
    found = [n for n in names if os.path.lexists(out / n)]
    found += [f"{r}/{n}" for r in runs for n in _run_files(out / r)]
    if found and not overwrite:
        raise ValueError(
            f"--out {out} already holds results ({', '.join(found[:4])}): pass "
            f"--overwrite to replace them, or choose a new --out"
        )
    for r in runs:
        check_run_out(out / r, resume=False, overwrite=True)


def own_out(out):
    """Own --out (created when missing) while the command writes into it: another
    command that asks for it meanwhile is refused at once, naming this one."""
    return own_folder(out, "--out ")


class ReplaceRun:
    """With --overwrite: the earlier run in `out` stays whole until the new run's first
    checkpoint has replaced its checkpoint (atomically, by rename); then the rest of the
    earlier run (its metrics, curve and the outputs d2lft recorded beside it, e.g. an
    exported model.onnx) goes, so that the folder holds the new run only. A run that
    diverges or is stopped before its first epoch ends leaves the earlier run as it was.
    (A callback: it runs after d2lft's own, the checkpoint's writer among them.)"""

    def __init__(self, out):
        self.out = pathlib.Path(out).expanduser()
        self.done = False

    def on_epoch_end(self, state) -> None:
        if self.done:
            return
        self.done = True
        gone = [n for n in RUN_FILES if n != FILE_NAME] + sorted(outputs.written(self.out))
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.out / name)
        outputs.forget(self.out, gone)


def check_file_out(path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output file's path that exists, unless --overwrite is given; a folder
    (or anything but a file) is never replaced."""
    path = pathlib.Path(path).expanduser()
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise ValueError(f"{flag} {path} exists and is not a file: choose another {flag}")
    if not overwrite:
        raise ValueError(
            f"{flag} {path} already exists: pass --overwrite to replace it, or choose "
            f"another {flag}"
        )


def check_png_out(path, flag: str = "--out", *, overwrite: bool = False) -> None:
    """Refuse a picture's --out that would replace something other than a PNG file, or
    a PNG file without --overwrite."""
    path = pathlib.Path(path).expanduser()
    if not os.path.lexists(path):
        return
    try:
        ok = path.is_file() and path.open("rb").read(8) == PNG_MAGIC
    except OSError:
        ok = False
    if not ok:
        raise ValueError(
            f"{flag} {path} exists and is not a PNG picture: d2lft writes pictures only "
            f"over PNG files; choose another {flag}"
        )
    check_file_out(path, overwrite=overwrite, flag=flag)


def guard_streams() -> None:
    """Print file names that are not valid UTF-8 (undecodable bytes, kept by Python as
    surrogates) as they are, instead of failing in the middle of the output."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", "") or "").lower().replace("-", "")
        errors = "surrogateescape" if enc == "utf8" else "backslashreplace"
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not a text stream
            stream.reconfigure(errors=errors)


def silence_stdout() -> None:
    """After a broken pipe (`d2lft info ... | head -1`): send what is left of stdout
    nowhere, so that Python's own flush at exit does not fail too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.EEXIST: "a file is in the way",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "no such file or folder",
}


def describe(err: BaseException, args) -> str:
    """The one line printed for `err` (after "d2lft COMMAND: error: ")."""
    if isinstance(err, BadImageError):  # the API's hint names skip_bad=True
        return str(err).replace(
            _SKIP_HINT,
            "remove, replace or move the file out of the data folder (the command "
            "stops at unreadable images so that none is left out unnoticed)",
        )
    if not isinstance(err, OSError) or type(err).__str__ is not OSError.__str__:
        return str(err)
    if err.errno is None or err.filename is None:  # an error d2lft worded itself
        return str(err)
    where = os.fsdecode(err.filename)
    why = _WHY.get(err.errno, err.strerror or str(err))
    out = getattr(args, "out", None)
    hint = ""
    if out and _under(where, out):
        hint = "; choose another --out"
    elif os.environ.get(HOME_ENV) and _under(where, os.environ[HOME_ENV]):
        hint = f"; free some space or set ${HOME_ENV} to a writable folder"
    elif err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM):
        hint = f"; free some space or choose writable folders (--out, ${HOME_ENV})"
    return f"cannot use {where}: {why}{hint}"


def _under(path: str, folder) -> bool:
    try:
        a = pathlib.Path(path).expanduser().absolute()
        b = pathlib.Path(folder).expanduser().absolute()
    except (OSError, ValueError):
        return False
    return a == b or b in a.parents


__all__ = [
    "COMPARE_FILES",
    "EVALUATE_FILES",
    "SWEEP_FILES",
    "ReplaceRun",
    "add_overwrite_flag",
    "check_file_out",
    "check_outputs",
    "check_png_out",
    "check_run_out",
    "own_out",
    "describe",
    "guard_streams",
    "silence_stdout",
]
