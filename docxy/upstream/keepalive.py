"""Idle ``http.client`` connections kept for the next direct GET to the same origin.

A fill's direct GET (:mod:`docxy.upstream.direct`) would otherwise open a new TCP and TLS
connection per blob, and per hop of its redirect (registry, then CDN), where httpx's pool
reuses them. A connection comes back here only after its answer was read to the end; one taken
from here may have been closed by the server meanwhile, so the caller retries such a failure
once on a new connection.
"""

from __future__ import annotations

import http.client
import threading
import time

#: Idle connections kept per origin, and for how long.
IDLE_PER_ORIGIN = 4
IDLE_SECONDS = 30.0

#: (scheme, host, port)
Origin = tuple[str, str, int | None]


class IdleConnections:
    """A small thread-safe pool: :meth:`take` the newest fresh one, :meth:`give` one back."""

    def __init__(self, per_origin: int = IDLE_PER_ORIGIN, idle_seconds: float = IDLE_SECONDS):
        self._per_origin = per_origin
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[tuple[float, http.client.HTTPConnection]]] = {}

    def take(self, origin: Origin) -> http.client.HTTPConnection | None:
        with self._lock:
            stale = self._stale()
            idle = self._idle.get(origin, [])
            found = idle.pop()[1] if idle else None
        for connection in stale:
            connection.close()
        return found

    def give(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            stale = self._stale()
            idle = self._idle.setdefault(origin, [])
            idle.append((time.monotonic(), connection))
            if len(idle) > self._per_origin:
                stale.append(idle.pop(0)[1])
        for dropped in stale:
            dropped.close()

    def _stale(self) -> list[http.client.HTTPConnection]:
        """Take out every origin's connections idle too long (under the lock): a CDN host not
        asked again kept its sockets open, in CLOSE_WAIT once the server closed them."""
        cutoff = time.monotonic() - self._idle_seconds
        stale: list[http.client.HTTPConnection] = []
        for origin, idle in list(self._idle.items()):
            stale += [connection for since, connection in idle if since < cutoff]
            idle[:] = [(since, connection) for since, connection in idle if since >= cutoff]
            if not idle:
                del self._idle[origin]
        return stale

    def close(self) -> None:
        """Close every idle connection (at shutdown)."""
        with self._lock:
            idle = [c for connections in self._idle.values() for _, c in connections]
            self._idle.clear()
        for connection in idle:
            connection.close()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())
