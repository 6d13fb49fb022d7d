"""Streaming reads of a blob file in large ``os.pread`` chunks, off the event loop: a committed
blob's (:class:`BlobReader`) and, through the same base, a growing fill's (``BlobFollower``)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Self

from docxy.cache.files import BlobFile, ClosedFile
from docxy.threads import on_loop, running_loop

#: Read size for a lone reader (shrunk as readers grow, see DiskBlobStore): 4 MiB measured
#: less CPU per GiB on a cache hit than 1 MiB (see the README benchmark).
READ_CHUNK = 4 * 1024 * 1024


def chunk_of(size: int | Callable[[], int]) -> int:
    """A read size, fixed or asked anew for every read (it shrinks as readers grow)."""
    return size if isinstance(size, int) else size()


class ClosingStream:
    """Chunks of a file read through a descriptor held open (and its blob pinned) until
    :meth:`close`, which also runs when it is garbage collected: ``release(fd)`` closes the
    descriptor and unpins the blob (the store's, which knows what the close may free). It runs
    once no read of the file runs (:class:`BlobFile`): a client that leaves mid-read cancels
    the wait, not the read in its thread.

    Subclasses iterate with :meth:`_read`. ``async with`` closes it; :meth:`read_all` collects
    everything (small blobs, tests).
    """

    def __init__(
        self, fd: int, release: Callable[[int], None], chunk_size: int | Callable[[], int]
    ) -> None:
        self._file = BlobFile(fd, release)
        self._chunk_size = chunk_size
        # Released on the loop it was opened on (the store's pins live there), whatever thread
        # the garbage collector finalizes it in.
        loop = running_loop()
        self._finalizer = weakref.finalize(self, on_loop, loop, self._file.close)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the file and unpin the blob, now; idempotent. (Dropped unclosed, the finalizer
        does it at the loop's next turn: :func:`docxy.threads.on_loop`.)"""
        if self._finalizer.detach() is not None:
            self._file.close()

    async def _read(self, pos: int, limit: int) -> bytes:
        """Up to a chunk, and at most ``limit`` bytes, from ``pos``, read in a worker thread."""
        want = min(chunk_of(self._chunk_size), limit)
        return await asyncio.to_thread(self._file.pread, want, pos)

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BlobReader(ClosingStream):
    """Bytes ``[start, stop)`` of a committed blob, from an already open file descriptor.

    The blob stays pinned (never evicted) until :meth:`close`, which also runs when the reader
    is iterated to the end, when its iterator is closed, or when it is garbage collected.
    """

    def __init__(
        self,
        fd: int,
        *,
        size: int,
        start: int,
        stop: int,
        release: Callable[[int], None],
        chunk_size: int | Callable[[], int] = READ_CHUNK,
        broken: Callable[[OSError], None] | None = None,
    ) -> None:
        super().__init__(fd, release, chunk_size)
        self.size = size
        self.start = start
        self.stop = stop
        self._broken = broken  # told of a read that failed (EIO, a file cut short)

    @property
    def length(self) -> int:
        """Number of bytes this reader yields (the response's Content-Length)."""
        return self.stop - self.start

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            pos = self.start
            while pos < self.stop and not self.closed:
                try:
                    data = await self._read(pos, self.stop - pos)
                    if not data:
                        raise OSError(f"blob file ended at {pos} of {self.stop} bytes")
                except ClosedFile:
                    raise  # closed under the read: this reader's end, not the file's fault
                except OSError as exc:
                    if self._broken is not None:
                        self._broken(exc)
                    raise
                pos += len(data)
                yield data
        finally:
            self.close()
