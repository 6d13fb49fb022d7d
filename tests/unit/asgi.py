"""Calling an ASGI app the way hypercorn does, for tests that need what Quart's test client hides.

The test client decodes percent-encoded paths and recomputes ``Content-Length`` from the body
it collected; a raw call shows the raw path handling and the headers the app really sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import Headers


@dataclass
class AsgiAnswer:
    status: int
    headers: Headers
    body: bytes
    complete: bool = True  # the app ended the body (False: the connection was cut)


def http_scope(
    method: str,
    raw_path: str,
    *,
    host: str,
    scheme: str = "http",
    headers: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The scope hypercorn gives an HTTP/1.1 request from 127.0.0.1 for ``raw_path``."""
    path, _, query = raw_path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", host.encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 40000),
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
    body_seen: asyncio.Event | None = None,
) -> AsgiAnswer:
    """One request; ``body_seen`` is set when the first body bytes go out."""
    scope = http_scope(method, raw_path, host=host, scheme=scheme, headers=headers)
    messages: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays; the app cancels this when done
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if body_seen is not None and message.get("body"):
            body_seen.set()

    await app(scope, receive, send)
    start = messages[0]
    assert start["type"] == "http.response.start"
    answer_headers = Headers([(k.decode(), v.decode()) for k, v in start["headers"]])
    body = b"".join(m.get("body", b"") for m in messages[1:])
    complete = any(
        m["type"] == "http.response.body" and not m.get("more_body", False) for m in messages
    )
    return AsgiAnswer(start["status"], answer_headers, body, complete)
