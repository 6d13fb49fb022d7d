"""Calling an ASGI app the way hypercorn does, for tests that need what Quart's test client hides.

The test client decodes percent-encoded paths and recomputes ``Content-Length`` from the body
it collected; a raw call shows the raw path handling and the headers the app really sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from werkzeug.datastructures import Headers

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class AsgiAnswer:
    status: int  # 0: the app answered nothing before the client hung up
    headers: Headers
    body: bytes
    complete: bool = True  # the app ended the body (False: the connection was cut)


def client_receive(
    first: dict[str, Any], last: dict[str, Any], hang_up: asyncio.Event | None = None
) -> Receive:
    """What a client sends the app: ``first`` (its request, its WebSocket connect), then
    nothing until ``hang_up`` is set (never, if None: the app cancels the wait when it is
    done), then ``last`` (its disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return first
        await (hang_up or asyncio.Event()).wait()
        return last

    return receive


def http_scope(
    method: str,
    raw_path: str,
    *,
    host: str,
    scheme: str = "http",
    headers: Iterable[tuple[str, str]] = (),
    client: str = "127.0.0.1",
) -> dict[str, Any]:
    """The scope hypercorn gives an HTTP/1.1 request from ``client`` for ``raw_path``."""
    path, _, query = raw_path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": unquote(path),  # hypercorn decodes the target's %XX (raw_path keeps them)
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", host.encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }


async def call_asgi(
    app: Any,
    method: str,
    raw_path: str,
    *,
    host: str,
    scheme: str = "http",
    headers: Iterable[tuple[str, str]] = (),
    client: str = "127.0.0.1",
    started: asyncio.Event | None = None,
    body_seen: asyncio.Event | None = None,
    hang_up: asyncio.Event | None = None,
) -> AsgiAnswer:
    """One request from ``client``; ``started`` is set when the status goes out, ``body_seen``
    when the first body bytes do, and the client hangs up once ``hang_up`` is set (Quart then
    cancels the handler)."""
    scope = http_scope(method, raw_path, host=host, scheme=scheme, headers=headers, client=client)
    messages: list[dict[str, Any]] = []
    request = {"type": "http.request", "body": b"", "more_body": False}
    receive = client_receive(request, {"type": "http.disconnect"}, hang_up)

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if started is not None and message["type"] == "http.response.start":
            started.set()
        if body_seen is not None and message.get("body"):
            body_seen.set()

    await app(scope, receive, send)
    if not messages:
        return AsgiAnswer(0, Headers(), b"", complete=False)
    start = messages[0]
    assert start["type"] == "http.response.start"
    answer_headers = Headers([(k.decode(), v.decode()) for k, v in start["headers"]])
    body = b"".join(m.get("body", b"") for m in messages[1:])
    complete = any(
        m["type"] == "http.response.body" and not m.get("more_body", False) for m in messages
    )
    return AsgiAnswer(start["status"], answer_headers, body, complete)


async def get_with_token(app: Any, path: str, token: str) -> AsgiAnswer:
    """A ``GET`` of ``path`` on the mirror's public host, with ``token`` as its Bearer."""
    auth = [("Authorization", f"Bearer {token}")]
    return await call_asgi(app, "GET", path, host="mirror.example.com", headers=auth)
