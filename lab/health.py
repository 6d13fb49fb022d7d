"""A stand-in for the mirror's ``/health``, for the probes that ask it (``docxy health``, the
renewer's wait for the mirror) without a mirror behind them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lab.bed.httpserver import LoopbackServer, QuietHandler


@contextmanager
def health_server(
    status: int = 200, body: bytes = b'{"status": "ok", "version": "test"}'
) -> Iterator[LoopbackServer]:
    """A loopback server answering ``GET /health`` with `status` and the JSON `body`, and 404
    elsewhere; stopped on leaving."""

    class Health(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                self.send_bytes(status, body, "application/json")
            else:
                self.send_bytes(404, b"{}", "application/json")

    server = LoopbackServer(Health)
    server.start()
    try:
        yield server
    finally:
        server.stop()
