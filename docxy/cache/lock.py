"""One serving mirror per cache directory: an advisory ``flock`` on ``<cache.dir>/docxy.lock``,
held for the serving process's life.

Two mirrors on one directory (one started twice, two replicas on one volume) would each evict
by their own view of its size, and each start's sweep of ``tmp/`` would delete the other's
fills in flight. The second one refuses to start instead, naming the directory and the holder
(its pid and host, written in the file). ``docxy cache ...`` runs beside a mirror by design and
takes no lock (its ``gc`` leaves alone the temp files a process holds).

The lock is the process's: a second :func:`hold` of the same directory in one process (tests,
a cache reopened) holds it already. The kernel drops it when the process ends, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from docxy.cache.errors import CacheError

log = logging.getLogger(__name__)

LOCK_NAME = "docxy.lock"

#: The directories this process holds (their real path → the lock file's descriptor).
_held: dict[str, int] = {}


class CacheInUse(CacheError):
    """Another process serves from this cache directory."""


def hold(directory: Path) -> None:
    """Take the lock of ``directory`` for this process's life; :class:`CacheInUse` if another
    process holds it. Where no lock can be had (a read-only cache, a file system without
    ``flock``), said in a WARNING and served without one: such a cache is not written anyway,
    or the file system cannot tell."""
    key = os.path.realpath(directory)
    if key in _held:
        return
    path = Path(directory) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open(path)
    except OSError as exc:
        log.warning("cache: cannot open %s (%s): no check for another mirror on it", path, exc)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise CacheInUse(
            f"{directory} is in use by another docxy serving from it ({holder}, holding "
            f"{path}): one mirror per cache.dir; stop that one, or give this one its own"
        ) from None
    except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks
        os.close(fd)
        log.warning("cache: cannot lock %s (%s): no check for another mirror on it", path, exc)
        return
    try:  # who holds it, for the next one's message
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError:  # read-only: held all the same, the holder not said
        pass
    _held[key] = fd


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock needs no write access


def _holder(fd: int) -> str:
    """``pid 123 on host abc``, as the holder wrote it; or that it did not say."""
    try:
        words = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        words = []
    if len(words) >= 2 and words[0].isdigit():
        return f"pid {words[0]} on host {words[1]}"
    return "a process that did not say which"
