"""Host memory that training frees goes back to the system, so a training process's peak RSS is the peak of
what it holds, not that plus what glibc's allocator kept.

On a CPU every activation of a step is a buffer from glibc's malloc. Its mmap threshold starts at 128 KiB and
rises to the size of each mapped buffer that is freed (up to 32 MiB); from then on buffers of that size are
cut from the heap, where freed ones stay resident behind live ones. A packed row's per-layer activations (a
few MiB to some 20 MiB each) fall under that ceiling, so step after step the heap kept about as much again as
the step's live peak (`bench/dpo_throughput.py` prints both figures). Fixing the threshold stops it rising:
every buffer of `THRESHOLD` bytes or more is mapped on its own and unmapped when freed. On a GPU the
activations live in CUDA's caching allocator; this touches only the host's buffers there.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
THRESHOLD = 1 << 20


@functools.cache
def return_freed_buffers() -> bool:
    """Fix glibc's mmap threshold at `THRESHOLD` for this process (once). False where it is not set: not
    glibc, or the user chose the threshold (MALLOC_MMAP_THRESHOLD_ in the environment)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
