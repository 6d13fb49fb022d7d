"""Requests whose framing a proxy in front of the mirror could read differently are refused.

h11 already refuses most smuggling shapes with a 400 (two differing ``Content-Length``s, a
list in one, a sign, whitespace before the colon, an unknown ``Transfer-Encoding``, a bad
chunk size). It does accept ``Content-Length`` *and* ``Transfer-Encoding: chunked`` together:
it reads the body as chunked and keeps the connection open, so a proxy that framed the same
bytes by their length would see a different next request (checked over a raw socket: two
responses to one such write). RFC 9112 §6.3 lets a server refuse that; this layer does,
with ``400`` and ``Connection: close``, so nothing after it on the connection is read.

It also caps the total size of the request head: h11's limit only applies while a head is
incomplete, so one that arrives in a single read may be larger.
"""

from __future__ import annotations

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from docxy.core.errors import ClientError, RegistryError, RequestTooLarge
from docxy.edge.replies import answer_send, send_error

MAX_HEAD = 16 * 1024  # bytes of header names and values, the same as h11's incomplete limit


class AmbiguousFraming(ClientError):
    code = "UNSUPPORTED"


def framing_error(headers: list[tuple[bytes, bytes]]) -> RegistryError | None:
    """Why a request with these headers is refused, or None."""
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > MAX_HEAD:
        return RequestTooLarge("request headers too large", status=431)
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        return AmbiguousFraming("Content-Length and Transfer-Encoding together are refused")
    if names.count(b"transfer-encoding") > 1:
        return AmbiguousFraming("more than one Transfer-Encoding header is refused")
    return None


class Framing:
    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        error = framing_error(list(scope["headers"]))
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(answer_send(scope, send), error, [("Connection", "close")])
