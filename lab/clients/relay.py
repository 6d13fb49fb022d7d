"""A recording HTTP/1.1 relay that can cut one blob response halfway through.

It sits between a client daemon and the mirror (client → relay → mirror), forwards each request
on its own upstream connection (it adds `Connection: close` both ways, so every exchange is one
connection and a cut is easy to aim), and records method, target, headers and status of every
exchange. With `cut` set, the first matching 200 response is forwarded up to half its
Content-Length and then the connection is closed: what a flaky network does mid-download.
"""

from __future__ import annotations

import io
import socket
import socketserver
from collections.abc import Callable
from dataclasses import dataclass

from lab.clients.background import Background, RecordingServer

_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection"}
_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024

CutRule = Callable[[str, str], bool]
"""(method, target) → True to cut that response halfway (applied to the first match only)."""


@dataclass(frozen=True)
class Exchange:
    method: str
    target: str
    request_headers: dict[str, str]
    status: int
    response_headers: dict[str, str]
    cut: bool


@dataclass(frozen=True)
class _Head:
    start_line: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def as_dict(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers}

    def encode_closing(self) -> bytes:
        lines = [self.start_line]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP_HEADERS]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(stream: io.BufferedReader) -> _Head | None:
    start = stream.readline(_MAX_HEAD).decode("latin-1").rstrip("\r\n")
    if not start:
        return None
    headers: list[tuple[str, str]] = []
    while True:
        line = stream.readline(_MAX_HEAD).decode("latin-1").rstrip("\r\n")
        if not line:
            return _Head(start, headers)
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))


def _copy(src: io.BufferedReader, dst: socket.socket, limit: int | None) -> None:
    """Copy `limit` bytes (or until EOF when None) from src to dst."""
    remaining = limit
    while remaining is None or remaining > 0:
        want = _CHUNK if remaining is None else min(_CHUNK, remaining)
        data = src.read1(want)
        if not data:
            return
        dst.sendall(data)
        if remaining is not None:
            remaining -= len(data)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server
    request: socket.socket

    def handle(self) -> None:
        self.request.settimeout(120)
        with self.request.makefile("rb") as client_in:
            request = _read_head(client_in)
            if request is None:
                return
            length = int(request.get("content-length") or 0)
            body = client_in.read(length) if length else b""
        upstream = ("127.0.0.1", self.server.upstream_port)
        with socket.create_connection(upstream, 120) as up, up.makefile("rb") as up_in:
            up.sendall(request.encode_closing() + body)
            self._answer(request, up_in)

    def _answer(self, request: _Head, up_in: io.BufferedReader) -> None:
        method, target = request.start_line.split(" ")[:2]
        response = _read_head(up_in)
        if response is None:
            return
        status = int(response.start_line.split(" ")[1])
        size = response.get("content-length")
        cut = status == 200 and size is not None and self.server.claim_cut(method, target)
        exchange = Exchange(method, target, request.as_dict(), status, response.as_dict(), cut)
        self.server.record(exchange)
        self.request.sendall(response.encode_closing())
        if method == "HEAD" or status in (204, 304):
            return
        if cut and size is not None:
            _copy(up_in, self.request, int(size) // 2)
            self.request.shutdown(socket.SHUT_WR)
            return
        _copy(up_in, self.request, int(size) if size is not None else None)


class _Server(RecordingServer[Exchange]):
    def __init__(self, upstream_port: int, cut: CutRule | None) -> None:
        super().__init__(_Handler)
        self.upstream_port = upstream_port
        self._cut = cut

    def claim_cut(self, method: str, target: str) -> bool:
        with self._lock:
            if self._cut is None or not self._cut(method, target):
                return False
            self._cut = None
            return True


class Relay(Background[_Server]):
    """Context manager: a relay on 127.0.0.1 in front of the server on `upstream_port`."""

    def __init__(self, upstream_port: int, *, cut: CutRule | None = None) -> None:
        super().__init__(_Server(upstream_port, cut))

    @property
    def exchanges(self) -> list[Exchange]:
        return self._server.snapshot()
