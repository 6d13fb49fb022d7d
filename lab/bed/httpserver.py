"""Loopback HTTP servers for the bed: stoppable, restartable on the same port, with a request log.

Every bed server (token server, front, CDN) is a `LoopbackServer`: a stdlib
`ThreadingHTTPServer` bound to 127.0.0.1 that remembers its port, so `stop()` followed by
`start()` brings it back at the same address. `stop()` also cuts every open keep-alive
connection, so a client with a pooled connection sees the outage too.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from lab.ports import LOOPBACK, free_port

T = TypeVar("T")


class RequestLog(Generic[T]):
    """A thread-safe, resettable list of what a server saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[T] = []

    def append(self, entry: T) -> None:
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def snapshot(self) -> list[T]:
        with self._lock:
            return list(self._entries)

    def where(self, predicate: Callable[[T], bool]) -> list[T]:
        return [entry for entry in self.snapshot() if predicate(entry)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self.snapshot())


class _TrackingHTTPServer(ThreadingHTTPServer):
    """Remembers open client sockets so that stopping the server can cut them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.owner = owner
        super().__init__((LOOPBACK, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (the mirror stopped reading a body it no longer
        needs) is no fault of the bed's: no traceback for it; anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackServer:
    """A handler class served on 127.0.0.1; `stop()`/`start()` keep the port (one from
    `lab.ports.free_port` unless given)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._handler = handler
        self._port = port
        self._server: _TrackingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("server was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        if self._port == 0:
            # outside the ephemeral range: while stopped (an outage), an outgoing connection
            # could take a kernel-picked port, and the restart found it in use
            self._port = free_port()
        server = _TrackingHTTPServer(self._port, self._handler, self)
        self._port = server.server_address[1]
        self._server = server
        name = f"bed-{type(self).__name__}-{self._port}"
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.cut_connections()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that does not print to stderr."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def owner(self) -> Any:
        return getattr(self.server, "owner", None)

    def send_bytes(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""
