"""Crash-safe small-file writes (a reader sees the old file or the new one, never half of one),
removals and closes that never block the event loop on freeing a large file's blocks, and
:class:`BlobFile`, a descriptor read in worker threads and closed only once no read runs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from docxy.threads import running_loop


def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, sync: bool = True) -> None:
    """Write ``data`` to a temp file in ``tmp_dir`` (same file system), fsync, rename it."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def make_private(directory: Path) -> None:
    """Create ``directory`` for its owner alone (0700; its missing parents as ``mkdir -p``
    makes them): the cache holds whatever the mirror's own upstream login may read, private
    repositories included, and other local users are not to list or read it. One that
    exists is left as it is: its owner chose its mode (the container's volume is the docxy
    user's already)."""
    # Path.mkdir applies ``mode`` to the last folder alone, and to none that exists.
    with contextlib.suppress(OSError):  # not to be made here: the cache's start says why
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def clear_dir(directory: Path) -> int:
    """Remove the files directly in ``directory`` (creating it if needed); returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    with os.scandir(directory) as listing:  # listed whole: a refused delete leaves none open
        entries = list(listing)
    for entry in entries:
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            unlink_quietly(Path(entry.path))
            removed += 1
    return removed


def globbed(base: Path, pattern: str) -> Iterator[Path]:
    """``base.glob(pattern)`` for a pattern of names and wildcards (``"*/*/*.json"``), walked
    beside a live mirror: a folder that goes away between being listed and being read (a put
    forgetting a manifest's records, a delete, gc) is left out, as one it may not list is.
    Python 3.11's glob raised FileNotFoundError for it (3.13's leaves it out too)."""
    name, _, rest = pattern.partition("/")
    try:
        with os.scandir(base) as listing:
            entries = list(listing)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        if not fnmatch.fnmatchcase(entry.name, name):
            continue
        if not rest:
            yield Path(entry.path)
        elif _is_dir(entry):
            yield from globbed(Path(entry.path), rest)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def close_after_reading(fd: int, closed: Callable[[], None] | None = None) -> None:
    """Close a descriptor a reader held: at once while its file still has a name (that close
    frees nothing, and a worker thread per served blob costs more than the close), else as
    :func:`close_off_loop` (removed meanwhile: evicted, an aborted fill, `docxy cache rm` or
    `gc` in another process; the last close frees the blocks). Then ``closed``, if given."""
    if _named(fd):
        _close_quietly(fd)
        if closed is not None:
            closed()
    else:
        close_off_loop(fd, closed)


def _named(fd: int) -> bool:
    """Whether the file open as ``fd`` still has a name (one ``fstat``: the inode is in memory)."""
    try:
        return os.fstat(fd).st_nlink > 0
    except OSError:  # EIO: let the close take its time in a worker thread
        return False


def close_off_loop(fd: int, closed: Callable[[], None] | None = None) -> None:
    """Close ``fd``, in a worker thread when called on the event loop: the last close of a file
    already unlinked frees its blocks, which takes long for a file of many GiB (ext4). Then
    ``closed``, if given: on the loop, once the descriptor is closed (the blocks freed)."""
    try:
        closing = asyncio.get_running_loop().run_in_executor(None, _close_quietly, fd)
    except RuntimeError:  # no loop here (a finalizer in a thread), or it is shutting down
        _close_quietly(fd)
        if closed is not None:
            closed()
        return
    if closed is not None:
        closing.add_done_callback(lambda _: closed())


def open_quietly(path: Path) -> int | None:
    """A read-only descriptor of ``path``, or None if it cannot be opened (gone already...)."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:  # EIO from a failing disk: the descriptor is released all the same
        pass


class ClosedFile(OSError):
    """A read of a :class:`BlobFile` that was closed already."""


class BlobFile:
    """A blob file read with ``os.pread`` in worker threads, released only once no read runs.

    A reader cancelled (a client that left, an upload cancelled at shutdown) stops waiting, but
    a read already running goes on in its thread: closing the descriptor then would let the
    read land in whatever file the process opens next under the same number (the kernel reuses
    the lowest free one). So :meth:`close` calls ``release(fd)`` at once when no read runs (the
    common case: no thread hop); else the last read hands it to the event loop :meth:`close`
    ran on as it returns (or closes the descriptor itself if that loop is gone). A read that
    starts after the close raises :class:`ClosedFile` without touching the descriptor.
    """

    def __init__(self, fd: int, release: Callable[[int], None] = close_after_reading) -> None:
        self._fd = fd
        self._release = release
        self._lock = threading.Lock()
        self._reads = 0  # reads running now, in any thread
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None  # where a late release runs

    @classmethod
    def open(cls, path: Path) -> BlobFile:
        return cls(os.open(path, os.O_RDONLY))

    @property
    def closed(self) -> bool:
        return self._closing

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
                self._release_late()

    def close(self) -> None:
        """Release now, or once the read running now returns; idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._reads == 0
            if not idle:
                self._loop = running_loop()
        if idle:
            self._release(self._fd)

    def _release_late(self) -> None:
        """In the last read's thread: the release on the loop :meth:`close` ran on."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._release, self._fd)
                return
            except RuntimeError:  # that loop is closed: no release to run there
                pass
        _close_quietly(self._fd)


def os_error(exc: OSError) -> str:
    """``No space left on device, ENOSPC``: the words and the name to look up."""
    name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    words = exc.strerror or str(exc)
    return f"{words}, {name}" if name else words
