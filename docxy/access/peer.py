"""The client certificate a TLS connection presented, for the requests on that connection.

hypercorn does not put the peer certificate into the ASGI scope. Each connection is served by
one ``TCPServer`` task, and every request task of that connection is created inside it, so a
context variable set at the start of the connection is what each of its requests sees.
:func:`install` swaps in a ``TCPServer`` that sets it; :func:`peer_certificate` reads it.
"""

from __future__ import annotations

from contextvars import ContextVar

from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer

_PEER_CERT: ContextVar[bytes | None] = ContextVar("docxy_peer_cert", default=None)


class PeerCertTCPServer(TCPServer):
    """hypercorn's connection handler that first notes the verified client certificate."""

    async def run(self) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        _PEER_CERT.set(der or None)
        await super().run()


def install() -> None:
    """Make hypercorn's asyncio worker use :class:`PeerCertTCPServer` (idempotent)."""
    if not hasattr(hypercorn_run, "TCPServer"):
        raise RuntimeError("hypercorn changed: no asyncio.run.TCPServer to extend")
    hypercorn_run.TCPServer = PeerCertTCPServer


def peer_certificate() -> bytes | None:
    """The DER client certificate of the current connection, verified against the mirror's CA
    by the TLS layer; None on plain HTTP or when the client sent none."""
    return _PEER_CERT.get()
