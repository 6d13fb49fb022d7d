"""A loopback egress guard: the HTTP(S) proxy we give every daemon, which refuses everything.

dockerd falls back to registry-1.docker.io when a mirror pull fails, and containerd would go to
Docker Hub without a hosts.toml. Our tests may only talk to 127.0.0.1, so each daemon runs with
HTTP_PROXY/HTTPS_PROXY pointing here: loopback traffic is never proxied, anything else arrives
here, is answered 403 without being forwarded, and is recorded so a test can assert that no
client ever tried to leave.
"""

from __future__ import annotations

import socketserver

from lab.clients.background import Background, RecordingServer

_REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
    b"Connection: close\r\n\r\ndocxy tests: egress not allowed\r\n"
)


class _Handler(socketserver.StreamRequestHandler):
    timeout = 5.0
    server: _Server

    def handle(self) -> None:
        try:
            first_line = self.rfile.readline(4096).decode("latin-1").strip()
        except (OSError, TimeoutError):
            first_line = "<no request line>"
        self.server.record(first_line or "<empty>")
        try:
            self.wfile.write(_REFUSAL)
        except OSError:
            pass


class _Server(RecordingServer[str]):
    def __init__(self) -> None:
        super().__init__(_Handler)


class EgressGuard(Background[_Server]):
    """Context manager: a refusing proxy on 127.0.0.1; `attempts` lists what reached it."""

    def __init__(self) -> None:
        super().__init__(_Server())

    @property
    def attempts(self) -> list[str]:
        return self._server.snapshot()
