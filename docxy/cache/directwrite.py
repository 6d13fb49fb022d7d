"""A fill's whole-block writes past the page cache (Linux's ``O_DIRECT``), the rest as before.

A cold blob's bytes go to its client from memory (the fill's latest reads) and to the disk; a
later hit reads the committed file. Written through the page cache, every byte of a cold blob
first costs a new page of memory: on the benchmark's VM (a guest with free page reporting, whose
freed memory goes back to the host within seconds) 4.4-4.9 CPU-s per GiB of ``dd`` into a new
file, 0.23-0.25 with ``oflag=direct`` (and 1.1-1.3 s of wall time: the disk's speed). A
client gets each read once it is in the file, so that cost was on its path. Written directly, a miss
runs at the disk's speed instead, at less CPU per GiB; where the cache disk is slower than the
upstream, ``cache.direct_writes = false`` writes through the page cache as before.

The page cache then holds none of it: a hit would read the disk (and, on that VM, pay for the
pages there). So once a blob written this way is committed, :func:`read_back` reads it once,
off every client's path (one thread for every fill: :class:`ReadBacks`), as a buffered write
would have left it in memory for the next pull; not one larger than an eighth of the
machine's memory (or its container's, if less), which the page cache would not keep anyway.
Only while no fill runs (:data:`FILLS`): a read back during the next miss (the next layer of
the same pull) made that one a third slower on the benchmark's VM, at any thread priority
(2.2-2.7 CPU-s a GiB, most of it the new pages, and the disk shared).

Only whole blocks at aligned offsets from an aligned buffer can be written so: each read
(a multiple of :data:`ALIGN` bytes; every one but a blob's last) is copied into one
page-aligned buffer and written from there. Anything else (the last read, a file system
without ``O_DIRECT``, a write it refuses) turns the flag off and is written
through the page cache, as before. Followers' descriptors read the file as always: the kernel
keeps direct writes and cached reads of one file coherent.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: How the fill writes (``docxy.cache.fill.write_all``, which tests replace to fail a disk).
WriteAll = Callable[[int, list[memoryview]], None]

#: Every read written directly is a multiple of this, at an offset that is one: a page, which
#: covers the logical block size of the disks and file systems that take direct writes.
ALIGN = 4096
#: Not every platform has the flag (none: nothing is written directly).
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: What a refused direct write raises: written through the page cache instead.
REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


#: Blobs up to this share of the machine's memory are read back once committed.
READ_BACK_SHARE = 8
#: The size of those reads (one buffer, reused).
READ_BACK_CHUNK = 256 * 1024
#: At most this many blobs wait to be read back (a disk slower than the fills, a burst of small
#: blobs): the oldest waiting is dropped, and its first hit reads it from the disk as any would.
READ_BACK_PENDING = 256


class DirectWriter:
    """Appends a fill's reads to its temp file, open as ``fd`` with ``offset`` bytes in it:
    reads of whole blocks directly (from a buffer of ``size``), others through the page cache;
    all of them through it when not ``direct`` (``cache.direct_writes`` off).
    Not thread-safe: the fill's writing thread is its one user. :meth:`close` (always, in a
    ``finally``) leaves the descriptor as it was found and frees the buffer."""

    def __init__(self, fd: int, offset: int, size: int, *, direct: bool = True) -> None:
        self._fd = fd
        self._at = offset  # where the next write starts
        self._buffer: mmap.mmap | None = None
        self._flags: int | None = None  # the descriptor's flags before, while direct
        #: Bytes written past the page cache so far.
        self.written_directly = 0
        if not direct or not O_DIRECT or offset % ALIGN or size <= 0 or size % ALIGN:
            return
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
        except OSError:  # the file system has no direct writes: cached, as before
            return
        try:
            self._buffer = mmap.mmap(-1, size)
        except OSError:  # no memory for it: cached, as before
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            return
        self._flags = flags

    @property
    def direct(self) -> bool:
        """Whether the next whole-block read is written directly."""
        return self._flags is not None

    def write(self, chunk: bytes, write_all: WriteAll) -> None:
        """Append ``chunk`` with ``write_all``; raises :class:`OSError` as it does (ENOSPC,
        EIO), but not for a direct write the file system refuses: that is written again, from
        where it stopped, through the page cache."""
        buffer = self._buffer
        nbytes = len(chunk)
        view = memoryview(chunk)
        if self._flags is not None and buffer is not None:
            if nbytes % ALIGN == 0 and nbytes <= len(buffer):
                buffer[:nbytes] = chunk
                try:
                    write_all(self._fd, [memoryview(buffer)[:nbytes]])
                except OSError as exc:
                    if exc.errno not in REFUSED:
                        raise
                    done = os.lseek(self._fd, 0, os.SEEK_CUR) - self._at
                    view, self._at = view[done:], self._at + done
                else:
                    self.written_directly += nbytes
                    self._at += nbytes
                    return
            self.cached()
        write_all(self._fd, [view])
        self._at += len(view)

    def cached(self) -> None:
        """Write through the page cache from now on (the descriptor's flags as they were)."""
        flags, self._flags = self._flags, None  # never again, even if this fails
        if flags is not None:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)

    def close(self) -> None:
        """Done writing (call it before the descriptor may be closed: it sets its flags)."""
        try:
            with contextlib.suppress(OSError):  # left direct: the fill writes no more with it
                self.cached()
        finally:
            buffer, self._buffer = self._buffer, None
            # A view of it may live on in a failed write's traceback: freed with that, then.
            with contextlib.suppress(BufferError):
                if buffer is not None:
                    buffer.close()


#: Where cgroups are mounted (v2 here, v1 under ``memory/``), and where the kernel says which
#: cgroup this process is in.
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def memory_size(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """The memory this process may fill, in bytes: the machine's, or the lowest memory limit
    of its cgroup and the cgroups above it where that is lower (a container's limit, a systemd
    unit's ``MemoryMax=``: its page cache counts against it), if the platform says. cgroup v2's
    ``memory.max`` and v1's ``memory.limit_in_bytes`` (hosts such as Ubuntu 20.04) are read."""
    try:
        physical: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        physical = None
    limits = [limit for limit in (physical, cgroup_limit(cgroup_root, self_cgroup)) if limit]
    return min(limits) if limits else None


def cgroup_limit(root: Path, self_cgroup: Path) -> int | None:
    """The lowest memory limit from this process's cgroup up to the mount (None: none set,
    "max" everywhere, or no cgroup). v2: ``memory.max`` under ``root``, at the ``0::`` line's
    path. v1: ``memory.limit_in_bytes`` under ``root/memory``, at the path of the line that
    names the memory controller (a container that sees its own cgroup as the mount's root
    finds no such folder, and reads the root's)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if not controllers:
            limits += _lowest_limit(root, path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _lowest_limit(root / "memory", path, "memory.limit_in_bytes")
    return min(limits) if limits else None


def _lowest_limit(top: Path, own: str, name: str) -> list[int]:
    """The numbers in the files ``name`` from ``top/own`` up to ``top``, none above it."""
    top = top.resolve()
    where = (top / own.lstrip("/")).resolve()
    if where != top and top not in where.parents:  # a cgroup outside the namespace ("/.."):
        where = top  # only the mount's own limit is ours to read
    limits = []
    for folder in (where, *where.parents):
        try:
            limits.append(int((folder / name).read_text().strip()))
        except (OSError, ValueError):  # "max": none here; no file: the root, or no cgroup
            pass
        if folder == top:
            break
    return limits


class Running:
    """How many fills run in this process; :meth:`wait` blocks while any does. Thread-safe."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    @property
    def busy(self) -> bool:
        return self._count > 0

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """One fill running, for the ``with`` block."""
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def wait(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._count == 0)


#: The fills running now (each :func:`docxy.cache.fill.run_fill`, from fetch to commit).
FILLS = Running()


def read_back(
    path: Path, size: int, memory: int | None = None, fills: Running | None = None
) -> int:
    """Read the committed blob at ``path`` (``size`` bytes) once, to its end, into the page
    cache; returns the bytes read: none when it is larger than ``1/READ_BACK_SHARE`` of
    ``memory`` (:func:`memory_size`, by default), those read before it was gone (evicted)
    otherwise. With ``fills``, it reads only while none runs: when one starts, it lets go of
    the file (an eviction meanwhile frees it) and goes on from there once they are all done."""
    memory = memory_size() if memory is None else memory
    if memory is None or size > memory // READ_BACK_SHARE:
        return 0
    total = 0
    buffer = bytearray(min(READ_BACK_CHUNK, max(size, 1)))
    while True:
        if fills is not None:
            fills.wait()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return total
        try:
            while count := os.preadv(fd, [buffer], total):
                total += count
                if fills is not None and fills.busy:
                    break
            else:
                return total
        except OSError:
            return total  # a disk that fails the read fails the hit's read too, and says so
        finally:
            os.close(fd)


class ReadBacks:
    """Blobs to read back, in turn, by one daemon thread started at the first (many fills
    committed at once hold one buffer, and read the disk in turn). Up to ``pending`` wait;
    past that the oldest waiting is dropped (the newest is the likelier to be pulled next, and
    the page cache may well have let go of what would have been read back long before)."""

    def __init__(self, pending: int = READ_BACK_PENDING) -> None:
        self._ready = threading.Condition()
        self._pending: collections.deque[tuple[Path, int]] = collections.deque(maxlen=pending)
        self._worker: threading.Thread | None = None
        self._failed = 0

    def add(self, path: Path, size: int) -> None:
        with self._ready:
            self._pending.append((path, size))
            self._ready.notify()
            if self._worker is None:
                worker = threading.Thread(target=self._run, name="read back", daemon=True)
                try:
                    worker.start()
                except RuntimeError:  # no thread to be had (a pids limit): tried again next
                    log.warning("read back: cannot start its thread", exc_info=True)
                    return
                self._worker = worker

    def _next(self) -> tuple[Path, int]:
        with self._ready:
            self._ready.wait_for(lambda: self._pending)
            return self._pending.popleft()

    def _run(self) -> None:
        while True:
            FILLS.wait()  # before taking one: those that wait meanwhile may be dropped
            path, size = self._next()
            try:
                read_back(path, size, fills=FILLS)
            except Exception:  # a head start only: never the end of the thread
                self._failed += 1  # the cause in full once; a count after (it may repeat)
                log.warning(
                    "read back of %s failed (%d so far)",
                    path.name,
                    self._failed,
                    exc_info=self._failed == 1,
                )


_READ_BACKS = ReadBacks()


def read_back_later(path: Path, size: int) -> None:
    """:func:`read_back` of a committed blob, soon, in the one read-back thread."""
    _READ_BACKS.add(path, size)
