"""CPU thread counts when both frameworks share one process.

MXNet 1.9.1, when neither ``OMP_NUM_THREADS`` nor ``MXNET_OMP_MAX_THREADS`` is set,
takes *half* the logical processors for its OpenMP work on Intel x86 (it assumes two
hyper-threads per core) and calls ``omp_set_num_threads`` with that count at import.
On a machine with one thread per core (this 2-core VM, most cloud VMs with SMT off)
that leaves MXNet with half the cores, and it also drops PyTorch's intra-op threads,
which share the OpenMP runtime (measured: 2 -> 1 on a 2-core machine).

d2lft gives each framework its threads: before importing MXNet it sets
``MXNET_OMP_MAX_THREADS`` to the number of physical cores (unless the user set either
variable), so MXNet computes on every core and never touches the shared OpenMP count;
it still restores torch's count after the import, and gives torch its normal default
when torch is imported after MXNet. Measured on the 2-core VM (the book's MXNet loop,
5 epochs at 112 px on real photos; `benchmarks/bench_train.py`, variants
``book-mxnet-threads`` vs ``book``, docs/speed.md): 40.5 -> 68.3 images/s.
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


def mxnet_threads_env() -> dict:
    """The environment MXNet should be imported with: ``MXNET_OMP_MAX_THREADS`` set to
    the physical cores unless the user chose a count (an empty dict then)."""
    for var in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        if os.environ.get(var, "").strip():
            return {}
    return {"MXNET_OMP_MAX_THREADS": str(physical_cores())}
