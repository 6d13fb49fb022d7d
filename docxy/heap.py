"""glibc's malloc, set up for a process that moves megabyte buffers, and trimmed after bursts.

Both are no-ops (False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any


def _libc() -> Any:
    """glibc, or None (another C library, or none ctypes can load)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


M_ARENA_MAX = -8  # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Buffers under this size come from the heap, not from a fresh mmap each (see below).
MMAP_THRESHOLD = 8 * 1024 * 1024
#: Free memory at the top of the heap kept for the next buffers instead of handed back.
TRIM_THRESHOLD = 16 * 1024 * 1024


def tune_malloc(arenas: int = 2) -> bool:
    """Set glibc's malloc up for a process that moves megabyte buffers; False if not glibc.

    - At most ``arenas`` arenas: each worker thread otherwise gets its own arena that keeps
      freed chunk buffers; with many concurrent downloads that is most of the resident memory
      (as ``MALLOC_ARENA_MAX``, which must be set before the process starts).
    - Fixed mmap and trim thresholds: with glibc's moving ones, the megabyte of TLS output
      each chunk of a blob becomes was mapped, faulted in page by page and handed back again,
      on the event loop: about a tenth of a cold pull's CPU over HTTPS (measured 2.4 -> 2.0
      CPU-s/GiB on one core). ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
      environment win over these.
    """
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and done
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        done = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and done
    return done


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: free heap pages back to the system; False if not glibc."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
