"""Peak host memory of a run (backend-neutral; no framework import).

`HostPeak` samples this process's resident set size (/proc/self/statm) in a daemon
thread while a run is going, so the figure belongs to the run and not to the whole
process (``getrusage``'s ``ru_maxrss`` only ever grows). Where /proc is missing, it
falls back to ``ru_maxrss``. :func:`available_bytes` is how much more memory the
process may use (for refusing, before a run, a batch that cannot fit).
"""

from __future__ import annotations

import os
import sys
import threading

from .env import MAX_MB, env_number

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


MEMORY_ENV = "D2LFT_MEMORY_MB"


def _read_int(path) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> tuple[int | None, str]:
    """The memory this process may still use and where that figure comes from:
    $D2LFT_MEMORY_MB when set, else the least of the system's available memory
    (/proc/meminfo's MemAvailable, else free pages) and what the cgroup's limit leaves
    (containers). (None, reason) where none of these can be read."""
    if os.environ.get(MEMORY_ENV, "").strip():
        mb = env_number(MEMORY_ENV, 0, high=MAX_MB, unit="MiB")
        return int(mb * 2**20), f"${MEMORY_ENV}"
    found = []
    avail = _meminfo_available()
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * _PAGE
        except (ValueError, OSError):
            avail = None
    if avail is not None:
        found.append((avail, "available system memory"))
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 2**60:
            found.append((max(cap - used, 0), "the container's memory limit"))
    if not found:
        return None, "unknown"
    return min(found)
