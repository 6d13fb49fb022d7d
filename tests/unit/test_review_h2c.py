"""Review findings on h2c (``limits.h2_max_streams`` > 0) and the edge's slow-client guards:
a real mirror app (cache off, a pass-through under ``limits.fills_total`` 1) behind hypercorn,
the edge's guard and ``docxy.edge.h2c``, a loopback upstream, and a real HTTP/2 client (the
``h2`` library over a socket) that controls its flow-control window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hypercorn.asyncio.run as hypercorn_run
import hypercorn.protocol
import pytest

from docxy.edge import connections, h2c
from docxy.http.state import mirror_state
from tests.unit.test_review_edge2 import (
    MIRROR_HOST,
    OTHER,
    Mirror,
    held,
    mirror,
    status_of,
)

DIGEST = "sha256:" + "ef" * 32


@pytest.fixture
def h2c_allowed() -> Iterator[None]:
    """The edge's TCP server and h2c allowed, as ``run()`` installs them for
    ``limits.h2_max_streams`` > 0."""
    server = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    protocol = hypercorn.protocol.H2Protocol  # type: ignore[attr-defined]
    connections.install()
    h2c.install(refuse=False)
    yield
    setattr(hypercorn_run, "TCPServer", server)  # noqa: B010
    setattr(hypercorn.protocol, "H2Protocol", protocol)  # noqa: B010


def h2_mirror(
    tmp_path: Path, send_timeout: float = 1.0, min_send_rate: float = 0.0
) -> contextlib.AbstractAsyncContextManager[Mirror]:
    """test_review_edge2's mirror, one pass-through at a time, h2c allowed (4 streams)."""
    h2 = {"limits.fills_total": "1", "limits.h2_max_streams": "4"}
    return mirror(tmp_path, h2, send_timeout, min_send_rate, h2_streams=4)


@dataclass
class H2Client:
    """An HTTP/2 client (prior knowledge) that reads every byte the socket brings but opens
    its flow-control windows only when told (:meth:`open_window`)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection = field(
        default_factory=lambda: h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True)
        )
    )
    status: int | None = None
    received: int = 0
    reset: h2.events.StreamReset | None = None
    ended: bool = False

    @classmethod
    async def connect(cls, port: int) -> H2Client:
        reader, writer = await asyncio.open_connection(MIRROR_HOST, port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def get(self, path: str) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "http"),
            (":authority", "mirror.test"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        await self.flush()
        return stream_id

    async def read(self, seconds: float) -> None:
        """Take what the server sends for ``seconds`` (SETTINGS acknowledged, no window
        opened)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.received += event.flow_controlled_length
                elif isinstance(event, h2.events.StreamReset):
                    self.reset = event
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended = True
            await self.flush()

    async def open_window(self, stream_id: int, size: int) -> None:
        """Let the server send ``size`` more bytes on the stream (and the connection)."""
        self.conn.increment_flow_control_window(size, stream_id=stream_id)
        self.conn.increment_flow_control_window(size)
        await self.flush()

    def close(self) -> None:
        self.writer.transport.abort()


BLOB = f"/v2/library/img/blobs/{DIGEST}"


async def test_an_h2c_stream_whose_window_stays_shut_is_reset_and_frees_its_permit(
    tmp_path: Path, h2c_allowed: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that asks a blob over h2c, reads every byte its socket brings, and never sends
    a WINDOW_UPDATE: the server sends the initial 64 KiB window and waits. Nothing is left
    unsent on the socket, so the edge's stall check (``limits.send_timeout``) never looked,
    the idle timer does not run while a stream is open, and the stream held the only
    pass-through permit (``limits.fills_total`` 1) for good: every other pass-through 429.
    A stream whose window stays shut for ``limits.send_timeout`` is reset (RST_STREAM) and
    its permit comes back; the connection stays."""
    caplog.set_level(logging.INFO, logger="docxy.edge")
    async with h2_mirror(tmp_path) as served:
        permits = mirror_state(served.app).running.blobs.permits
        client = await H2Client.connect(served.port)
        try:
            stream_id = await client.get(BLOB)
            await held(permits)
            assert sum(permits.running.values()) == 1
            assert await status_of(served.port, OTHER) == 429  # the cap holds meanwhile
            deadline = time.monotonic() + 8.0
            while permits.running and time.monotonic() < deadline:
                await client.read(0.1)
            assert client.status == 200
            assert client.received == 65535  # the initial window, no more
            assert not permits.running, "the stream whose window stays shut holds its permit"
            await client.read(0.3)
            assert client.reset is not None and client.reset.stream_id == stream_id
            assert await status_of(served.port, OTHER) == 200
            assert served.guard.refusals()["limits.send_timeout"] == 1
            said = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
            assert len(said) == 1 and "stream" in said[0]
            client.status = None
            await client.get(BLOB)  # the connection still serves (the permit may be taken
            await client.read(1.0)  # again by the request just above, not yet seen gone)
            assert client.status in (200, 429)
        finally:
            client.close()


async def test_an_h2c_stream_whose_window_is_shut_holds_its_body_back(
    tmp_path: Path, h2c_allowed: None
) -> None:
    """hypercorn's send task, finding a stream's window shut, takes nothing from its buffer and
    still wakes the app's pending write; so every chunk the app writes is let through into
    the buffer: the whole blob (64 MiB here, from a fast upstream) went into memory for a
    client that had taken 64 KiB, and the pass-through was over (its permit freed, its
    upstream body read) at once. The app's writes wait while the window is shut, as they
    wait for a socket that takes nothing over HTTP/1.1: a second on, the relay still holds
    its permit, the body not read whole."""
    async with h2_mirror(tmp_path, send_timeout=5.0) as served:
        permits = mirror_state(served.app).running.blobs.permits
        client = await H2Client.connect(served.port)
        try:
            await client.get(BLOB)
            await held(permits)
            await client.read(1.0)
            assert client.status == 200 and client.received == 65535
            assert sum(permits.running.values()) == 1, "the whole body was taken in"
            await client.open_window(1, 1 << 20)  # the window opens: the body goes on
            await client.read(0.5)
            assert client.received > 1 << 20
        finally:
            client.close()


@pytest.mark.parametrize("min_rate", [64_000.0, 0.0])
async def test_an_h2c_stream_whose_window_opens_a_trickle_is_judged_by_send_min_rate(
    tmp_path: Path, h2c_allowed: None, min_rate: float
) -> None:
    """A client that opens its window by 2 KB every 0.1 s (20 KB/s) never leaves it shut for
    ``limits.send_timeout``; below ``limits.send_min_rate`` over a ``send_timeout`` of
    waiting it is reset, as a trickling HTTP/1.1 reader is cut, and its permit comes back
    (0: off, the control case: the trickle holds it)."""
    async with h2_mirror(tmp_path, min_send_rate=min_rate) as served:
        permits = mirror_state(served.app).running.blobs.permits
        client = await H2Client.connect(served.port)
        try:
            stream_id = await client.get(BLOB)
            await held(permits)
            for _ in range(40):
                if client.reset is not None:
                    break
                await client.open_window(stream_id, 2000)
                await client.read(0.1)
            assert client.received > 65535 + 10_000  # it did keep opening it
            if not min_rate:
                assert client.reset is None
                assert sum(permits.running.values()) == 1  # held all along
                return
            assert client.reset is not None and client.reset.stream_id == stream_id
            await client.read(0.3)
            assert not permits.running
            assert served.guard.refusals()["limits.send_min_rate"] == 1
            assert served.guard.refusals()["limits.send_timeout"] == 0
        finally:
            client.close()


async def test_tiny_window_updates_do_not_let_the_app_run_ahead(
    tmp_path: Path, h2c_allowed: None
) -> None:
    """hypercorn wakes the app's pending write whenever it sends less than 16 KiB from a
    stream's buffer, however much the buffer still holds: a client opening its window one
    byte at a time let the app write a 64 KiB chunk per byte, 64 MiB for 1100 bytes taken
    (its relay over, the permit freed). The app's write waits until the buffer is nearly
    sent."""
    async with h2_mirror(tmp_path, send_timeout=30.0) as served:
        permits = mirror_state(served.app).running.blobs.permits
        client = await H2Client.connect(served.port)
        try:
            stream_id = await client.get(BLOB)
            await held(permits)
            await client.read(0.3)
            for _ in range(1100):
                await client.open_window(stream_id, 1)
                await client.read(0.002)
            await client.read(0.3)
            assert client.received == 65535 + 1100
            assert sum(permits.running.values()) == 1, "the whole body was taken in"
        finally:
            client.close()
