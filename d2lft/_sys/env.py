"""Numbers from environment variables, checked: a bad value names its variable."""

from __future__ import annotations

import math
import os


def env_number(name: str, default: float, *, integer: bool = False, low: float = 0) -> float:
    """The number in environment variable `name` (`default` when unset or empty);
    ValueError naming the variable when it is not a number > `low`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= low:
        kind = "a whole number" if integer else "a number"
        raise ValueError(
            f"${name} must be {kind} > {low:g}, got {text!r}: fix or unset the variable"
        )
    return value


__all__ = ["env_number"]
