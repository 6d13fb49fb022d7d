"""Open client connections, counted from the kernel's socket tables (Linux).

ASGI shows the app requests, not connections: an idle keep-alive connection is invisible to
it. The kernel knows: ``/proc/self/net/tcp`` and ``tcp6`` list the TCP sockets of the
network namespace with their state and inode, and ``/proc/self/fd`` links to the socket
inodes this process holds. A client connection is one of ours, established, whose local port
is a listener's.

Those tables list every socket of the namespace: on a busy host (or in the host's namespace)
that is megabytes the kernel makes as it is read, taking long. So :class:`ConnectionCounter`
reads them in a worker thread, one read at a time however many scrapes ask, and a read gives
up past :data:`READ_SECONDS` or :data:`READ_BYTES`: the count is then unknown (``None``, NaN
in ``/metrics``), never a part count.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from docxy.tasks import Coalesced

log = logging.getLogger(__name__)

ESTABLISHED = "01"
PROC = Path("/proc/self")
#: A read of the tables and descriptors gives up after this long, or this many bytes (about
#: 400,000 sockets' rows): the count is then unknown.
READ_SECONDS = 2.0
READ_BYTES = 64 << 20
CHUNK = 1 << 20
FDS_PER_CHECK = 1024  # descriptors looked at between two looks at the clock


class OverBudget(Exception):
    """The tables are too long to read within the budget."""


class Budget:
    """How long, and how many bytes, a read may take."""

    def __init__(
        self,
        seconds: float = READ_SECONDS,
        max_bytes: int = READ_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.deadline = clock() + seconds
        self.left = max_bytes

    def spend(self, size: int = 0) -> None:
        self.left -= size
        if self.left < 0:
            raise OverBudget("too many bytes")
        if self.clock() > self.deadline:
            raise OverBudget("too long")


def open_connections(
    ports: Iterable[int], proc: Path = PROC, budget: Budget | None = None
) -> int | None:
    """Established TCP connections of this process on ``ports``; ``None`` without ``/proc``,
    or when the tables are longer than ``budget`` allows (blocking: not on the event loop)."""
    wanted = set(ports)
    budget = budget or Budget()
    try:
        owned = set(socket_inodes(proc / "fd", budget))
        return sum(
            1
            for name in ("tcp", "tcp6")
            for port, state, inode in table(proc / "net" / name, budget)
            if state == ESTABLISHED and port in wanted and inode in owned
        )
    except OSError:
        return None
    except OverBudget as exc:
        log.debug("open connections not counted: the socket tables take %s to read", exc)
        return None


def socket_inodes(fd_dir: Path, budget: Budget) -> Iterator[str]:
    with os.scandir(fd_dir) as entries:
        for n, entry in enumerate(entries):
            if n % FDS_PER_CHECK == 0:
                budget.spend()
            try:
                target = os.readlink(entry.path)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                yield target[len("socket:[") : -1]


def table(path: Path, budget: Budget) -> Iterator[tuple[int, str, str]]:
    """``(local port, state, inode)`` per row of a ``/proc/net/tcp``-style table."""
    try:
        lines = _lines(path, budget)
        next(lines, None)  # the header
        yield from (row for row in map(_row, lines) if row is not None)
    except FileNotFoundError:  # no IPv6
        return


def _lines(path: Path, budget: Budget) -> Iterator[bytes]:
    """The file's lines, read a chunk at a time, each chunk paid for."""
    with path.open("rb") as file:
        rest = b""
        while chunk := file.read(CHUNK):
            budget.spend(len(chunk))
            *lines, rest = (rest + chunk).split(b"\n")
            yield from lines
        if rest:
            yield rest


def _row(line: bytes) -> tuple[int, str, str] | None:
    fields = line.split()
    if len(fields) < 10 or b":" not in fields[1]:
        return None
    try:
        port = int(fields[1].rsplit(b":", 1)[1], 16)
    except ValueError:
        return None
    return port, fields[3].decode("latin-1"), fields[9].decode("latin-1")


class ConnectionCounter:
    """The count of :func:`open_connections`, read off the event loop.

    :meth:`refresh` reads in a worker thread; scrapes arriving meanwhile wait for the same
    read. :attr:`last` is what the latest read found, for the collectors (which run on the
    loop and must not read the tables themselves).
    """

    def __init__(
        self,
        ports: Callable[[], list[int]],
        count: Callable[[list[int]], int | None] = open_connections,
    ) -> None:
        self.ports = ports
        self.count = count
        self.last: int | None = None
        self._reads: Coalesced[str, int | None] = Coalesced(OSError)

    @property
    def joined(self) -> int:
        """Scrapes that waited for a read another had started."""
        return self._reads.joined

    async def refresh(self) -> int | None:
        ports = self.ports()
        self.last = await self._reads.run(
            "connections", "count-connections", lambda: asyncio.to_thread(self.count, ports)
        )
        return self.last
