"""Numbers from environment variables, checked: a bad value names its variable and the
range it must lie in (a huge value such as 1e308 is refused here, not turned into an
OverflowError where it is used)."""

from __future__ import annotations

import math
import os

#: the most a variable counting MiB may say (about 95 TiB: more is a typo, or 1e308)
MAX_MB = 10**8
#: the most a variable counting seconds may say (about 116 days)
MAX_SECONDS = 10**7


def _show(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def env_number(
    name: str,
    default: float,
    *,
    integer: bool = False,
    low: float = 0,
    high: float = 1e9,
    low_ok: bool = False,
    unit: str = "",
) -> float:
    """The number in environment variable `name` (`default` when unset or empty).

    ValueError naming the variable and its allowed range when the value is not a
    (whole, if `integer`) number above `low` (or equal to it, if `low_ok`) and at
    most `high`. `unit` (e.g. "MiB", "seconds") is shown with the range."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:  # not a number (or an integer with thousands of digits)
        value = None
    above = value is not None and (value >= low if low_ok else value > low)
    finite = value is not None and (isinstance(value, int) or math.isfinite(value))
    if not finite or not above or value > high:
        kind = "a whole number" if integer else "a number"
        sign = ">=" if low_ok else ">"
        what = f" ({unit})" if unit else ""
        raise ValueError(
            f"${name} must be {kind} {sign} {_show(low)} and <= {_show(high)}{what}, "
            f"got {text if len(text) <= 40 else text[:37] + '...'!r}: fix or unset the variable"
        )
    return value


__all__ = ["MAX_MB", "MAX_SECONDS", "env_number"]
