"""Review findings on the HTTP surface and the edge, each reproduced against a real server or
the layer itself before its mend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hypercorn.asyncio.run as hypercorn_run
import hypercorn.protocol
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response

from docxy.edge import connections, framing
from docxy.edge.connections import ConnectionGuard
from docxy.http.drain import Drain
from docxy.http.middleware import AccessLog
from docxy.tasks import spawn
from lab.ports import free_port, listening

HOST = "127.0.0.80"
GUARD = 10.0  # seconds before a would-be hang becomes a test failure


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
    port = free_port(HOST)
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.h11_max_incomplete_size = 16 * 1024
    config.accesslog = None
    stop = asyncio.Event()
    task = spawn("test-server", serve(small_answers, config, shutdown_trigger=stop.wait))
    try:
        await listening(HOST, port)
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


@pytest.fixture
def edge_installed() -> Iterator[None]:
    before = getattr(hypercorn_run, "TCPServer")  # noqa: B009 - not exported
    connections.install()
    yield
    setattr(hypercorn_run, "TCPServer", before)  # noqa: B010


CHUNK = b"b" * (64 * 1024)


def many_chunks() -> Quart:
    """A Quart app sending a long body in chunks, as a blob route does; ``BODIES`` says how far
    each body got (True when the generator gave its last chunk)."""
    app = Quart("chunks")

    @app.route("/")
    async def chunks() -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(400):
                yield CHUNK
            BODIES.append(True)

        response = Response(body())
        response.timeout = None
        return response

    return app


BODIES: list[bool] = []


async def test_a_stalled_client_dropped_logs_no_asyncio_warning(
    edge_installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that takes no bytes is aborted after ``limits.send_timeout``; the body's next
    chunks were still written into the aborted transport, and asyncio logged a WARNING
    ``socket.send() raised exception.`` for each stalled client (seen in the mirror's log right
    after each ``closing stalled`` line)."""
    BODIES.clear()
    port = free_port(HOST)
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    setattr(config, "edge", ConnectionGuard(max_connections=10, send_timeout=0.5))  # noqa: B010
    stop = asyncio.Event()
    app = AccessLog(Drain(many_chunks()))  # the mirror's layers around its routes
    task = spawn("test-server", serve(app, config, shutdown_trigger=stop.wait))
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(100):  # until it listens
            with contextlib.suppress(OSError):
                client.connect((HOST, port))
                break
            await asyncio.sleep(0.05)
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # and never reads
        for _ in range(100):  # until the stall is seen
            if config.edge.stalled:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the app's next chunks
        assert config.edge.stalled == 1  # type: ignore[attr-defined]
        assert not BODIES  # the app learnt the client left: no body "sent" whole
        warned = [r for r in caplog.records if r.name == "asyncio" and r.levelname == "WARNING"]
        assert not warned
    finally:
        client.close()
        stop.set()
        await asyncio.wait_for(task, GUARD)


async def test_a_stop_with_a_request_head_half_sent_ends_at_once(
    edge_installed: None, h11_installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    """At a stop hypercorn closes a connection whose request head is not complete, and h11
    then answers it 400 on the closing transport: that answer is dropped, not waited on
    (a wait there held the stop to its graceful timeout, then logged two tracebacks)."""
    port = free_port(HOST)
    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 20  # far past the bound below: a loaded machine does not fail it
    setattr(config, "edge", ConnectionGuard(max_connections=10, send_timeout=30))  # noqa: B010
    stop = asyncio.Event()
    task = spawn("test-server", serve(small_answers, config, shutdown_trigger=stop.wait))
    client = socket.socket()
    try:
        for _ in range(100):  # until it listens
            with contextlib.suppress(OSError):
                client.connect((HOST, port))
                break
            await asyncio.sleep(0.05)
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")  # the head, unfinished
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(task, GUARD)
        assert asyncio.get_running_loop().time() - started < 10.0
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        client.close()
        stop.set()


@pytest.mark.parametrize("name", framing.RELIED_ON)
def test_install_refuses_a_hypercorn_without_a_method_the_subclass_relies_on(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hypercorn.protocol.h11 import H11Protocol

    before = getattr(hypercorn.protocol, "H11Protocol")  # noqa: B009 - not exported
    monkeypatch.delattr(H11Protocol, name)
    with pytest.raises(RuntimeError, match=name):
        framing.install()
    assert getattr(hypercorn.protocol, "H11Protocol") is before  # noqa: B009 - left as it was
