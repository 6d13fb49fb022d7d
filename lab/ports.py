"""Loopback addresses and free ports."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


#: Ports this process handed out: the kernel may give a port just closed again, and two
#: calls in a row (a test's HTTP and TLS ports) must not name the same one.
_given: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago (for child processes we cannot hand a
    socket to), and never one this process handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free port this process has not handed out already")


def accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on `host`:`port` now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
