"""Keep freed memory inside the process (glibc on Linux), for CPU training speed.

glibc hands out every allocation above its mmap threshold (at most 32 MiB by default) as fresh pages
from the kernel and gives them back on free. A meta-training step allocates and frees activation
buffers of tens to hundreds of MB many times, so the kernel zero-fills and page-faults all of them in
again every step: a quarter of the CPU time of a MAML run went to system time (BENCHMARKS.md). Raising
the mmap and trim thresholds keeps freed buffers in the heap for reuse; the cost is that the process
holds on to its peak memory until it exits, which a training process does anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the reusable heap
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the largest value it can express


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds for this process; False (and nothing changed) where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
