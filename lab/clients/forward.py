"""A plain TCP forwarder on another loopback address: ``127.0.0.2:PORT`` → ``127.0.0.1:target``.

Clients that connect to it send ``Host: 127.0.0.2:PORT``, so the mirror behind it sees a
second host name without touching /etc/hosts: how the tests pick an upstream by host name.
"""

from __future__ import annotations

import socket
import socketserver
import threading

from lab.clients.background import Background, RecordingServer

_CHUNK = 64 * 1024


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(_CHUNK):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.record(self.client_address[0])
        with socket.create_connection(("127.0.0.1", self.server.target_port), timeout=60) as up:
            back = threading.Thread(target=_pump, args=(up, self.request), daemon=True)
            back.start()
            _pump(self.request, up)
            back.join(timeout=120)


class _Server(RecordingServer[str]):
    def __init__(self, address: str) -> None:
        super().__init__(_Handler, address)
        self.target_port = 0


class Forwarder(Background[_Server]):
    """Context manager: connections to ``address`` (127.0.0.2 by default) reach the target."""

    def __init__(self, address: str = "127.0.0.2") -> None:
        super().__init__(_Server(address))

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"{host}:{port}"

    def target(self, port: int) -> None:
        self._server.target_port = port

    @property
    def connections(self) -> int:
        return len(self._server.snapshot())
