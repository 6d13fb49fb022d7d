"""Small loopback TCP servers that record what they see, served from a thread for a `with` block."""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Generic, Self, TypeVar

T = TypeVar("T")


class RecordingServer(socketserver.ThreadingTCPServer, Generic[T]):
    """A threading TCP server on 127.0.0.1 or ``host`` (any free port), with a record list."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, handler: type[socketserver.BaseRequestHandler], host: str = "127.0.0.1"
    ) -> None:
        super().__init__((host, 0), handler)
        self._lock = threading.Lock()
        self._records: list[T] = []

    def record(self, item: T) -> None:
        with self._lock:
            self._records.append(item)

    def snapshot(self) -> list[T]:
        with self._lock:
            return list(self._records)


S = TypeVar("S", bound=socketserver.TCPServer)


class Background(Generic[S]):
    """Serves ``server`` (any TCP socketserver: a :class:`RecordingServer`, an HTTP server, one
    wrapped in TLS) from a daemon thread between ``__enter__`` and ``__exit__``, then shuts
    it down and closes it."""

    def __init__(self, server: S) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
