"""A registry error sent straight through ASGI, by the layers that answer before the app does
(admission, framing, the plain-HTTP guard): the error's own body and headers
(:meth:`RegistryError.encoded`, :meth:`RegistryError.headers`), its length, and what the layer
adds (the API version, ``Connection: close``, a ``Location``).

A WebSocket upgrade is a request like any other to these layers (scope ``websocket``): its
handshake is a ``GET`` with a path, headers and a client address, so it is logged, admitted
and counted as one. The mirror serves none (Quart answers ``400``); a layer that answers it
first sends its answer as the upgrade's denial (:func:`answer_send`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from hypercorn.typing import ASGISendCallable, Scope

from docxy.core.errors import RegistryError
from docxy.core.headers import API_VERSION_HEADER

#: ASGI's extension for answering a WebSocket upgrade with an HTTP response (hypercorn has it).
DENIAL = "websocket.http.response"


def answer_send(scope: Scope, send: ASGISendCallable) -> ASGISendCallable:
    """``send`` for an HTTP answer to ``scope``: ``send`` itself for a request; for a WebSocket
    upgrade, its denial (``websocket.http.response.start`` and ``.body``: the same status,
    headers and body), or, from a server without that extension, a close before the handshake
    (which the server answers ``403``)."""
    if scope["type"] != "websocket":
        return send
    denial = DENIAL in (scope.get("extensions") or {})

    async def denied(message: Any) -> None:
        kind = message["type"]
        if denial:
            await send(cast(Any, {**message, "type": f"websocket.{kind}"}))
        elif kind == "http.response.start":
            await send({"type": "websocket.close", "code": 1008, "reason": None})

    return denied


async def send_error(
    send: ASGISendCallable, error: RegistryError, extra: Iterable[tuple[str, str]] = ()
) -> None:
    body = error.encoded()
    # Every registry answer carries the API version (docxy.core.headers), these too.
    named = [*error.headers(), API_VERSION_HEADER, ("Content-Length", str(len(body))), *extra]
    headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in named]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
