"""A stop that ends the connections left at hypercorn's ``graceful_timeout`` logs no error.

hypercorn cancels such a connection's task then (a request never answered, a client taking no
bytes of a big answer), and Python 3.11's ``asyncio.StreamReaderProtocol`` asked the cancelled
task for its exception in a done callback: asyncio's ERROR "Exception in callback
StreamReaderProtocol.connection_made.<locals>.callback" and a ``CancelledError`` traceback at
every such stop of the mirror (``docxy.edge.connections._ended_by_the_stop``). Anything else a
connection raises in the stop is still asyncio's to log, and a cancellation that is not the
stop's still cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from docxy.access.peer import PeerCertTCPServer
from docxy.edge.connections import ConnectionGuard, EdgeTCPServer
from tests.unit.test_edge_close import edge_server, lifespan  # noqa: F401 - the fixture, shared

GUARD = 30.0  # seconds before a would-be hang becomes a test failure
GRACE = 1.0  # hypercorn's graceful_timeout here (the mirror's is 10 s)
#: How far past GRACE the stop may end: the edge's drop and hypercorn's cancel are both at it.
SLACK = 2.0
CHUNK = b"z" * (1 << 20)
#: The body of ``/big``: far more than the socket buffers hold (a body that never ended kept
#: its task sending for good after the stop cancelled it: hypercorn's close takes the
#: cancellation that reaches it there, ``TCPServer._close``)
CHUNKS = 256


async def answers(scope: Any, receive: Any, send: Any) -> None:
    """``/hang``: never answered; ``/big``: :data:`CHUNKS` MiB; anything else: a few bytes."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/hang":
        await asyncio.Event().wait()
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"y" * 40})


@dataclass
class Served:
    port: int
    guard: ConnectionGuard
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def stopped(self) -> float:
        """Stop as the mirror's SIGTERM does (``docxy.http.server.run``'s ``stopping``): the
        seconds until hypercorn's serve ended (returned or raised: :attr:`task`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stop.set()
        self.guard.stop(GRACE)
        done, _ = await asyncio.wait({self.task}, timeout=GUARD)
        assert done, f"the stop did not end in {GUARD}s"
        return loop.time() - started


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Served]:
    """hypercorn serving :func:`answers` through the edge on a loopback port, with the
    mirror's send timeout (longer than the stop's wait: a client taking nothing is not cut by
    it before the stop)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = GRACE
    guard = ConnectionGuard(100, 60.0)
    config.edge = guard  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve(answers, config, shutdown_trigger=stop.wait)
    )
    try:
        yield Served(port, guard, stop, task)
    finally:
        stop.set()
        await asyncio.wait({task}, timeout=GUARD)
        task.cancel()


async def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    for _ in range(int(GUARD / 0.05)):  # until it listens
        if client.connect_ex(("127.0.0.1", port)) == 0:
            return client
        await asyncio.sleep(0.05)
    client.close()
    raise AssertionError(f"nothing listens on {port}")


async def until(done: Any, what: str) -> None:
    for _ in range(int(GUARD / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {GUARD}s: {what}")


def held(guard: ConnectionGuard) -> int:
    """Bytes the served connection holds that its client has not taken."""
    return sum(s.writer.transport.get_write_buffer_size() for s in guard.serving)


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("client", ["unanswered", "taking no bytes"])
@pytest.mark.usefixtures("edge_server")
async def test_a_stop_ending_a_connection_left_logs_no_error(
    caplog: pytest.LogCaptureFixture, client: str
) -> None:
    """Before: on 3.11 each case logged asyncio's ERROR "Exception in callback
    StreamReaderProtocol.connection_made.<locals>.callback(<Task cancelled ...>)" with the
    ``CancelledError`` traceback from hypercorn's ``_read_data``, 1 s into the stop."""
    caplog.set_level(logging.DEBUG)
    async with serving() as served:
        with await connect(served.port, rcvbuf=4096) as sock:
            if client == "unanswered":
                sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
                await until(lambda: served.guard.serving, "the connection served")
                await asyncio.sleep(0.2)  # its request running
            else:
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                await until(lambda: held(served.guard) > 0, "bytes the client does not take")
            assert served.guard.open == 1
            took = await served.stopped()
        assert took < GRACE + SLACK, took
        assert served.task.exception() is None
        assert served.guard.open == 0 and not served.guard.serving
        assert any("still open after" in r.getMessage() for r in caplog.records), caplog.text
        assert errors(caplog) == [], caplog.text


@pytest.mark.usefixtures("edge_server")
async def test_another_exception_in_the_stop_is_still_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the stop's own cancellation is taken back: a connection that raises when the stop
    cancels it is logged by asyncio as before (and hypercorn's serve raises it too: its wait
    for the connections at ``graceful_timeout`` passes on what a connection raised)."""
    caplog.set_level(logging.DEBUG)

    async def failing(self: PeerCertTCPServer) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("broke while cancelled") from None

    monkeypatch.setattr(PeerCertTCPServer, "run", failing)
    async with serving() as served:
        with await connect(served.port):
            await until(lambda: served.guard.serving, "the connection served")
            took = await served.stopped()
            await asyncio.sleep(0.1)  # the task's done callbacks
        assert took < GRACE + SLACK, took
        assert isinstance(served.task.exception(), RuntimeError)
        assert served.guard.open == 0
    logged = [r for r in errors(caplog) if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(logged) == 1, caplog.text
    assert logged[0].levelno == logging.ERROR


@pytest.mark.parametrize("when", ["before a stop", "a second time in a stop"])
@pytest.mark.usefixtures("edge_server")
async def test_a_cancellation_that_is_not_the_stops_still_cancels(
    monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A connection's task cancelled outside a stop, or cancelled again in one (by something
    besides hypercorn's cancel at ``graceful_timeout``), ends cancelled."""
    tasks: list[asyncio.Task[Any]] = []
    run = EdgeTCPServer.run

    async def tracked(self: EdgeTCPServer) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await run(self)

    monkeypatch.setattr(EdgeTCPServer, "run", tracked)
    async with serving() as served:
        with await connect(served.port) as sock:
            sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: served.guard.serving, "the connection served")
            (task,) = tasks
            if when == "a second time in a stop":
                served.guard.stopping = True  # as guard.stop() sets it
                task.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), GUARD)
            assert task.cancelled()
            assert served.guard.open == 0
