"""Open client connections, counted from the kernel's socket tables (Linux).

ASGI shows the app requests, not connections: an idle keep-alive connection is invisible to
it. The kernel knows: ``/proc/self/net/tcp`` and ``tcp6`` list the TCP sockets of the
network namespace with their state and inode, and ``/proc/self/fd`` links to the socket
inodes this process holds. A client connection is one of ours, established, whose local port
is a listener's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

ESTABLISHED = "01"
PROC = Path("/proc/self")


def open_connections(ports: Iterable[int], proc: Path = PROC) -> int | None:
    """Established TCP connections of this process on ``ports``; ``None`` without ``/proc``."""
    wanted = set(ports)
    try:
        owned = set(socket_inodes(proc / "fd"))
        rows = [*table(proc / "net" / "tcp"), *table(proc / "net" / "tcp6")]
    except OSError:
        return None
    return sum(
        1
        for port, state, inode in rows
        if state == ESTABLISHED and port in wanted and inode in owned
    )


def socket_inodes(fd_dir: Path) -> Iterator[str]:
    for entry in os.scandir(fd_dir):
        try:
            target = os.readlink(entry.path)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            yield target[len("socket:[") : -1]


def table(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(local port, state, inode)`` per row of a ``/proc/net/tcp``-style table."""
    try:
        lines = path.read_text().splitlines()[1:]
    except FileNotFoundError:  # no IPv6
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or ":" not in fields[1]:
            continue
        try:
            port = int(fields[1].rsplit(":", 1)[1], 16)
        except ValueError:
            continue
        yield port, fields[3], fields[9]
