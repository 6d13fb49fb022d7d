"""A connection hypercorn closes with bytes its client never takes is dropped, not kept: its
slot under the caps comes back, and a stop does not wait on it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypercorn.protocol
import pytest
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio import serve
from hypercorn.config import Config

from docxy.edge import connections, h2c
from docxy.edge.connections import ConnectionGuard, EdgeTCPServer, drop_unsent_after
from docxy.tls.context import self_signed

GUARD = 30.0  # seconds before a would-be hang becomes a test failure


async def unread_connection() -> tuple[asyncio.StreamWriter, socket.socket, asyncio.Server]:
    """A server-side writer holding bytes its client, which reads nothing, never takes."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def served(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    server = await asyncio.start_server(served, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    client.connect(server.sockets[0].getsockname())
    writer = await asyncio.wait_for(accepted.get(), GUARD)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.write(b"x" * (1 << 20))  # far more than both kernels' buffers hold
    await asyncio.sleep(0.1)
    assert writer.transport.get_write_buffer_size() > 0
    return writer, client, server


@pytest.mark.parametrize("dropped", [True, False])
async def test_a_closing_transport_with_unsent_bytes_is_aborted_after_the_wait(
    dropped: bool,
) -> None:
    """asyncio's close() waits for the buffer to empty, and a client that reads nothing never
    lets it: without the drop the close never ends (the control case)."""
    writer, client, server = await unread_connection()
    try:
        writer.close()
        if dropped:
            drop_unsent_after(writer.transport, 0.2)
            await asyncio.wait_for(writer.wait_closed(), GUARD)
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer.wait_closed()), 1.0)
            writer.transport.abort()
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_tls_connection_closed_before_its_drop_is_looked_at_is_let_be(
    tmp_path: Path,
) -> None:
    """A client that hangs up right after the handshake (a TLS scanner, ``openssl s_client``):
    by the time hypercorn's close asks for the drop, the TLS transport has let its protocol go,
    and asking it whether it is TLS raised AttributeError (an asyncio traceback per such
    connection in the log). Nothing is left to drop."""
    cert, key = self_signed(tmp_path / "tls", "127.0.0.1")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    closed: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()  # to the client's hang-up
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await closed.put(writer)

    server = await asyncio.start_server(served, "127.0.0.1", 0, ssl=serving)
    try:
        client = ssl.create_default_context(cafile=str(cert))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.transport.abort()  # hangs up at once, no close_notify
        done = await asyncio.wait_for(closed.get(), GUARD)
        drop_unsent_after(done.transport, 0.1)  # raised AttributeError
        await asyncio.sleep(0.2)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def edge_server() -> Iterator[None]:
    before = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    connections.install()
    yield
    setattr(hypercorn_run, "TCPServer", before)  # noqa: B010


async def lifespan(receive: Any, send: Any) -> None:
    """An ASGI test app's lifespan: started at once, shut down when asked."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def small_answers(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app answering every request with a few bytes, but ``/hang``, never."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/hang":
        await asyncio.Event().wait()
    headers = [(b"content-length", b"40")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"y" * 40})


@dataclass
class Served:
    """An edge server of :func:`serving` : its port, guard and config, the event that stops
    it (as the mirror's SIGTERM does) and the task serving."""

    port: int
    config: Config
    guard: ConnectionGuard
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def serving(**settings: float) -> AsyncIterator[Served]:
    """hypercorn serving :func:`small_answers` on a loopback port through the edge (its
    ``settings`` on the config), stopped and awaited at the end (cancelled past GUARD)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    for name, value in settings.items():
        setattr(config, name, value)
    guard = ConnectionGuard(100, 1.0)
    config.edge = guard  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve(small_answers, config, shutdown_trigger=stop.wait)
    )
    try:
        yield Served(port, config, guard, stop, task)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), GUARD)
        finally:
            task.cancel()


async def test_an_idle_connection_holding_unsent_bytes_gives_its_slot_back(
    edge_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client pipelines requests and reads none of the answers, then falls silent with less
    than the stall check's 64 KiB held for it: the idle close drops it, and the stop ends."""
    live: list[EdgeTCPServer] = []
    run = EdgeTCPServer.run

    async def tracked(self: EdgeTCPServer) -> None:
        live.append(self)  # a peer whose window stays shut: its kernel holds only a few KB
        self.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await run(self)

    monkeypatch.setattr(EdgeTCPServer, "run", tracked)
    async with serving(keep_alive_timeout=1.0, graceful_timeout=10.0) as served:
        port, guard = served.port, served.guard
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            for _ in range(int(GUARD / 0.05)):  # until it listens
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
                await asyncio.sleep(0.05)
            client.setblocking(False)
            for _ in range(int(GUARD / 0.002)):
                if live and live[-1].writer.transport.get_write_buffer_size():
                    break
                client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.002)
            held = live[-1].writer.transport.get_write_buffer_size()
            assert 0 < held < 64 * 1024 and guard.open == 1
            for _ in range(int(GUARD / 0.1)):  # idle close after 1 s, then the drop after 1 s
                if guard.open == 0:
                    break
                await asyncio.sleep(0.1)
            assert guard.open == 0 and not guard.by_client
            served.stop.set()
            await asyncio.wait_for(asyncio.shield(served.task), GUARD)


@pytest.fixture
def h2c_allowed() -> Iterator[None]:
    before = getattr(hypercorn.protocol, "H2Protocol")  # noqa: B009 - not exported
    h2c.install(refuse=False)  # limits.h2_max_streams > 0
    yield
    setattr(hypercorn.protocol, "H2Protocol", before)  # noqa: B010


#: The HTTP/2 client preface and an empty SETTINGS frame: h2c by prior knowledge, no request.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "sent",
    [H2_PREFACE, b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["h2c-preface", "unanswered"],
)
async def test_a_stop_drops_the_connections_still_open_at_its_graceful_timeout(
    edge_server: None, h2c_allowed: None, sent: bytes
) -> None:
    """An h2c connection that sent its preface and no request: hypercorn switched it from
    HTTP/1.1 with its idle timer stopped, and a stop never closes it. On Python 3.12 and later
    hypercorn's stop waits in ``asyncio.Server.wait_closed`` until every connection has closed,
    before its own ``graceful_timeout`` is looked at: the stop never ended (the mirror on 3.13:
    still running 40 s after SIGTERM). The edge drops what is left at the deadline, as the
    mirror's stop asks it to (``docxy.http.server``); on 3.11 hypercorn cancelled it then.
    Since 01dfba5 such an h2c connection is idle, and closed by the stop itself; a request
    never answered (the mirror's drain cuts its own at 9 s) still needs the drop on 3.12+."""
    async with serving(graceful_timeout=1.0) as served:
        guard = served.guard
        with socket.socket() as client:
            for _ in range(int(GUARD / 0.05)):  # until it listens
                if client.connect_ex(("127.0.0.1", served.port)) == 0:
                    break
                await asyncio.sleep(0.05)
            client.sendall(sent)
            for _ in range(int(GUARD / 0.05)):
                if guard.serving:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # its SETTINGS read (HTTP/2 now), or its request
            assert guard.open == 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            served.stop.set()  # what the mirror's SIGTERM does (docxy.http.server.run's stopping)
            guard.stop(served.config.graceful_timeout)
            await asyncio.wait_for(asyncio.shield(served.task), GUARD)
            assert loop.time() - started < served.config.graceful_timeout + 2.0
            assert guard.open == 0 and not guard.serving


async def test_an_h2c_connection_that_sends_only_the_preface_is_closed_when_idle(
    edge_server: None, h2c_allowed: None
) -> None:
    """``limits.idle_timeout`` (hypercorn's ``keep_alive_timeout``) closes a connection that
    sends nothing; one that sent the HTTP/2 preface and then nothing stayed open for good (the
    mirror with idle_timeout 2 s: still open 8 s on), holding its place under the caps."""
    async with serving(keep_alive_timeout=0.5) as served:
        writer: asyncio.StreamWriter | None = None
        try:
            for _ in range(int(GUARD / 0.05)):  # until it listens
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            assert writer is not None
            writer.write(H2_PREFACE)
            answer = await asyncio.wait_for(reader.read(), 5.0)  # to the mirror's close
            assert answer.startswith(b"\x00")  # its SETTINGS: it took the connection as HTTP/2
            for _ in range(int(GUARD / 0.05)):
                if served.guard.open == 0:
                    break
                await asyncio.sleep(0.05)
            assert served.guard.open == 0
        finally:
            if writer is not None:
                writer.close()
