"""Loopback addresses and free ports."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


#: Ports this process handed out: two calls in a row (a test's HTTP and TLS ports) must not
#: name the same one.
_given: set[int] = set()

#: Ports are handed out outside the kernel's ephemeral range, which outgoing connections take
#: their local ports from: a port free a moment ago inside that range can be a connection's by
#: the time the child process binds it (a CI run lost a test so: a wildcard listener found its
#: port taken). Nothing takes a port outside it by itself. Below it from here, or above it.
LOWEST = 10000
ROOM = 1000  # ports a stretch outside the range must hold to be used
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral ports, first and last."""
    try:
        first, last = _RANGE_FILE.read_text().split()[:2]
        return int(first), int(last)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def stretches() -> list[tuple[int, int]]:
    """Where ports are picked from: [low, top) outside the ephemeral range, with room."""
    first, last = ephemeral_range()
    found = [(LOWEST, first), (last + 1, 65536)]
    return [(low, top) for low, top in found if top - low >= ROOM]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` and on both wildcards a moment ago (for child
    processes we cannot hand a socket to), outside the ephemeral range where it has room (a
    kernel's pick inside it where not), and never one this process handed out before."""
    where = stretches()
    for _ in range(1000):
        low, top = where[0] if where else (0, 0)
        port = _pick.randrange(low, top) if where else _kernel_port(host)
        if port not in _given and _bindable(host, port):
            _given.add(port)
            return port
    raise RuntimeError("no free port this process has not handed out already")


_pick = random.Random()  # (no secret: which port a test listens on)


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _bindable(host: str, port: int) -> bool:
    """Whether `port` binds on `host` and on each wildcard (no listener, no connection and no
    TIME_WAIT on it: the sockets try without SO_REUSEADDR)."""
    addresses = [(socket.AF_INET, host), (socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        addresses.append((socket.AF_INET6, "::"))
    for family, address in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            if family == socket.AF_INET6:
                continue  # no IPv6 here: nothing to collide with
            raise
    return True


#: Where a test that binds its own listener in its own process picks a port: below the ports
#: :func:`free_port` hands to child processes, so the two never meet.
OWN_PORTS = range(2000, LOWEST)


def on_own_port(bind: Callable[[int], T], tries: int = 50) -> T:
    """``bind(port)`` for the first of ``tries`` random ports of :data:`OWN_PORTS` it does not
    raise :class:`OSError` for (a port taken); RuntimeError if it raised for every one."""
    for port in _pick.sample(OWN_PORTS, tries):
        try:
            return bind(port)
        except OSError:
            continue
    raise RuntimeError(f"no free port below {LOWEST} in {tries} tries")


def bound_socket(host: str) -> socket.socket:
    """A TCP socket bound on ``host`` at a free port of :data:`OWN_PORTS`, not listening yet."""

    def bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    return on_own_port(bind)


def accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on `host`:`port` now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def listening(host: str, port: int, *, timeout: float = 5.0) -> None:
    """Return once a TCP connection to ``host:port`` is taken (a server started in this
    process's event loop is up); :class:`TimeoutError` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        if loop.time() >= end:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")
        await asyncio.sleep(0.05)
