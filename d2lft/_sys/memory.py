"""Peak host memory of a run (backend-neutral; no framework import).

`HostPeak` samples this process's resident set size (/proc/self/statm) in a daemon
thread while a run is going, so the figure belongs to the run and not to the whole
process (``getrusage``'s ``ru_maxrss`` only ever grows). Where /proc is missing, it
falls back to ``ru_maxrss``.
"""

from __future__ import annotations

import os
import sys
import threading

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes():
    """Resident set size of this process now, or None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def maxrss_bytes():
    if resource is None:  # pragma: no cover - not Unix
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class HostPeak:
    """``with HostPeak() as m: ...``; then ``m.peak_mb`` (MiB, resident memory)."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        v = rss_bytes()
        if v is not None and v > self.peak:
            self.peak = v

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self):
        self._sample()
        if rss_bytes() is not None:
            self._thread = threading.Thread(target=self._run, name="d2lft-hostpeak", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if not self.peak:
            self.peak = maxrss_bytes() or 0
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20 if self.peak else float("nan")
