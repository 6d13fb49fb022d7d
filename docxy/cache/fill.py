"""One in-progress blob download: a single writer and any number of followers.

The writer appends upstream bytes to a temp file while hashing them; followers read the same temp
file as it grows (through their own descriptor, so the atomic rename at commit does not disturb
them) and wait on the fill for more bytes, for the commit, or for an abort. A follower that keeps
up with a pumped download gets its latest reads from memory instead, the very objects read
(:class:`RecentReads`): no read back, no copy. :func:`run_fill` is
the whole download in one pass: fetch, reserve and announce the length, tee into the temp file,
verify, commit; the store runs it as a named task (``DiskBlobStore.fill``). The temp file never
grows past the room the store reserved for it (see :meth:`BlobWriter.reserve`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from docxy.cache.directwrite import FILLS, DirectWriter, read_back_later
from docxy.cache.errors import (
    CorruptDownload,
    DigestMismatch,
    FetchFailed,
    FetchRefused,
    FillAborted,
    FillClosed,
    NoRoom,
    SizeMismatch,
    VerifyError,
)
from docxy.cache.files import ClosedFile
from docxy.cache.preallocate import preallocate
from docxy.cache.reader import READ_CHUNK, ClosingStream, chunk_of
from docxy.cache.resuming import RESUMES, BrokeOff, Resuming
from docxy.core.digests import Digest
from docxy.core.errors import UpstreamError
from docxy.threads import in_own_thread, on_loop, running_loop, soon_on

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

    from docxy.cache.blobs import BlobEntry

log = logging.getLogger(__name__)

#: Bytes buffered by a writer before one write+hash round trip to a worker thread.
WRITE_BUFFER = 512 * 1024
#: The size of a fill's worker thread's reads of the upstream body (each a new object; the
#: store makes it smaller when many fills run at once).
PUMP_BUFFER = 1024 * 1024
#: Reads in one fill's pipeline: read by one thread, then written by a second and
#: hashed by a third at once; the next read waits while this many are not both written and
#: hashed yet.
PUMP_DEPTH = 6
#: A pump's first read, and its smallest. A read returns once it is full (http.client's), so a
#: slow upstream's bytes reached the clients a whole PUMP_BUFFER at a time: seconds apart at a
#: few hundred KB/s, nothing at all for a small blob until its end (:func:`next_read_size`).
PUMP_READ_MIN = 64 * 1024
#: A read that took longer than this halves the next (down to PUMP_READ_MIN); one that took
#: less than FAST_READ doubles it (up to the pump's size): large reads at speed, prompt when slow.
SLOW_READ = 0.25
FAST_READ = 0.05
#: A pump's latest reads kept in memory for its followers (:class:`RecentReads`).
RECENT = 6
#: Seconds a pump waits, before it lets a kept read go, for its leading follower to take it
#: (:meth:`RecentReads.add`); one that does not in time no longer paces that fill.
PACE_WAIT = 2.0


def next_read_size(size: int, took: float, largest: int) -> int:
    """The pump's next read size after one of ``size`` bytes took ``took`` seconds: halved
    after a slow read (not below :data:`PUMP_READ_MIN`), doubled after a quick one (not above
    ``largest``), else the same."""
    if took > SLOW_READ:
        return max(size // 2, min(PUMP_READ_MIN, largest))
    if took < FAST_READ:
        return min(size * 2, largest)
    return size


class RecentReads:
    """A pump's latest reads, as read, for the followers that keep up (see
    :meth:`BlobFollower._next`): ``(offset, bytes)``, oldest first, contiguous, at most
    :data:`RECENT` of them. The pump's writing thread adds each read once it is in the temp
    file, pacing itself to the leading follower (:meth:`add`); the event loop only looks, says
    how far each follower took the blob (:meth:`took`), and :meth:`clear` s them when bytes are
    written there instead. The
    thread keeps them here rather than handing them to the loop: a busy loop's queue held every
    read it had not run yet (50 clients: 505 MiB peak RSS), here a read is let go as soon as
    newer ones replace it."""

    def __init__(self, keep: int = RECENT) -> None:
        self._reads: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)
        #: How far each follower reading the fill has taken it (by its token: see
        #: :data:`_READERS`).
        self._taken: dict[int, int] = {}
        self._paced = True

    def took(self, reader: int, end: int) -> None:
        """Follower ``reader`` has taken the blob up to byte ``end`` (on the loop)."""
        with self._moved:
            self._taken[reader] = end
            self._moved.notify_all()

    def left(self, reader: int) -> None:
        """Follower ``reader`` reads no more (done, or its client left)."""
        with self._moved:
            if self._taken.pop(reader, None) is not None:
                self._moved.notify_all()

    def unpaced(self) -> None:
        """The pump waits for no follower any more (it was stopped, a write failed)."""
        with self._moved:
            self._paced = False
            self._moved.notify_all()

    def _pace(self, end: int, wait: float) -> None:
        """Called by the pump's thread, the lock held, before its next read pushes out the
        oldest one kept, which ends at byte ``end``: wait until the leading follower has taken
        it. The first client of a cold blob then gets every byte from memory as it arrives,
        at its own pace (as a relay would): with the temp file written past the page cache
        (:mod:`docxy.cache.directwrite`), a read back is a read of the disk. Only the fastest
        follower paces the fill; with none, or once one has not taken the read within
        ``wait`` seconds (a stalled client), the pump goes on as fast as the upstream sends,
        and a follower that fell behind reads the temp file."""
        moved = self._moved.wait_for(  # checked first: no wait when it holds already
            lambda: not self._paced or not self._taken or max(self._taken.values()) >= end,
            timeout=wait,
        )
        if not moved:
            self._paced = False

    @property
    def paced(self) -> bool:
        """Whether the pump still waits for its leading follower (see :meth:`add`)."""
        return self._paced

    def add(self, offset: int, data: bytes, wait: float = PACE_WAIT) -> None:
        """Keep the pump's read ``data`` (at ``offset``), the oldest kept read let go if
        there are :data:`RECENT` already: not before the leading follower has taken that one
        (bounded by ``wait``: see :meth:`_pace`)."""
        with self._moved:
            if len(self._reads) == self._reads.maxlen:
                oldest, kept = self._reads[0]
                self._pace(oldest + len(kept), wait)
            self._reads.append((offset, data))

    def clear(self) -> None:
        with self._lock:
            self._reads.clear()

    def at(self, pos: int) -> tuple[int, bytes] | None:
        """The read that holds byte ``pos``, if one is kept, with its offset."""
        with self._lock:
            for offset, data in self._reads:
                if offset <= pos < offset + len(data):
                    return offset, data
        return None

    def start(self) -> int | None:
        """Where the oldest kept read starts (None: none is)."""
        with self._lock:
            return self._reads[0][0] if self._reads else None

    def __len__(self) -> int:
        return len(self._reads)


#: A token for each follower in :attr:`RecentReads._taken`, never given twice: a follower
#: collected unclosed leaves from the loop, later, and by then its ``id()`` may be another
#: follower's (CPython reuses a freed object's), which would leave in its place.
_READERS = itertools.count()


class FillState(enum.Enum):
    WRITING = "writing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class FillHost(Protocol):
    """What a fill needs from the store that owns it."""

    async def reserve(self, fill: InFlight, nbytes: int) -> None: ...
    def fill_committed(self, fill: InFlight) -> BlobEntry | None: ...
    def fill_ended(self, fill: InFlight) -> None: ...
    def fill_discarded(
        self, fill: InFlight, fd: int | None, writing: asyncio.Future[Any] | None = None
    ) -> None:
        """Delete the temp file and close ``fd`` (None: not open) off the event loop; with
        ``writing`` (a thread that may still write through ``fd``), once that is done."""
        ...

    def temp_closed(self, fill: InFlight) -> None:
        """One of ``fill.holders`` was closed (on the loop, after the close)."""
        ...

    def fill_grew(self, fill: InFlight, nbytes: int) -> None: ...
    def cache_write_failed(self, fill: InFlight, exc: OSError, outcome: str) -> None:
        """Say (the one line for it) that writing ``fill`` failed, and ``outcome``."""
        ...


class BodySource(Protocol):
    """An upstream body read with blocking calls (``docxy.upstream.direct.DirectBody``)."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, in a new object; none at its end; raises if the
        upstream fails."""
        ...

    def interrupt(self) -> None:
        """Make a blocked :meth:`read` return or raise now; called from another thread."""
        ...


def _iov_max() -> int:
    """The most buffers one ``writev`` takes (Linux: 1024); more is EINVAL, not a short write.
    16 (POSIX's least) where the platform does not say."""
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return 16
    return limit if limit > 0 else 16


IOV_MAX = _iov_max()


def write_all(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
    """Write all ``chunks`` to ``fd`` (tests replace this to simulate a full disk), at most
    :data:`IOV_MAX` of them a call: a write buffer of small pieces (an upstream that trickles)
    holds more than that."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(fd, views[:IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


@dataclass(eq=False)
class Handover:
    """Where a download went on from the upstream, if it did: ``at`` is how many bytes its
    ``origin`` gave before (a shared store's body that broke off, finished from the upstream:
    :mod:`docxy.shared.body`), None while every byte came from the origin. Set once, by the
    download, before the upstream's first byte is handed to the fill; read by whoever counts
    where a client's bytes came from (a fill's clients get the blob from its first byte)."""

    at: int | None = None

    def upstream_part(self, nbytes: int) -> int:
        """Of the blob's first ``nbytes``, how many came from the upstream after the handover."""
        return 0 if self.at is None else max(nbytes - self.at, 0)

    def describe(self, origin: str) -> str:
        """Where the bytes came from, for a log line: ``shared until byte 5000, then upstream``."""
        return origin if self.at is None else f"{origin} until byte {self.at}, then upstream"


@dataclass(eq=False)
class InFlight:
    """Shared state of one download, seen by its writer and its followers."""

    digest: Digest
    tmp_path: Path
    state: FillState = FillState.WRITING
    written: int = 0
    size: int | None = None
    size_known: bool = False
    reason: str = ""
    #: The upstream's failure that stopped the fill's fetch before its first byte, if it was
    #: one: its followers' clients are answered with it, or passed through (``docxy.pull``).
    upstream_error: UpstreamError | None = None
    upstream_source: str = ""  # which upstream's (its host): a fill serves every upstream's
    #: Bytes the store counts against ``max_size`` for this fill; ``written`` never passes it.
    reserved: int = 0
    #: Aborted because the cache had no room for it: its followers pass it through.
    no_room: bool = False
    #: Aborted because its bytes are not the blob (length or digest): :class:`CorruptDownload`.
    corrupt: bool = False
    #: Set when the cache itself gave the fill up (a failed write, no room) after this many
    #: good bytes in the temp file: a follower with a ``rest`` reads them, then gets the rest
    #: of the blob from the upstream (see :meth:`BlobFollower._resumed`) instead of being cut.
    kept: int | None = None
    #: The fill's own hash of exactly those ``kept`` bytes, when it had hashed just them (a
    #: copy no one updates): its followers go on from a copy of it instead of hashing the kept
    #: bytes again from the temp file. None: they do (see :meth:`BlobWriter._keep_hash`).
    kept_hash: Hasher | None = None
    #: Where its bytes come from (the download's ``origin``), set before its size is announced.
    origin: str = ""
    #: Where they came from the upstream instead, if they did (the download's ``handover``).
    handover: Handover = field(default_factory=Handover)
    #: Descriptors open on the temp file that tell the store when they are closed (followers',
    #: the writer's once the file is removed); whether the store removed the file, and its
    #: bytes if it was still held then: they count against ``max_size`` until its last close
    #: frees them.
    holders: int = 0
    removed: bool = False
    unlinked: int = 0
    #: Bytes of blocks found for the temp file up front (:meth:`BlobWriter.preallocate`): a
    #: removed temp file holds at least these until its last close.
    preallocated: int = 0
    #: Bytes the fill's download got from its origin so far (written or not: a disk that
    #: refused them passes them through), and how many of them :meth:`claim` counted.
    received: int = 0
    claimed: int = 0
    #: A pump's latest reads, for the followers that keep up.
    recent: RecentReads = field(default_factory=RecentReads)
    #: Every byte is in and the length and digest are right: the followers may send the last
    #: byte, and end, without waiting for the commit (its sync, then the rename), nor for a
    #: fill given up after this (a failed sync), which only leaves the blob uncached.
    verified: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        """Wake every follower waiting in :meth:`changed`."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        """Wait for the next :meth:`notify` (check the state first, with no await between)."""
        await self._changed.wait()

    def claim(self, nbytes: int) -> int:
        """Of ``nbytes`` one of the fill's clients was sent from it, how many count as bytes
        its origin sent: its clients claim the bytes it received, together, in the order
        they end (the one that started it may have left early); the rest were sent again."""
        taken = min(nbytes, max(self.received - self.claimed, 0))
        self.claimed += taken
        return taken

    def check_not_aborted(self) -> None:
        if self.state is FillState.ABORTED:
            if self.no_room:
                raise NoRoom(self.reason)
            said = f"fill of {self.digest} aborted: {self.reason}"
            if self.corrupt:
                raise CorruptDownload(said, self.upstream_error, self.upstream_source)
            raise FillAborted(said, self.upstream_error, self.upstream_source)


class BlobWriter:
    """The one caller that fetches a blob from upstream and feeds it to the cache.

    Use as ``async with writer:`` (or call :meth:`abort` in ``finally``): leaving without
    :meth:`commit` aborts the fill so followers fail fast instead of waiting forever.
    If writing the temp file fails (disk full, EIO), the fill is given up with the bytes
    written so far kept for its followers (:attr:`InFlight.kept`): they get the rest from the
    upstream (see :class:`BlobFollower`); nothing is cached and :attr:`caching` is False.
    """

    def __init__(
        self,
        fill: InFlight,
        fd: int | None,
        host: FillHost,
        buffer_size: int = WRITE_BUFFER,
        pump_buffer: int | Callable[[], int] = PUMP_BUFFER,
        *,
        direct: bool = True,
    ) -> None:
        self.fill = fill
        self._direct = direct  # the pump writes whole blocks past the page cache
        self._pump_buffer = pump_buffer
        self._fd = fd
        self._host = host
        self._buffer_size = buffer_size
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._hash = fill.digest.hasher()
        #: Bytes ``_hash`` has taken in (None: unknown, a hashing thread failed); read on the
        #: loop only while no thread hashes.
        self._hashed: int | None = 0
        #: Copies of ``_hash`` after its first N bytes, ``(N, copy)``: the pump's hashing thread
        #: takes one before each read it hashes (it may hash reads not written yet), a flush one
        #: before a batch whose write failed, so that a fill given up keeps the hash of just the
        #: bytes written (:meth:`_keep_hash`). The last few only.
        self._hash_marks: collections.deque[tuple[int, Hasher]] = collections.deque(
            maxlen=PUMP_DEPTH + 2
        )
        self._finished = False
        #: A thread that may write through ``_fd`` while it runs (a flush's, the pump's): the
        #: descriptor is closed only once it is done (see :meth:`_close_and_discard`).
        self._fd_user: asyncio.Future[Any] | None = None
        self._pumped: BodySource | None = None  # the body the pump's thread reads, meanwhile
        #: Done once the pump's threads have all ended (they outlive a pump cancelled twice).
        self._pump_done: asyncio.Future[None] | None = None
        #: The pump thread's wait for room (:meth:`_reserved_from_thread`), meanwhile.
        self._reserving: concurrent.futures.Future[bool] | None = None
        self._pump_stop: threading.Event | None = None  # the pump thread's stop flag, meanwhile
        #: Bytes the pump wrote past the page cache (set once its writing thread is done).
        self._direct_bytes = 0
        #: The loop the writer serves: a finalizer run in another thread discards there.
        self._loop = asyncio.get_running_loop()
        self._finalizer = weakref.finalize(self, _abandon, fill, fd, host, self._loop)

    @property
    def digest(self) -> Digest:
        return self.fill.digest

    @property
    def caching(self) -> bool:
        """False once the temp file is gone (disk full, abort): bytes are only passed through."""
        return self._fd is not None and self.fill.state is FillState.WRITING

    @property
    def finished(self) -> bool:
        """Committed or aborted: nothing more is written."""
        return self._finished

    @property
    def received(self) -> int:
        """Bytes given to :meth:`write` so far."""
        return self.fill.received

    def announce(self, size: int | None) -> None:
        """Publish the upstream's Content-Length (or None) so followers can send headers."""
        self.fill.size, self.fill.size_known = size, True
        self.fill.notify()

    async def preallocate(self) -> None:
        """Find the temp file's blocks for the announced length before the first write
        (:func:`preallocate`), in a worker thread: 2 ms per GiB on ext4 here, 0.5 s on tmpfs,
        which allocates the memory. A disk that has no room for them (or fails) gives the fill
        up before its first byte, as a failed write would: its followers get the blob from
        the upstream."""
        size = self.fill.size
        if size is None or self._fd is None or not self.caching:
            return
        io = asyncio.get_running_loop().run_in_executor(None, preallocate, self._fd, size)
        self._fd_user = io  # an abort meanwhile closes the descriptor once the call is done
        try:
            found = await asyncio.shield(io)
        except asyncio.CancelledError:
            await asyncio.wait([io])
            raise
        except OSError as exc:
            if self.caching:
                self._stop_caching(exc)
        else:
            self.fill.preallocated = size if found else 0

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; followers see it after the next flush (every ``buffer_size``)."""
        if self._finished:
            raise FillClosed(f"writer of {self.digest} already finished")
        if not chunk:
            return
        self.fill.received += len(chunk)
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        if self._pending_len >= self._buffer_size:
            await self.flush()

    async def flush(self) -> None:
        """Hash and write the buffered bytes now, and wake the followers."""
        if not self._pending:
            return
        self.fill.recent.clear()  # a pump's reads are not the latest bytes any more
        chunks, nbytes = self._pending, self._pending_len
        self._pending, self._pending_len = [], 0
        if self.caching:
            await self.reserve(self.fill.written + nbytes)  # else: written uncached
        loop = asyncio.get_running_loop()
        io = loop.run_in_executor(None, self._hash_and_write, chunks, self._fd)
        self._fd_user = io
        try:
            error = await asyncio.shield(io)
        except asyncio.CancelledError:
            # The thread still writes to the temp file: let it finish before anything (abort,
            # a finalizer) closes that descriptor, which could by then name another file.
            await asyncio.wait([io])
            raise
        if error is not None:
            self._stop_caching(error)
        else:
            self._grew(nbytes)

    async def whole(self) -> bool:
        """Whether the bytes received so far are the whole blob: its announced length (when
        known) and its digest (the buffered bytes hashed first). Asked when the download broke
        off, once no thread hashes: a chunked body whose ending never came (a proxy that
        closed early) has every byte, and a rest asked from the blob's end is a 416. False
        once the fill is not writing (its followers went on without it, or it ended)."""
        fill = self.fill
        if fill.state is not FillState.WRITING or self._finished:
            return False
        if fill.size is not None and fill.received != fill.size:
            return False
        await self.flush()
        return self._hashed is not None and self._hash.hexdigest() == self.digest.hex

    def _grew(self, nbytes: int) -> None:
        """``nbytes`` more are in the temp file: tell the store and the followers."""
        if self.caching:
            self.fill.written += nbytes
            self._host.fill_grew(self.fill, nbytes)
            self.fill.notify()

    async def reserve(self, total: int) -> bool:
        """Whether the temp file may grow to ``total`` bytes: within the fill's reservation, or
        reserved from the store now (which may evict first). A fill of unknown length reserves
        as its bytes arrive. If not, the fill stops caching and its followers are cut: more
        bytes than announced (``commit`` then raises :class:`SizeMismatch`), or no room (they
        raise :class:`NoRoom` and pass the blob through). Nothing is ever written past it."""
        fill = self.fill
        if total <= fill.reserved or not self.caching:
            return self.caching
        if fill.size_known and fill.size is not None and total > fill.size:
            said = f"upstream sent more than the {fill.size} bytes it announced"
            self._close_and_discard(said, failed=True)  # a failed download: its one WARNING
            return False
        try:
            await self._host.reserve(fill, total - fill.reserved)
        except NoRoom as exc:
            fill.no_room, fill.kept = True, fill.written
            self._keep_hash()
            self._close_and_discard(str(exc))
            return False
        return self.caching

    async def pump(self, body: BodySource) -> None:
        """Read ``body`` to its end in a thread of its own, while a second thread writes each
        read (whole blocks past the page cache: :mod:`docxy.cache.directwrite`) and a third
        hashes it, the two at once.

        Followers see each read as soon as it is in the temp file: the hash, the slowest step,
        is off their path (only the last byte waits for it, at the commit), and the reading
        thread is back in ``recv`` while the write and the hash run. The hash does not wait
        for the write (nor for the disk behind it): the slowest step starts on each read as
        soon as it is read. The event loop only hears of each read (followers woken, room made
        in the store); the reads themselves wait for the followers in :attr:`InFlight.recent`,
        which paces the writes to the leading one. If writing fails the reading thread stops:
        the fill is given up (its followers get the rest from the upstream). Cancelling sets a
        stop flag, interrupts the body's blocked read and waits for every thread, so the temp
        file's descriptor is never closed under a running write; an abort meanwhile (another
        task's, or the caller's after a second cancel) leaves the descriptor open until the
        threads are done, which they are at once: another task's interrupts the body's read
        too, and after a second cancel the first had (a stalled upstream does not hold the
        removed temp file).
        """
        if self._finished:
            raise FillClosed(f"writer of {self.digest} already finished")
        await self.flush()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        size = chunk_of(self._pump_buffer)
        done = in_own_thread(
            f"fill {self.digest.hex[:12]}", lambda: self._pump(body, size, stop, loop)
        )
        self._fd_user, self._pumped, self._pump_stop = done, body, stop
        self._pump_done = done
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self._interrupt_pump(body)
            await asyncio.wait([done])
            if not done.cancelled():
                done.exception()  # retrieved: the cancellation is what the caller sees
            raise
        finally:
            self._pumped = self._pump_stop = None
            if done.done():
                self._keep_hash()  # a fill given up meanwhile: its hash is settled now
            else:  # cancelled again while its threads run: the hash is settled once they end
                done.add_done_callback(lambda _: self._keep_hash())

    def _pump(
        self,
        body: BodySource,
        size: int,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """The reading thread of :meth:`pump`: read, make room, hand the read to the writing
        thread and to the hashing thread; repeat. The first writes each read and hands it to
        the loop (for the followers); each lets the next read go once done with one. Returns
        once everything read is written and hashed, or early when the fill may not grow (no
        room, more than announced: see :meth:`reserve`) or a write failed."""
        fd = self._fd
        read = self.fill.written  # by this thread; the writes and the loop follow
        # One of each per read in the pipeline: let go by the writing and the hashing thread.
        free_write: queue.SimpleQueue[None] = queue.SimpleQueue()
        free_hash: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(PUMP_DEPTH):
            free_write.put(None)
            free_hash.put(None)
        writing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        hashing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        failed: list[BaseException] = []
        halted = threading.Event()  # a write failed: no more reads
        hashed = 0  # bytes handed to the hashing thread
        want = min(PUMP_READ_MIN, size)  # this read's size: grows to `size` while reads are quick
        recent = self.fill.recent
        hasher = threading.Thread(
            target=_hash_all,
            args=(self._hash, self._hashed, self._hash_marks, hashing, free_hash, failed, recent),
            name=f"hash {self.digest.hex[:12]}",
            daemon=True,
        )
        writer = threading.Thread(
            target=self._write_reads,
            args=(fd, size, writing, free_write, halted, failed, loop),
            name=f"write {self.digest.hex[:12]}",
            daemon=True,
        )
        hasher.start()
        try:
            writer.start()
            try:
                while not stop.is_set() and not failed and not halted.is_set():
                    free_write.get()
                    free_hash.get()
                    if stop.is_set() or failed or halted.is_set():
                        break  # a slot let go by a failed write (or hash): read nothing more
                    began = time.monotonic()
                    chunk = body.read(want)
                    want = next_read_size(want, time.monotonic() - began, size)
                    nbytes = len(chunk)
                    if not nbytes:
                        break
                    self.fill.received += nbytes  # by this thread alone, meanwhile
                    read += nbytes
                    if fd is not None and not self._reserved_from_thread(read, loop, stop):
                        break  # the fill is over: reading on would serve nobody
                    writing.put(chunk)
                    hashing.put(chunk)
                    hashed += nbytes
            finally:
                writing.put(None)
                writer.join()
        finally:
            hashing.put(None)
            hasher.join()
            # Read by the loop once this thread is done (whatever ended it).
            if failed or self._hashed is None:
                self._hashed = None
            else:
                self._hashed += hashed
        if failed:
            said = f"writing or hashing {self.digest} failed: {failed[0]!r}"
            raise FillAborted(said) from failed[0]

    def _write_reads(
        self,
        fd: int | None,
        size: int,
        writing: queue.SimpleQueue[bytes | None],
        free: queue.SimpleQueue[None],
        halted: threading.Event,
        failed: list[BaseException],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """The writing thread of :meth:`pump`: append each read to the temp file (whole blocks
        past the page cache: :class:`DirectWriter`), then hand it to the followers, in order.
        After a failed write it writes nothing more (the reads still queued are let go) and
        says so: the reading thread stops, the loop gives the fill up (its followers get the
        rest from the upstream; the hashing thread's marks keep the hash of just the bytes
        written). Anything else that goes wrong here waits in ``failed`` for the reading
        thread to raise, as a hashing error does; the reads are let go all the same, so the
        reading thread never waits for ever."""
        written = self.fill.written
        direct = None if fd is None else DirectWriter(fd, written, size, direct=self._direct)
        try:
            while (chunk := writing.get()) is not None:
                if halted.is_set():
                    free.put(None)  # not written: the fill is given up
                    continue
                try:
                    if direct is not None:
                        try:
                            direct.write(chunk, write_all)
                        except OSError as exc:
                            # No more writes: the loop may close the descriptor at once, and
                            # gives the fill up; reading on would serve nobody.
                            direct.close()  # its flags as they were, while it is still open
                            halted.set()
                            self.fill.recent.unpaced()
                            loop.call_soon_threadsafe(self._thread_stopped_caching, exc)
                            free.put(None)
                            continue
                        self.fill.recent.add(written, chunk)
                        written += len(chunk)
                        loop.call_soon_threadsafe(self._grew, len(chunk))
                except BaseException as exc:  # noqa: BLE001 - raised by the reading thread
                    failed.append(exc)
                    halted.set()
                    self.fill.recent.unpaced()
                free.put(None)
        finally:
            if direct is not None:
                direct.close()
                self._direct_bytes = direct.written_directly

    def _reserved_from_thread(
        self, total: int, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> bool:
        """:meth:`reserve`, from the pump's thread: asks the loop only past the reservation.
        The wait for room (up to ``cache.room_wait``) is cut short when the pump is stopped or
        the fill ends meanwhile (:meth:`_interrupt_pump`): no room then."""
        if total <= self.fill.reserved:
            return True
        if stop.is_set():
            return False
        reserving = asyncio.run_coroutine_threadsafe(self.reserve(total), loop)
        self._reserving = reserving
        # Stopped between the check above and now: the loop, which sets the flag before it
        # looks for this future, may have found none (the reserve can be running already).
        if stop.is_set():
            reserving.cancel()
        try:
            return reserving.result()
        except concurrent.futures.CancelledError:
            return False
        finally:
            self._reserving = None

    def _interrupt_pump(self, body: BodySource) -> None:
        """Stop the pump's thread, cut short wherever it waits: in a read of a stalled
        upstream (until its read timeout) or for room in the store (until ``cache.room_wait``).
        The stop flag is set first: a wait for room that starts meanwhile cancels itself."""
        if self._pump_stop is not None:
            self._pump_stop.set()
        self.fill.recent.unpaced()
        body.interrupt()
        reserving = self._reserving
        if reserving is not None:
            reserving.cancel()

    def _hash_and_write(self, chunks: list[bytes], fd: int | None) -> OSError | None:
        """Write ``chunks`` (unless ``fd`` is None), then hash them. Should the write fail, a
        copy of the hash before them is marked first: the hash of just the bytes the fill
        keeps (see :meth:`_keep_hash`). They are hashed all the same: the writer goes on
        uncached, and verifies what it passed through."""
        error = None
        if fd is not None:
            try:
                write_all(fd, chunks)
            except OSError as exc:
                error = exc
                if self._hashed is not None:
                    self._hash_marks.append((self._hashed, self._hash.copy()))
        for chunk in chunks:
            self._hash.update(chunk)
        if self._hashed is not None:
            self._hashed += sum(len(chunk) for chunk in chunks)
        return error

    def _keep_hash(self) -> None:
        """For a fill given up (:attr:`InFlight.kept`), hand its followers a copy of its hash
        if that is the hash of just the kept bytes (or a copy marked on the way is: see
        :attr:`_hash_marks`): not while the pump's hashing thread may still run (the pump
        offers it once that thread is done, even after a second cancel returned from it), nor
        once neither is of just those bytes."""
        fill = self.fill
        if fill.kept is None or fill.kept_hash is not None:
            return
        if self._pump_done is not None and not self._pump_done.done():
            return
        if self._hashed is None:  # a hashing thread failed: its marks too may be wrong
            return
        if self._hashed == fill.kept:
            fill.kept_hash = self._hash.copy()
            return
        fill.kept_hash = next((h for at, h in self._hash_marks if at == fill.kept), None)

    def _thread_stopped_caching(self, exc: OSError) -> None:
        """The pump's thread failed to write and no longer uses the temp file's descriptor.
        A fill ended meanwhile (an abort, a cancel) stays as it ended: its followers are not
        sent to the upstream for a rest, and misses are not paused for a write nobody needed."""
        self._fd_user = None
        if self.fill.state is FillState.WRITING:
            self._stop_caching(exc)

    def _stop_caching(self, exc: OSError) -> None:
        """Give the fill up after a failed write (or sync): its followers keep the bytes
        written so far and get the rest of the blob from the upstream, uncached."""
        outcome = "its clients get the rest from the upstream, uncached"
        self._host.cache_write_failed(self.fill, exc, outcome)
        self.fill.kept = self.fill.written
        self._keep_hash()
        self._close_and_discard(f"cache write failed: {exc.strerror or exc}", said=True)

    async def commit(
        self,
        expected_size: int | None = None,
        mismatch: Mismatch | None = None,
        verified: Callable[[], None] | None = None,
    ) -> BlobEntry | None:
        """Verify length and digest, then make the blob visible under its final name.

        ``expected_size`` defaults to the announced size. Raises :class:`SizeMismatch` or
        :class:`DigestMismatch` (after aborting: nothing cached, followers fail; ``mismatch``
        is told first, and what it answers ends the failure's one WARNING line); ``verified``
        is told when they are right, before the sync. Returns the committed entry, or None in
        pass-through mode or when the blob does not fit the cache.
        """
        if self._finished:
            raise FillClosed(f"writer of {self.digest} already finished")
        await self.flush()
        failed = self._unverified(self.fill.size if expected_size is None else expected_size)
        if failed is not None:
            reason, unverified = failed
            said = None if mismatch is None else mismatch(unverified)
            reason = reason if not said else f"{reason}; {said}"
            if self.fill.state is not FillState.WRITING:
                # Given up by the cache meanwhile (the write of the last bytes failed, no room)
                # and said then: that the download is not the blob is news all the same.
                _warn_failed(self.fill, reason)
            self.fill.corrupt = True
            self.fail(reason)
            raise unverified
        self.fill.size, self.fill.size_known = self.fill.received, True
        if verified is not None:
            verified()
        if not self.caching:  # its followers went on from the bytes it kept (or were cut)
            self._finish()
            return None
        # Every byte is in the temp file and verified: the followers send the last byte now.
        # The sync (seconds for a big blob: nothing made the kernel write the bytes back
        # meanwhile) only keeps the blob; should it fail, they have every byte all the same.
        self.fill.verified = True
        self.fill.notify()
        fd = self._take_fd()
        assert fd is not None  # caching implies an open temp file
        try:
            await asyncio.to_thread(_sync_and_close, fd)
        except OSError as exc:
            self._stop_caching(exc)
            self._finish()
            return None
        entry = self._host.fill_committed(self.fill)
        self.fill.state = FillState.COMMITTED
        self._finish()
        if entry is not None and self._direct_bytes:
            read_back_later(entry.path, entry.size)  # into the page cache, for the next hits
        return entry

    def _unverified(self, expected_size: int | None) -> tuple[str, VerifyError] | None:
        """Why the bytes received are not the blob (for the log, and as raised), or None."""
        if expected_size is not None and self.fill.received != expected_size:
            said = f"expected {expected_size} bytes, got {self.fill.received}"
            return f"length mismatch: {said}", SizeMismatch(f"{self.digest}: {said}")
        actual = self._hash.hexdigest()
        if actual != self.digest.hex:
            said = f"expected {self.digest}, got {self.digest.algorithm}:{actual}"
            return f"digest mismatch: {said}", DigestMismatch(said)
        return None

    def abort(self, reason: str, upstream: UpstreamError | None = None, source: str = "") -> None:
        """Discard the temp file; followers raise :class:`FillAborted`. Idempotent.
        ``upstream``: the upstream's answer that ended it (its word on the blob, which the
        followers' clients are told), and ``source``: which upstream's, as for :meth:`fail`."""
        if self._finished:
            return
        if upstream is not None and self.fill.state is FillState.WRITING:
            self.fill.upstream_error, self.fill.upstream_source = upstream, source
        self._close_and_discard(reason)
        self._finish()

    def fail(self, reason: str, upstream: UpstreamError | None = None, source: str = "") -> None:
        """Abort because the download failed: one WARNING line says why and where the bytes
        came from (:attr:`InFlight.origin`), in place of the abort's INFO line. Idempotent.
        ``upstream``: the upstream's failure, when the fetch could not start for it, and
        ``source``: which upstream that was."""
        if self._finished:
            return
        if self.fill.state is FillState.WRITING:
            self.fill.upstream_error, self.fill.upstream_source = upstream, source
        self._close_and_discard(reason, failed=True)
        self._finish()

    def _take_fd(self) -> int | None:
        """Hand over the temp file descriptor; the finalizer no longer closes it."""
        fd, self._fd = self._fd, None
        if self._finalizer.detach() is not None:
            self._finalizer = weakref.finalize(
                self, _abandon, self.fill, None, self._host, self._loop
            )
        return fd

    def _close_and_discard(self, reason: str, *, failed: bool = False, said: bool = False) -> None:
        fd = self._take_fd()
        user = self._fd_user
        writing = user if fd is not None and user is not None and not user.done() else None
        if self._pumped is not None:
            # The pump's thread may be blocked in a read of a stalled upstream until its read
            # timeout, or waiting for room: cut that wait, so the thread ends and its
            # descriptor is closed now. Also once its writing thread failed (and no longer uses
            # the descriptor): the reading thread still held the download (its connection, its
            # fill permit) until the upstream sent its next read.
            self._interrupt_pump(self._pumped)
        # A thread may be about to write through fd: closed now, its number could name another
        # file (the next open anywhere in the process) by the time the write comes. The store
        # closes it once the thread is done (the pump's stops at its next read, as the fill
        # has no reservation left).
        _discard(self.fill, fd, self._host, reason, writing, failed=failed, said=said)

    def _finish(self) -> None:
        self._finished = True
        self._pending, self._pending_len = [], 0
        # A fill no longer paced has followers that did not keep up: they read the file, and
        # reads kept for them would stay in memory as long as the slowest of them streams (a
        # fill counts against PUMP_BUDGET only while it runs). A paced one's leader is at
        # most those reads behind, and the fill is over once that one nearly is.
        if not self.fill.recent.paced:
            self.fill.recent.clear()
        self._finalizer.detach()
        self._host.fill_ended(self.fill)
        self.fill.notify()

    async def __aenter__(self) -> BlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.abort(
                f"writer left without commit ({exc_type.__name__ if exc_type else 'no'} error)"
            )


class BlobFollower(ClosingStream):
    """A caller that streams a blob another caller is still downloading.

    Iterating yields the bytes as the writer flushes them (all but the last byte, which waits
    for the verified commit) and ends after the commit; it raises :class:`FillAborted` as soon
    as the writer aborts, so the route can cut its client. With a :attr:`rest`, a fill the
    cache itself gave up (a failed write, no room: :attr:`InFlight.kept`) is not the end: the
    follower yields the bytes kept in the temp file, then the rest of the blob from ``rest``,
    verified as a fill is (see :meth:`_resumed`). So does one whose read of the temp file fails
    (a failing disk's EIO), from the byte it got to, while the fill goes on (:meth:`_from_rest`);
    without a ``rest`` that failure is raised (its client is cut).
    """

    def __init__(
        self,
        fill: InFlight,
        fd: int,
        release: Callable[[int], None],
        chunk_size: int | Callable[[], int] = READ_CHUNK,
    ) -> None:
        super().__init__(fd, release, chunk_size)
        self.fill = fill
        #: The blob from an offset on, from elsewhere (the upstream), for a fill given up.
        self.rest: Resume | None = None
        #: Where this follower went on from :attr:`rest`, if it did (its own, not the fill's).
        self.handover = Handover()
        # It paces the pump from now until it is closed or collected (RecentReads.add).
        self._reader = next(_READERS)
        fill.recent.took(self._reader, 0)
        # Collected unclosed: it leaves from the loop, as the collector may run in a thread
        # that holds the lock leaving takes (the writing thread in RecentReads.add, the loop in
        # RecentReads.took), which would then wait on itself.
        self._left = weakref.finalize(
            self, soon_on, running_loop(), partial(fill.recent.left, self._reader)
        )

    def close(self) -> None:
        if self._left.detach() is not None:
            self.fill.recent.left(self._reader)
        super().close()

    @property
    def digest(self) -> Digest:
        return self.fill.digest

    async def size(self) -> int | None:
        """Wait until the writer announces the size (None: unknown) or finishes. An announced
        size of 0 waits for the verification too: with no last byte to hold back, its headers
        alone make a complete answer, and a blob that fails it must not get one."""
        fill = self.fill
        while not fill.size_known or (fill.size == 0 and not fill.verified):
            fill.check_not_aborted()
            if fill.state is FillState.COMMITTED:
                break
            await fill.changed()
        return fill.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        fill, pos = self.fill, 0
        try:
            while True:
                if not fill.verified:  # verified, every byte is in this follower's file
                    given_up = fill.state is FillState.ABORTED and fill.kept is not None
                    if given_up and self.rest is not None:
                        # Closed with this stream (a client that left): the rest's answer too.
                        async with aclosing(self._resumed(pos, fill.kept or 0)) as resumed:
                            async for data in resumed:
                                yield data
                        return
                    fill.check_not_aborted()
                # The last byte waits for the verification: a blob that fails it never
                # reaches a client complete, so it cannot pass for a good one.
                ready = fill.written if fill.verified else fill.written - 1
                # None: the pump's latest read holds that byte, and goes out whole later.
                chunk, failed = await self._next_or_failed(pos, ready)
                if failed is not None:
                    # The disk failed under this follower's read (EIO): the rest of the blob
                    # from the upstream, as for a fill the cache gave up; the fill goes on.
                    async with aclosing(self._from_rest(pos, failed)) as resumed:
                        async for data in resumed:
                            yield data
                    return
                if chunk is not None:
                    pos += len(chunk)
                    fill.recent.took(self._reader, pos)
                    yield chunk
                elif fill.verified:
                    return
                else:
                    await fill.changed()
        finally:
            self.close()

    async def _next_or_failed(self, pos: int, ready: int) -> tuple[bytes | None, OSError | None]:
        """:meth:`_next` (None before ``ready``: nothing to read yet), or the read's failure (a
        failing disk's EIO) when this follower can get the rest elsewhere (its :attr:`rest`);
        without one the failure is raised (its client is cut, ``docxy.http.responses``)."""
        if pos >= ready:
            return None, None
        try:
            return await self._next(pos, ready), None
        except ClosedFile:
            raise  # closed under the read: this follower's end (its client left)
        except OSError as exc:
            if self.rest is None:
                raise
            return None, exc

    async def _next(self, pos: int, ready: int) -> bytes | None:
        """The next bytes from ``pos`` (up to ``ready``): a recent read of the pump as it is, if
        this follower is at its start and may send all of it; a read of the temp file up to
        the first recent read otherwise (so the next one starts there). None: the recent read
        from ``pos`` holds the byte that waits for the commit (wait, then ask again)."""
        fill = self.fill
        held = fill.recent.at(pos)
        if held is not None:
            offset, chunk = held
            end = offset + len(chunk)
            if end > ready:
                return None
            if offset == pos:
                return chunk
            return chunk[pos - offset :]
        limit = ready
        start = fill.recent.start()
        if start is not None and start > pos:
            limit = min(limit, start)
        return await self._read_temp(pos, limit - pos)

    async def _read_temp(self, pos: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the temp file from ``pos``; none is a file that shrank."""
        data = await self._read(pos, limit)
        if not data:
            raise FillAborted(f"temp file of {self.fill.digest} shrank at byte {pos}")
        return data

    async def _resumed(self, pos: int, kept: int) -> AsyncGenerator[bytes]:
        """The blob from ``pos`` on, for a fill the cache gave up after ``kept`` good bytes:
        those from the temp file (this follower's descriptor still reads it), the rest from
        :attr:`rest`. Verified as a fill is: the length, and the digest over every byte (the
        kept ones by the fill's own hash, else hashed again from the file: see
        :meth:`_kept_hasher`), before the last byte goes out. A rest that breaks
        off (its ``broke_off``) goes on from there, as a fill's download does (up to
        :data:`RESUMES` times, each after new bytes: :class:`Resuming`); a mismatch, a rest that
        cannot be had or keeps breaking off raises :class:`FillAborted` (the client is cut,
        never given a short or a wrong blob), with one WARNING. A read of the temp file that
        fails (EIO) ends the reads there: the rest is asked from that byte (:meth:`_from_rest`).
        The temp file is closed before the rest is asked for. (A fill given up once verified,
        its commit's sync failed, is not one of these: it has every byte, see
        :attr:`InFlight.verified`.)
        """
        fill = self.fill
        if fill.size is not None:
            kept = min(kept, fill.size - 1)  # the last byte waits for the verified whole
        failed: OSError | None = None
        while pos < kept:
            try:
                data = await self._read_temp(pos, kept - pos)
            except ClosedFile:
                raise  # closed under the read: this follower's end (its client left)
            except OSError as exc:  # a failing disk (EIO): the rest from the upstream now
                failed = exc
                break
            pos += len(data)
            yield data
        async with aclosing(self._from_rest(pos, failed)) as resumed:
            async for data in resumed:
                yield data

    async def _from_rest(self, pos: int, failed: OSError | None = None) -> AsyncGenerator[bytes]:
        """The blob from ``pos`` on, from :attr:`rest`, for a client that has its first
        ``pos`` bytes (from the temp file), verified over the whole (see :meth:`_resumed`).
        ``failed``: why the temp file is not read on (a failing disk's EIO; None: the fill was
        given up), said in its one WARNING line. The bytes the client had are hashed again
        from the temp file (:meth:`_kept_hasher`); should that read fail too (a dead disk),
        the rest is asked from byte 0 and its first ``pos`` bytes are hashed, not sent again:
        the whole is verified all the same, at the cost of those bytes from the upstream."""
        rest, fill = self.rest, self.fill
        assert rest is not None
        unread: OSError | None = None
        try:
            hasher = await self._kept_hasher(pos)
        except ClosedFile:
            raise  # closed under the read: this follower's end (its client left)
        except OSError as exc:
            unread, hasher = exc, fill.digest.hasher()
        start = 0 if unread is not None else pos
        if failed is not None or unread is not None:
            self._say_unreadable(pos, failed, unread)
        self.close()
        self.handover.at = pos

        async def complete() -> bool:  # broke off after the blob's last byte: no rest to ask
            whole = fill.size is None or resuming.at == fill.size
            return whole and hasher.hexdigest() == fill.digest.hex

        resuming = Resuming(
            lambda offset: rest(offset, fill.size),
            start,
            self._went_on,
            complete=complete,
            end=fill.size,  # a rest of no length that ends cleanly short of it: a break
        )
        held = b""  # the last byte seen so far: it goes out once the whole is verified
        try:
            async with aclosing(resuming.chunks()) as chunks:
                async for whole in chunks:
                    # The blob's end: its length, else (unknown) where the rest's answer said
                    # it ends (its Content-Range), for bytes past it (junk after the blob) went
                    # out to the client, all but their last, before the digest check cut it.
                    end = fill.size if fill.size is not None else resuming.end
                    if end is not None and resuming.at > end:
                        # More bytes than the blob has (a 206 whose body runs past its
                        # Content-Range): not its rest. Cut before any of this piece goes out:
                        # the held last byte, then bytes past the blob's length, went out
                        # before the verify found the length wrong.
                        said = f"the rest ran past the blob's {end} bytes"
                        log.warning("blob %s: %s; the client is cut", fill.digest, said)
                        raise FillAborted(f"{fill.digest}: {said}")
                    hasher.update(whole)
                    had = pos - (resuming.at - len(whole))  # of it, bytes the client had
                    if had >= len(whole):
                        continue
                    chunk = whole[had:] if had > 0 else whole
                    if held:
                        yield held
                    if len(chunk) > 1:
                        yield chunk[:-1]
                    held = chunk[-1:]
        except FetchFailed as exc:
            at = resuming.at
            log.warning("blob %s: cannot get the rest after byte %d: %s", fill.digest, at, exc)
            raise FillAborted(f"the rest of {fill.digest} could not be had: {exc}") from exc
        except BrokeOff as exc:
            said = f"the rest broke off at byte {exc.at}: {_name(exc.cause)}: {exc.cause}"
            log.warning("blob %s: %s; the client is cut", fill.digest, said)
            raise FillAborted(f"{fill.digest}: {said}") from exc
        problem = _verify_rest(fill, resuming.at, hasher)
        if problem:
            log.warning("blob %s: %s; the client is cut", fill.digest, problem)
            raise FillAborted(f"{fill.digest}: {problem}")
        if held:
            yield held

    def _went_on(self, exc: Exception, at: int, resumes: int) -> None:
        """The rest broke off at byte ``at``: it goes on from there (its INFO line)."""
        log.info(
            "blob %s: the rest broke off at byte %d: %s: %s; going on from there (%d of %d)",
            self.fill.digest,
            at,
            _name(exc),
            exc,
            resumes,
            RESUMES,
        )

    def _say_unreadable(self, pos: int, failed: OSError | None, unread: OSError | None) -> None:
        """The one WARNING line of a follower that goes on from the upstream because the temp
        file could not be read: at byte ``pos`` (``failed``), or again to hash the bytes the
        client had (``unread``: the rest is then asked from byte 0)."""
        said = [] if failed is None else [f"cannot read its temp file at byte {pos}: {failed}"]
        if unread is not None:
            said.append(f"cannot read its first {pos} bytes back to hash them: {unread}")
        whence = "from byte 0, the first bytes hashed, not sent again" if unread else ""
        log.warning(
            "blob %s: %s; this client gets the rest from the upstream%s",
            self.fill.digest,
            "; ".join(said),
            f" ({whence})" if whence else "",
        )

    async def _kept_hasher(self, nbytes: int) -> Hasher:
        """A hasher of the blob's first ``nbytes``, the kept bytes of a fill given up: a copy of
        the fill's own hash when it is of just those bytes (:attr:`InFlight.kept_hash`), else
        one that reads them again from the temp file, in a worker thread (raises the read's
        :class:`OSError` if that fails: a failing disk).

        The fill hashed the bytes it wrote, as a follower of any fill trusts that the bytes it
        reads are those (the commit verifies the writer's hash, not a read-back of the file)."""
        fill = self.fill
        if fill.kept_hash is not None and nbytes == fill.kept:
            return fill.kept_hash.copy()
        return await asyncio.to_thread(self._hashed, nbytes)

    def _hashed(self, nbytes: int) -> Hasher:
        """A hasher of the temp file's first ``nbytes`` (blocking: a worker thread's)."""
        hasher = self.fill.digest.hasher()
        pos = 0
        while pos < nbytes:
            data = self._file.pread(min(READ_CHUNK, nbytes - pos), pos)
            if not data:
                raise OSError(f"the temp file ended at byte {pos} of {nbytes}")
            hasher.update(data)
            pos += len(data)
        return hasher


#: The ``origin`` of a download from the upstream (:attr:`Download.origin`'s default).
UPSTREAM = "upstream"

#: Told why a fill's bytes are not its blob; answers what was made of it, for the fill's
#: WARNING line (None: nothing to add).
Mismatch = Callable[[VerifyError], str | None]


@dataclass(frozen=True, slots=True)
class Download:
    """What the upstream half of a fill hands the store: a length (None: unknown) and bytes,
    as ``chunks`` to iterate on the event loop or as a ``body`` a worker thread reads.

    ``close`` is always awaited once the fill is done with the download. ``mismatch`` is told
    when the bytes, read to their end, are not the blob (digest or length), before the fill's
    one WARNING line says so: what it answers (what the source's owner made of it) ends that
    line. A fill that fails for any other reason (a full disk, no room) tells it nothing.
    """

    size: int | None
    chunks: AsyncIterator[bytes] | None
    close: Callable[[], Awaitable[None]]
    body: BodySource | None = None
    mismatch: Mismatch | None = None
    #: Where the bytes come from, told to every client of the fill (``InFlight.origin``).
    origin: str = UPSTREAM
    #: Where they came from the upstream instead, should the download go on from it.
    handover: Handover = field(default_factory=Handover)
    #: The rest of the blob from an offset on, should ``body`` or ``chunks`` raise one of
    #: ``broke_off`` (a cut or stalled upstream) midway: the fill goes on from there, up to
    #: :data:`RESUMES` times, each after some progress (see :func:`run_fill`); a follower's own
    #: rest goes on the same way (see :meth:`BlobFollower._resumed`), both with
    #: :class:`~docxy.cache.resuming.Resuming`.
    resume: Resume | None = None
    broke_off: tuple[type[Exception], ...] = ()
    #: Told once every byte is in and verified, before the commit's sync: the upstream's part
    #: of the fill is over (its permit is given back then: the sync of a big blob takes
    #: seconds, and the client has its last byte).
    verified: Callable[[], None] | None = None
    #: Told when it broke off and may not go on while its bytes were still wanted (the
    #: :class:`~docxy.cache.resuming.BrokeOff` about to end the fill, or a follower's rest):
    #: its owner counts that against the upstream it came from.
    gave_up: Callable[[BrokeOff], None] | None = None


#: The bytes of a blob of a given size (None: unknown) from an offset on (``Download.chunks``,
#: ``size`` what is left, when known); raises :class:`FetchFailed` when they cannot be had, or
#: when the answer says it is not that rest (from elsewhere, of a blob of another length).
Resume = Callable[[int, int | None], Awaitable[Download]]

#: Starts a download for a fill; raises :class:`FetchFailed` (with the reason) if it cannot:
#: :class:`FetchRefused` when the upstream said no (an INFO line), else a WARNING.
Fetch = Callable[[], Awaitable[Download]]


async def run_fill(writer: BlobWriter, fetch: Fetch) -> None:
    """Fetch, tee into the cache, verify and commit; any failure aborts (followers are cut).

    A download that breaks off midway (``Download.broke_off``) goes on from where it broke
    with ``Download.resume``, up to :data:`RESUMES` times, each only after the last try gave
    new bytes (:class:`~docxy.cache.resuming.Resuming`): its clients stream on, and the commit
    verifies the whole as ever. No blob is read back meanwhile (:data:`FILLS`).
    """
    with FILLS.one():
        await _run_fill(writer, fetch)


async def _run_fill(writer: BlobWriter, fetch: Fetch) -> None:
    async with writer:
        try:
            download = await fetch()
        except FetchRefused as exc:  # the upstream's answer: the clients get it (an INFO line)
            writer.abort(str(exc), exc.upstream, exc.source)
            return
        except FetchFailed as exc:  # upstream trouble: the client gets an error too
            writer.fail(str(exc), exc.upstream, exc.source)
            return
        writer.fill.origin, writer.fill.handover = download.origin, download.handover
        try:
            if download.size is not None and not await writer.reserve(download.size):
                return  # no room: the followers pass it through (the store said why)
            writer.announce(download.size)
            await writer.preallocate()
            if writer.fill.kept is None:  # else the disk had no room for it
                await _feed_resuming(writer, download)
            if writer.fill.kept is not None:
                # The cache gave it up (no room for a blob of unknown length that outgrew it, a
                # failed write), and said why: its followers get the rest from the upstream.
                return
            committed = await writer.commit(download.size, download.mismatch, download.verified)
            if committed is not None:
                log.info("blob %s cached (%d bytes)", writer.digest, writer.received)
        except Exception as exc:  # noqa: BLE001 - the fill task's boundary: end the fill, say why
            if writer.finished:
                # Ended already, and logged then: the commit's verify error (its own WARNING),
                # or an abort meanwhile (its clients went away...) of which this is the echo
                # (the upstream read it interrupted, the commit it closed).
                log.debug("blob %s: fill ended: %s: %s", writer.digest, _name(exc), exc)
            else:
                writer.fail(str(exc) if isinstance(exc, BrokeOff) else f"{_name(exc)}: {exc}")
        finally:
            await download.close()


async def _feed_resuming(writer: BlobWriter, download: Download) -> None:
    """Feed ``download`` to ``writer``, going on with its ``resume`` when it breaks off: a
    body is pumped, and should it break off its rests are fed on the loop; chunks and their
    rests are fed on the loop. Each rest is closed once read; ``download`` is the caller's."""
    resume = download.resume
    if resume is None:
        await _feed(writer, download)
        return
    fill = writer.fill

    def went_on(exc: Exception, at: int, resumes: int) -> None:
        log.info(
            "blob %s: the upstream broke off after %d bytes (%s); going on from there (%d of %d)",
            writer.digest,
            at,
            exc,
            resumes,
            RESUMES,
        )

    resuming = Resuming(
        lambda offset: resume(offset, fill.size),
        writer.received,
        went_on,
        download.broke_off,
        lambda: fill.state is FillState.WRITING,
        complete=writer.whole,
        # Where the blob ends, as its download said (a pumped body is not handed to Resuming,
        # which would read it from there): a rest of no length (a 200, the Range ignored, to
        # the close) that ends cleanly short of it is a break, not the blob's end.
        end=download.size,
    )
    first: Download | None = download
    if download.body is not None:  # read by the pump's thread; its rests on the loop
        first, start = None, resuming.at
        try:
            await writer.pump(download.body)
        except download.broke_off as exc:
            resuming.at = writer.received
            if await writer.whole():
                return  # broke off after its last byte: the commit verifies the whole
            resuming.broke(exc, start, download)  # raises BrokeOff when it may not go on
        else:
            resuming.at = writer.received
            if await _ended_unverified(writer, resuming):
                await _rest_of_unknown(writer, resuming, went_on)
            return
    await _feed_rests(writer, resuming, first)
    if await _ended_unverified(writer, resuming):
        await _rest_of_unknown(writer, resuming, went_on)


async def _feed_rests(writer: BlobWriter, resuming: Resuming, first: Download | None) -> None:
    """Feed ``first`` (None: a rest fetched from :attr:`Resuming.at`) and the rests after each
    of its breaks to ``writer``."""
    fill = writer.fill
    async with aclosing(resuming.chunks(first)) as chunks:
        async for chunk in chunks:
            # A blob of unknown length ends where its rest's answer said (its Content-Range):
            # bytes past that (junk after the blob) reached the fill's clients, all but their
            # last, before the digest check failed the fill. (A known length: reserve's.)
            if fill.size is None and resuming.end is not None and resuming.at > resuming.end:
                raise FillAborted(f"the rest ran past the blob's {resuming.end} bytes")
            await writer.write(chunk)
            if fill.state is FillState.ABORTED:
                break


class EndedUnverified(Exception):
    """A download of a blob whose size no answer said (chunked) ended cleanly, and its bytes
    are not the blob (its digest): maybe cut short on the way, maybe not the blob at all."""

    def __init__(self, at: int) -> None:
        super().__init__(f"the answer of no stated length ended after {at} bytes, not the blob")


async def _ended_unverified(writer: BlobWriter, resuming: Resuming) -> bool:
    """Whether a download that ended cleanly left a fill of unknown size short of its blob:
    some bytes came, no answer said where the blob ends (a rest's Content-Range would have:
    one that ends short of it is a break already), the bytes are not the blob, and a resume is
    left. (A known size's short end is a break: :class:`~docxy.cache.resuming.EndedShort`.)

    Only bytes the upstream sent: a shared store's object whose own answer ended cleanly
    short (no hand-over to the upstream) is not the blob, for the commit's digest check to
    fail and the tier to mark bad; its rest from the upstream would make every later miss
    read the same short object again, counted a hit."""
    fill = writer.fill
    return (
        fill.size is None
        and (fill.origin == UPSTREAM or fill.handover.at is not None)
        and resuming.end is None
        and writer.received > 0
        and resuming.resumes < resuming.limit
        and fill.state is FillState.WRITING
        and not await writer.whole()
    )


async def _rest_of_unknown(
    writer: BlobWriter, resuming: Resuming, went_on: Callable[[Exception, int, int], None]
) -> None:
    """A fill of unknown size ended cleanly short of its blob (:func:`_ended_unverified`): its
    rest asked once from where it ended (``Range: bytes=N-``), as for a download that broke
    off. A ``206`` with more bytes goes on (its own breaks resumed as ever); a rest that
    cannot be had (a ``416``: nothing past those bytes) leaves the bytes as they are, for the
    commit's digest check to fail them, as it did before this was asked."""
    resuming.resumes += 1
    went_on(EndedUnverified(resuming.at), resuming.at, resuming.resumes)
    try:
        await _feed_rests(writer, resuming, None)
    except FetchFailed as exc:
        log.info("blob %s: no rest after %d bytes: %s", writer.digest, resuming.at, exc)


async def _feed(writer: BlobWriter, download: Download) -> None:
    """Every byte of ``download`` to ``writer`` (a pump's thread, or chunks on the loop)."""
    if download.body is not None:
        await writer.pump(download.body)
    elif download.chunks is not None:
        async for chunk in download.chunks:
            await writer.write(chunk)
            if writer.fill.state is FillState.ABORTED:
                break


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _verify_rest(fill: InFlight, total: int, hasher: Hasher) -> str:
    """What is wrong with a resumed blob of ``total`` bytes hashed by ``hasher`` ("": nothing)."""
    if fill.size is not None and total != fill.size:
        return f"the resumed blob is {total} bytes, not {fill.size}"
    actual = hasher.hexdigest()
    if actual != fill.digest.hex:
        return f"the resumed blob hashes to {fill.digest.algorithm}:{actual}"
    return ""


def _hash_all(
    hasher: Hasher,
    start: int | None,
    marks: collections.deque[tuple[int, Hasher]],
    hashing: queue.SimpleQueue[bytes | None],
    free: queue.SimpleQueue[None],
    failed: list[BaseException],
    recent: RecentReads,
) -> None:
    """The hashing thread of a fill's pump: hash each read in order (``hasher`` has taken in
    ``start`` bytes before the first; None: unknown), then let one more be read. Before each,
    a copy of the hash is marked in ``marks``: this thread hashes reads the writing thread
    may not have written yet, and should one of those writes fail, the hash of just the bytes
    written is the mark at their end (the reading thread stops then, with at most
    ``PUMP_DEPTH`` reads past it: the mark is among the last ``PUMP_DEPTH + 1``; one more is
    kept).

    Should hashing fail, the reads are still let go (the reading thread never waits for ever),
    the writing thread waits for no follower any more (the fill is lost: ``recent`` is no
    longer paced), and the error waits in ``failed`` for the reading thread to raise.
    """
    at = start
    while (chunk := hashing.get()) is not None:
        if not failed:
            try:
                if at is not None:
                    marks.append((at, hasher.copy()))
                    at += len(chunk)
                hasher.update(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised by the reading thread
                failed.append(exc)
                recent.unpaced()
        free.put(None)


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(
    fill: InFlight,
    fd: int | None,
    host: FillHost,
    reason: str,
    writing: asyncio.Future[Any] | None = None,
    *,
    failed: bool = False,
    said: bool = False,
) -> None:
    """End a fill without its blob. Its one log line: a WARNING for a ``failed`` download
    (which says where its bytes came from), none when the caller ``said`` why (the store's
    line for a failed write), else an INFO (its clients went away...)."""
    if fill.state is FillState.WRITING:
        fill.state, fill.reason = FillState.ABORTED, reason
        if failed:
            _warn_failed(fill, reason)
        elif not said:
            log.info("cache fill of %s aborted: %s", fill.digest, reason)
    host.fill_discarded(fill, fd, writing)
    host.fill_ended(fill)
    fill.notify()


def _warn_failed(fill: InFlight, reason: str) -> None:
    """A failed download's one WARNING line: why, and where its bytes came from."""
    origin = fill.handover.describe(fill.origin or UPSTREAM)
    log.warning("blob %s: fill failed (from %s): %s", fill.digest, origin, reason)


def _abandon(
    fill: InFlight, fd: int | None, host: FillHost, loop: asyncio.AbstractEventLoop
) -> None:
    """Finalizer of a writer dropped without commit or abort: the discard runs on ``loop``, in
    one piece, whatever thread the garbage collector runs this in (else a follower could see
    the abort before the temp file is removed, and be woken from a foreign thread)."""
    on_loop(loop, partial(_discard, fill, fd, host, "writer was dropped"))
