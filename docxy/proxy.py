"""Relaying an upstream response to the client: headers filtered, body streamed, cleanup sure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from quart import Response
from werkzeug.datastructures import Headers

from docxy.challenge import rewrite_challenge
from docxy.errors import UpstreamUnavailable
from docxy.headers import response_headers

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
MAX_SMALL_BODY = 4 * 1024 * 1024


async def _stream(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


async def empty_body() -> AsyncIterator[bytes]:
    """A body of no bytes that leaves ``Content-Length`` alone (Quart rewrites it for ``b""``)."""
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _nothing(upstream: httpx.Response) -> AsyncIterator[bytes]:
    await upstream.aclose()
    return
    yield b""  # pragma: no cover - makes this an async generator


def relay(upstream: httpx.Response, *, method: str, realm: str, library_prefix: bool) -> Response:
    """A streaming Quart response mirroring ``upstream``.

    ``Content-Length`` is the upstream's, also for HEAD (an empty generator body keeps Quart
    from rewriting it to 0). A Bearer challenge is re-pointed at the mirror's token endpoint.
    """
    headers = response_headers(upstream.headers.multi_items())
    challenge = upstream.headers.get("www-authenticate")
    if challenge is not None:
        headers.append(("WWW-Authenticate", rewrite_challenge(challenge, realm, library_prefix)))
    headers.append(API_VERSION_HEADER)
    body = _nothing(upstream) if method == "HEAD" else _stream(upstream)
    response = Response(body, status=upstream.status_code, headers=Headers(headers))
    if "content-type" not in upstream.headers:
        del response.headers["Content-Type"]  # Quart's default text/html would be a lie
    response.timeout = None
    return response


async def read_small(upstream: httpx.Response, limit: int = MAX_SMALL_BODY) -> bytes:
    """Read a small body (token, ``/v2/`` answer) with a bound; always closes the response."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise UpstreamUnavailable(f"the upstream's answer exceeded {limit} bytes")
            chunks.append(chunk)
    finally:
        await upstream.aclose()
    return b"".join(chunks)
