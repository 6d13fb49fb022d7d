"""Requests whose framing a proxy in front of the mirror could read differently are refused.

h11 already refuses most smuggling shapes with a 400 (two differing ``Content-Length``s, a
list in one, a sign, whitespace before the colon, an unknown ``Transfer-Encoding``, a bad
chunk size). It does accept ``Content-Length`` *and* ``Transfer-Encoding: chunked`` together:
it reads the body as chunked and keeps the connection open, so a proxy that framed the same
bytes by their length would see a different next request (checked over a raw socket: two
responses to one such write). RFC 9112 §6.1 lets a server refuse that; this layer does,
with ``400`` and ``Connection: close``, so nothing after it on the connection is read.

It also caps the total size of the request head: h11's limit only applies while a head is
incomplete, so one that arrives in a single read may be larger.

What h11 refuses itself (no ``Host``, two of them, a raw byte in the target, a head too large
while incomplete, an unknown ``Transfer-Encoding``, a bad chunk) never reaches an ASGI layer:
hypercorn answered it with a bodiless status. :func:`install` makes that answer the registry's
JSON error too (:class:`H11Answered`), as this layer's own are.
"""

from __future__ import annotations

from itertools import chain

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from docxy.core.errors import ClientError, RegistryError, RequestTooLarge
from docxy.core.headers import API_VERSION_HEADER
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


def unreadable(status: int) -> RegistryError:
    """The error for a request h11 refused with ``status`` (its hint: 400, 431 or 501)."""
    if status == 431:
        return RequestTooLarge("request headers too large", status=431)
    if status == 501:
        return AmbiguousFraming("this Transfer-Encoding is not supported", status=501)
    return ClientError("the request is not one HTTP/1.1 can read", status=status)


class H11Answered(H11Protocol):
    """hypercorn's HTTP/1.1 connection, whose answer to a request h11 cannot read is the
    registry's JSON error (then the close hypercorn makes), not a bodiless status: a client
    parses error bodies as the registry's (docker prints their message)."""

    async def _send_error_response(self, status_code: int) -> None:
        error = unreadable(status_code)
        body = error.encoded()
        named = [*error.headers(), API_VERSION_HEADER, ("Content-Length", str(len(body)))]
        ours = [(name.lower().encode(), value.encode()) for name, value in named]
        closing = [(b"connection", b"close")]
        headers = list(chain(ours, closing, self.config.response_headers("h11")))
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        if not self._answering_head():  # after a HEAD no body may follow
            await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    def _answering_head(self) -> bool:
        """Whether the request being answered is a HEAD (its head was read, its body was not)."""
        scope = getattr(self.stream, "scope", None)
        return isinstance(scope, dict) and scope.get("method") == "HEAD"


#: hypercorn's own methods :class:`H11Answered` overrides or calls (none of them public).
RELIED_ON = ("_send_error_response", "_send_h11_event")


def install() -> None:
    """Make hypercorn serve HTTP/1.1 with :class:`H11Answered` (it names the class it serves a
    connection with in ``hypercorn.protocol``, with no setting for it). Refuses to start on a
    hypercorn that no longer has what the subclass relies on: a renamed method would otherwise
    bring the bodiless answers back without a word."""
    ours = (H11Protocol, H11Answered)
    if getattr(hypercorn.protocol, "H11Protocol", None) not in ours:
        raise RuntimeError("hypercorn.protocol no longer names H11Protocol: update docxy.edge")
    missing = [name for name in RELIED_ON if not callable(getattr(H11Protocol, name, None))]
    if missing:
        raise RuntimeError(
            f"hypercorn's H11Protocol has no {', '.join(missing)}: update docxy.edge"
        )
    setattr(hypercorn.protocol, "H11Protocol", H11Answered)  # noqa: B010 - not a public name
