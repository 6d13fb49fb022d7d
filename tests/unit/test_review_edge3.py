"""Review findings on the client-facing edge (third round), each reproduced before its mend:
the mirror's app behind hypercorn and the edge (test_review_edge2's mirror, test_review_h2c's
HTTP/2 client), on this review's own loopback addresses and ports, against a loopback
upstream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from h2.connection import ConnectionState
from hypercorn.config import Config as HypercornConfig

from lab.mirror import mirror_env
from lab.ports import listening
from lab.processes import stop_process
from tests.unit import test_review_edge2, test_review_h2c
from tests.unit.test_review_edge2 import mirror
from tests.unit.test_review_h2c import BLOB, H2Client
from tests.unit.test_review_h2c import h2c_allowed as h2c_allowed  # noqa: F401  (fixture)
from tests.unit.test_review_http2 import edge_installed as edge_installed  # noqa: F401  (fixture)

MIRROR_HOST = "127.0.0.198"
UPSTREAM_HOST = "127.0.0.199"
PORTS = range(9400, 9450)


def port_in_range(host: str) -> int:
    """A port of this review's range that binds on ``host`` now."""
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS} on {host}")


@pytest.fixture
def own_range(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """test_review_edge2's mirror and test_review_h2c's client on this review's addresses and
    ports."""
    monkeypatch.setattr(test_review_edge2, "MIRROR_HOST", MIRROR_HOST)
    monkeypatch.setattr(test_review_edge2, "UPSTREAM_HOST", UPSTREAM_HOST)
    monkeypatch.setattr(test_review_edge2, "free_port", port_in_range)
    monkeypatch.setattr(test_review_h2c, "MIRROR_HOST", MIRROR_HOST)
    yield


# --- 1. HTTP/2 rapid reset: streams reset at once never counted against h2_max_streams -------


@dataclass
class Running:
    """How many requests the app runs at once (its ASGI entry wrapped), and the most so far."""

    now: int = 0
    most: int = 0

    def wrap(self, app: Any) -> None:
        inner = app.asgi_app

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await inner(scope, receive, send)
            finally:
                self.now -= 1

        app.asgi_app = counted


async def test_h2c_streams_reset_at_once_cannot_run_more_requests_than_h2_max_streams(
    tmp_path: Path, h2c_allowed: None, own_range: None, caplog: pytest.LogCaptureFixture
) -> None:
    """ "Rapid reset" (CVE-2023-44487): a client opens a stream and resets it at once, over and
    over, on one h2c connection. A reset frees its place under ``limits.h2_max_streams`` (4
    here) at once, but the request it started runs on in the mirror until it notices. Measured
    on a real mirror before the mend: 1100 such pairs in under 2 s from one client (hypercorn
    closes a connection after 1000 requests; the client opens another) left the mirror unable
    to answer ``/v2/`` for 11 s; 3000 took its upstream pool (200 connections, 729 requests
    answered 503) and ended in an ERROR traceback (hypercorn's priority tree refusing a 1001st
    stream). Here 40 pairs in one write start 40 requests at once. A stream is now counted
    until its request has ended: one over the count is refused (``REFUSED_STREAM``, which a
    client may retry), and a client refused again and again gets ``GOAWAY``
    (``ENHANCE_YOUR_CALM``)."""
    caplog.set_level(logging.INFO, logger="docxy.edge.h2c")
    async with mirror(tmp_path, {"limits.h2_max_streams": "4"}, h2_streams=4) as served:
        running = Running()
        running.wrap(served.app)
        client = await H2Client.connect(served.port)
        try:
            await client.read(0.2)
            for batch in range(4):  # 40 each: 4 run, 36 refused; past MAX_REFUSED: GOAWAY
                if client.conn.state_machine.state == ConnectionState.CLOSED:
                    break
                for number in range(40):
                    stream_id = client.conn.get_next_available_stream_id()
                    path = f"/v2/library/img/manifests/t{batch}-{number}"
                    headers = [(":method", "GET"), (":path", path), (":scheme", "http")]
                    headers.append((":authority", "mirror.test"))
                    client.conn.send_headers(stream_id, headers, end_stream=True)
                    client.conn.reset_stream(stream_id)
                with contextlib.suppress(OSError):
                    await client.flush()
                with contextlib.suppress(OSError):
                    await client.read(0.5)
            assert batch == 3 and client.conn.state_machine.state == ConnectionState.CLOSED
            said = [r.getMessage() for r in caplog.records if "streams refused" in r.getMessage()]
            assert len(said) == 1
            assert running.most > 0, "no request ran: nothing was shown"
            assert running.most <= 4, f"{running.most} requests at once on one connection"
        finally:
            client.close()
        # a client that asks without resetting is still served
        again = await H2Client.connect(served.port)
        try:
            await again.get("/v2/")
            await again.read(1.0)
            assert again.status == 200
        finally:
            again.close()


# --- 2. an h2c connection whose streams its client reset is never closed when idle ------------


async def test_an_h2c_connection_left_idle_by_a_reset_stream_is_closed_at_the_idle_timeout(
    tmp_path: Path, h2c_allowed: None, own_range: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client asks a blob over h2c, resets the stream and then says nothing more. hypercorn
    stops the connection's idle timer when a stream starts and restarts it only when a stream
    it still knows ends; a stream the client reset it has forgotten already, so the timer never
    ran again: the connection (and its place under ``limits.max_connections`` and
    ``limits.connections_per_client``) was held for as long as the client liked (a real
    mirror, ``limits.idle_timeout`` 2 s: still open after 12 s). It is closed at the idle
    timeout (1 s here) once the reset stream's request has ended."""
    monkeypatch.setattr(HypercornConfig, "keep_alive_timeout", 1.0)
    async with mirror(tmp_path, {"limits.h2_max_streams": "4"}, h2_streams=4) as served:
        client = await H2Client.connect(served.port)
        try:
            stream_id = await client.get(BLOB)
            await client.read(0.5)
            assert client.status == 200  # the download had begun
            client.conn.reset_stream(stream_id)
            await client.flush()
            started = time.monotonic()
            await client.read(6.0)  # returns when the server closes
            assert time.monotonic() - started < 4.0, "the idle connection was kept open"
            assert served.guard.open == 0
        finally:
            client.close()


# --- 3. idle connections at the connection cap lock every other client out -------------------


async def get_v2(port: int, kept: list[asyncio.StreamWriter]) -> bytes:
    """A fresh client's ``GET /v2/``: the status line it gets (empty if closed first); its
    connection is left open, in ``kept``."""
    reader, writer = await asyncio.open_connection(MIRROR_HOST, port)
    kept.append(writer)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n\r\n")
    return await asyncio.wait_for(reader.readline(), 5.0)


async def test_connections_that_never_send_cannot_hold_every_place_under_the_cap(
    tmp_path: Path, own_range: None, edge_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: a client opens connections and sends nothing (or only part of a request
    head), renewing each before ``limits.idle_timeout``. At ``limits.max_connections`` (20 in
    this mirror; 1000 by default, which 8 IPv4 addresses at ``connections_per_client`` 128 fill)
    every other client got ``503 too many open connections`` for as long as that lasted. A new
    connection at the cap now closes the connection idle the longest (no request in progress:
    none sent yet, or between two), and is served; a connection with a request in progress is
    never closed so."""
    monkeypatch.setattr(HypercornConfig, "keep_alive_timeout", 30.0)
    async with mirror(tmp_path, {}, send_timeout=30.0) as served:
        await asyncio.sleep(0.3)  # the helper's own probe connection released
        busy = socket.create_connection((MIRROR_HOST, served.port))
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        busy.sendall(test_review_edge2.blob_request(test_review_edge2.DIGEST))  # in progress
        idle = [socket.create_connection((MIRROR_HOST, served.port)) for _ in range(19)]
        kept: list[asyncio.StreamWriter] = []
        try:
            for _ in range(100):
                if served.guard.open == 20:
                    break
                await asyncio.sleep(0.05)
            busy.setblocking(False)
            assert (served.guard.open, served.guard.refused) == (20, 0)
            for _ in range(3):
                line = await get_v2(served.port, kept)
                assert line.startswith(b"HTTP/1.1 200"), line
            await asyncio.sleep(0.2)
            closed = 0
            for sock in idle:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    closed += sock.recv(1) == b""
            assert closed == 3  # the three idle the longest, one per newcomer (kept open)
            busy.setblocking(False)
            assert busy.recv(4096)  # the download goes on
        finally:
            busy.close()
            for sock in idle:
                sock.close()
            for writer in kept:
                writer.transport.abort()


async def test_requests_whose_body_never_ends_cannot_hold_every_place_under_the_cap(
    tmp_path: Path, own_range: None, edge_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, one step on: each connection sends a whole head (``POST /auth/token``, the one
    route that reads a body) and a body that never ends. Not idle (a request in progress), so
    none was closed to make room, and each held its place for Quart's body timeout (30 s),
    renewed at once. Such a request, its body unfinished and no answer started, is closed to
    make room as an idle connection is (the oldest first); the download, whose answer has
    started, is not."""
    monkeypatch.setattr(HypercornConfig, "keep_alive_timeout", 30.0)
    post = (
        b"POST /auth/token HTTP/1.1\r\nHost: mirror.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nab"
    )
    async with mirror(tmp_path, {}, send_timeout=30.0) as served:
        await asyncio.sleep(0.3)  # the helper's own probe connection released
        busy = socket.create_connection((MIRROR_HOST, served.port))
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        busy.sendall(test_review_edge2.blob_request(test_review_edge2.DIGEST))
        slow: list[socket.socket] = []
        kept: list[asyncio.StreamWriter] = []
        try:
            for _ in range(19):
                slow.append(socket.create_connection((MIRROR_HOST, served.port)))
                slow[-1].sendall(post)
            for _ in range(100):
                if served.guard.open == 20:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # every head read
            assert (served.guard.open, served.guard.refused) == (20, 0)
            for _ in range(3):
                line = await get_v2(served.port, kept)
                assert line.startswith(b"HTTP/1.1 200"), line
            await asyncio.sleep(0.2)
            closed = 0
            for sock in slow:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
                except BlockingIOError:
                    pass
            assert (closed, served.guard.evicted) == (3, 3)  # one per newcomer
            busy.setblocking(False)
            assert busy.recv(4096)  # the download goes on
        finally:
            busy.close()
            for sock in slow:
                sock.close()
            for writer in kept:
                writer.transport.abort()


async def test_a_tls_connection_in_its_handshake_is_closed_to_make_room_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A real mirror (``python -m docxy serve``, its own bootstrap certificate, a cap of 20):
    20 connections to its TLS listener that never send a ClientHello hold every place; a
    client that does TLS is served, one of them closed to make room. Closed by aborting its
    socket under asyncio's ``start_tls``, the connection's task ended in an ``AttributeError``
    traceback in the log (``'NoneType' object has no attribute 'get_extra_info'``); its
    handshake is now cancelled as a stop's is."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            await writer.drain()
        writer.close()

    up_port = port_in_range(UPSTREAM_HOST)
    server = await asyncio.start_server(upstream, UPSTREAM_HOST, up_port)
    plain, tls = port_in_range(MIRROR_HOST), 0
    with socket.socket() as hold:  # the TLS port: another than the plain one
        hold.bind((MIRROR_HOST, plain))
        tls = port_in_range(MIRROR_HOST)
    log_path = tmp_path / "mirror.log"
    command = [
        sys.executable,
        *("-m", "docxy", "serve", "--listen", f"{MIRROR_HOST}:{plain}"),
        *(
            "--tls-listen",
            f"{MIRROR_HOST}:{tls}",
            "--upstream",
            f"http://{UPSTREAM_HOST}:{up_port}",
        ),
        *("--no-cache", "--public-url", f"https://{MIRROR_HOST}:{tls}"),
        *("--set", "limits.max_connections=20"),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=mirror_env(tmp_path, None)
        )
    held: list[socket.socket] = []
    try:
        await listening(MIRROR_HOST, tls, timeout=15.0)
        await asyncio.sleep(0.3)
        held = [socket.create_connection((MIRROR_HOST, tls)) for _ in range(20)]
        await asyncio.sleep(0.5)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(MIRROR_HOST, tls, ssl=context)
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 5.0)
        writer.transport.abort()
        assert line.startswith(b"HTTP/1.1 200"), line
        await asyncio.sleep(0.5)
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
    finally:
        for sock in held:
            sock.close()
        stop_process(proc, grace=15)
        server.close()
        await server.wait_closed()
