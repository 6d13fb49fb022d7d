"""A blob file an upload reads in worker threads, closed only once no read of it runs.

An upload reads its file with ``os.pread`` in worker threads. Cancelled (at shutdown), the
upload stops waiting, but a read already running goes on in its thread: closing the descriptor
right then would let the read land in whatever file the process opens next under the same
number (the kernel reuses the lowest free one), or fail. So :meth:`BlobFile.close` closes the
descriptor at once only when no read runs; else the last read closes it as it returns. A read
that starts after the close fails (:class:`ClosedFile`) without touching the descriptor.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class ClosedFile(OSError):
    """A read of a :class:`BlobFile` that was closed already."""


class BlobFile:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._reads = 0  # reads running now, in any thread
        self._closing = False

    @classmethod
    def open(cls, path: Path) -> BlobFile:
        return cls(os.open(path, os.O_RDONLY))

    def size(self) -> int:
        """The file's length now (on the loop: an ``fstat`` does not block)."""
        with self._lock:
            if self._closing:
                raise ClosedFile("the blob file is closed")
            return os.fstat(self._fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (blocking: call it in a worker thread)."""
        with self._lock:
            if self._closing:
                raise ClosedFile("the blob file is closed")
            self._reads += 1
        try:
            return os.pread(self._fd, length, offset)
        finally:
            with self._lock:
                self._reads -= 1
                last = self._closing and self._reads == 0
            if last:
                os.close(self._fd)

    def close(self) -> None:
        """Close now, or as the read running now returns; idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._reads == 0
        if idle:
            os.close(self._fd)
