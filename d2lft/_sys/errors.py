"""Errors that name the parameter at fault.

A library error about one argument carries that argument's name in its ``param``
attribute (:func:`naming`), and says what is wrong in words that fit both the API and
the ``d2lft`` command: the command then names the flag that sets that parameter (from
the options' own metadata or its parser), with no rewriting of the message's text.
"""

from __future__ import annotations

import os
import pathlib
import stat
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def naming(err: E, param: str) -> E:
    """`err`, marked with the name of the parameter at fault (``err.param``)."""
    err.param = param  # type: ignore[attr-defined]
    return err


def param_of(err: BaseException) -> str | None:
    """The name of the parameter at fault that `err` carries, if any."""
    param = getattr(err, "param", None)
    return param if isinstance(param, str) else None


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file ('no such file', 'a folder, not a file', 'not
    a regular file but a FIFO'), or None when it is a regular file (or a link to one)."""
    try:
        mode = pathlib.Path(path).expanduser().stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = (
        "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a special file"
    )
    return f"not a regular file but {kind}"


__all__ = ["naming", "not_a_file", "param_of"]
