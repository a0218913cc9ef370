"""Keep freed memory in the heap while a run trains (Linux with glibc; no framework import).

PyTorch's CPU allocator keeps no cache: every activation and gradient of a training
step is a fresh ``malloc``. At batch 128 most of them are megabytes to a hundred
megabytes, which glibc serves with a fresh ``mmap`` (above its mmap threshold, never
more than 32 MiB) and gives back with ``munmap`` when the tensor dies; the next step
faults every page in again and the kernel zeroes it. On the 2-core VM at 112 px that
is ~150,000 page faults and ~0.27 s of system time per ResNet-18 training step, and at
224 px ~1.4 million and ~2.6 s (`benchmarks/heap_faults.py`).

During a training call d2lft sets two of glibc's documented ``mallopt`` parameters:
``M_MMAP_MAX = 0`` (large blocks come from the heap, where freed ones are reused) and
``M_TRIM_THRESHOLD`` to its maximum (the heap is not shrunk after each step). The
arithmetic is untouched. When the outermost call ends, glibc's defaults come back and
``malloc_trim(0)`` returns the free memory to the system. The heap keeps the address
range of the run's free blocks (their pages returned): glibc reuses such a free chunk
for a later large allocation before it maps a new one, and what it reuses stays
resident until the next trim (tests/test_heap.py measures in fresh processes for this
reason).

Measured on the 2-core VM (docs/speed.md): the book's torch loop at 224 px, 1 epoch,
11.8-13.8 -> 19.5-20.7 images/s. The cost is memory: freed blocks stay resident and
a heap that reuses blocks of changing sizes grows past the live data, so the peak
resident memory of that run rose from 3.9-4.0 to 6.3-6.6 GB (+13% at 112 px). Where
memory is tight, ``D2LFT_RETAIN_HEAP=0`` turns it off.

Left alone: other C libraries (musl, macOS, Windows), a preloaded allocator (jemalloc,
tcmalloc, mimalloc in ``LD_PRELOAD``), a user's own malloc settings
(``MALLOC_*_`` variables, ``glibc.malloc`` tunables), and ``D2LFT_RETAIN_HEAP=0``.
Blocks allocated by other threads are unaffected (glibc gives them their own arenas,
which map large blocks regardless): MXNet's engine threads, for one. torch's training
steps run in the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: glibc's defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX)
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
_INT_MAX = 2**31 - 1  # mallopt takes a C int

_USER_MALLOC_ENV = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
)

_lock = threading.Lock()
_depth = 0
_libc = None


def _glibc():
    """glibc's ctypes handle, or None where the C library is not glibc."""
    global _libc
    if _libc is None:
        _libc = False
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _ = lib.gnu_get_libc_version  # only glibc has it (AttributeError elsewhere)
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.mallopt.restype = ctypes.c_int
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.malloc_trim.restype = ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            pass
    return _libc or None


def why_not() -> str | None:
    """Why d2lft leaves malloc alone here (a short reason), or None if it retains."""
    if os.environ.get("D2LFT_RETAIN_HEAP", "").strip() == "0":
        return "D2LFT_RETAIN_HEAP=0"
    user = [v for v in _USER_MALLOC_ENV if v in os.environ]
    if user or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return f"the user's malloc settings ({', '.join(user) or 'GLIBC_TUNABLES'})"
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # libjemalloc, libtcmalloc, libmimalloc, ...
        return f"a preloaded allocator (LD_PRELOAD={preload})"
    if _glibc() is None:
        return "not glibc"
    return None


def active() -> bool:
    """True while a run retains the heap."""
    return _depth > 0


@contextlib.contextmanager
def retain():
    """``with retain(): train...``: large blocks from the heap, reused across steps;
    glibc's defaults and a ``malloc_trim`` when the outermost ``with`` ends."""
    global _depth
    lib = None if why_not() else _glibc()
    if lib is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            lib.mallopt(M_MMAP_MAX, 0)
            lib.mallopt(M_TRIM_THRESHOLD, _INT_MAX)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                lib.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                lib.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                lib.malloc_trim(0)
