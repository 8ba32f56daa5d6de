"""Keep freed memory in the process for the next update (glibc's malloc).

Every update allocates the same few megabytes of tensors (the sampled episodes, the
replay's per-step buffers and gradients) and frees them again. glibc serves an
allocation above its mmap threshold with fresh pages from the kernel and gives them
back when it is freed, so each update paid a page fault per 4 KiB on first touch:
measured on small, about 20 ms of DIAL-SAU's 70 ms update. Raising the mmap threshold
to its maximum and the trim threshold above what a run frees keeps those pages in the
heap for the next update. Process-wide, so it is called by what trains (`train`), and
it does nothing where the C library has no `mallopt` (not glibc).
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask malloc to keep freed memory for reuse; True where it agreed (glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
