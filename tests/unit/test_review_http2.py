"""Review findings on the HTTP surface and the edge, each reproduced against a real server or
the layer itself before its mend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hypercorn.protocol
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from docxy.edge import framing
from docxy.tasks import spawn

HOST = "127.0.0.80"
PORTS = range(9200, 9300)  # the review's loopback ports
GUARD = 10.0  # seconds before a would-be hang becomes a test failure


def free_port() -> int:
    """A port below 10000 that ``HOST`` can bind now."""
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS} on {HOST}")


async def small_answers(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app answering every request, once its body is read, with a few bytes (the
    lifespan too)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):  # the whole body first, as a route reads it
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[int]:
    """hypercorn serving :func:`small_answers` on ``HOST``; yields its port."""
    port = free_port()
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.h11_max_incomplete_size = 16 * 1024
    config.accesslog = None
    stop = asyncio.Event()
    task = spawn("test-server", serve(small_answers, config, shutdown_trigger=stop.wait))
    try:
        for _ in range(100):  # until it listens
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(HOST, port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, GUARD)


async def exchange(port: int, *parts: bytes) -> bytes:
    """Send ``parts`` (a pause between them, so each is read apart), read to the close."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


@pytest.fixture
def h11_installed() -> Iterator[None]:
    before = getattr(hypercorn.protocol, "H11Protocol")  # noqa: B009 - not exported
    framing.install()
    yield
    setattr(hypercorn.protocol, "H11Protocol", before)  # noqa: B010


LONG = b"X-Long: " + b"a" * 6000 + b"\r\n"

UNREADABLE = {
    # h11 refuses these itself, before any ASGI layer sees a request
    "no Host": ([b"GET /v2/ HTTP/1.1\r\n\r\n"], 400),
    "two Hosts": ([b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"], 400),
    "a raw byte in the target": ([b"GET /v2/?ns=\xff HTTP/1.1\r\nHost: a\r\n\r\n"], 400),
    "a head too large, in pieces": ([b"GET /v2/ HTTP/1.1\r\nHost: a\r\n", LONG, LONG, LONG], 431),
    "an unknown Transfer-Encoding": (
        [b"POST /v2/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"],
        501,
    ),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
async def test_a_request_h11_cannot_read_gets_the_registrys_json_error(
    h11_installed: None, name: str
) -> None:
    """hypercorn answered what h11 refuses with a bodiless status (``content-length: 0``):
    no registry error for a client to read, where the same head too large sent in one piece
    got the JSON ``431`` of ``docxy.edge.framing``."""
    parts, status = UNREADABLE[name]
    async with serving() as port:
        answer = await exchange(port, *parts)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    errors = json.loads(body)["errors"]
    assert errors[0]["code"] and errors[0]["message"]


async def test_a_head_request_whose_body_h11_cannot_read_gets_no_body(
    h11_installed: None,
) -> None:
    """A HEAD whose chunked body breaks before the app answered: its error's head says the
    length a GET's would have, and no body follows (none may, after a HEAD)."""
    head = b"HEAD /v2/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with serving() as port:
        answer = await exchange(port, head, b"zz\r\n")
    lines, _, body = answer.partition(b"\r\n\r\n")
    assert lines.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in lines
    assert b"content-length: 0" not in lines
    assert body == b""
