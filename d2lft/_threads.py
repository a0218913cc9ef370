"""CPU thread counts when both frameworks share one process.

Importing MXNet 1.9.1 sets the process-wide OpenMP thread count to 1, which drops
PyTorch's intra-op threads (measured: 2 -> 1 on a 2-core machine). d2lft restores
torch's count after MXNet is imported, and gives torch its normal default when it is
imported after MXNet.
"""
from __future__ import annotations

import os


def _env_threads():
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def physical_cores() -> int:
    """Physical cores available to this process (what torch uses by default)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
    except OSError:  # pragma: no cover
        pass
    n = len(cores) or available
    return max(1, min(n, available))


def torch_default_threads() -> int:
    return _env_threads() or physical_cores()
