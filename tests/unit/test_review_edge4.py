"""Review findings on the client-facing edge (fourth round), each reproduced before its mend: a
real mirror (``python -m docxy serve``) or the mirror's app behind hypercorn and the edge
(test_review_edge2's mirror), on this review's own loopback addresses and ports, against a
loopback upstream."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.mirror import mirror_env
from lab.ports import listening
from lab.processes import stop_process
from tests.unit import test_review_edge2, test_review_edge3
from tests.unit.test_review_edge2 import mirror
from tests.unit.test_review_http2 import edge_installed as edge_installed  # noqa: F401  (fixture)

MIRROR_HOST = "127.0.0.242"
UPSTREAM_HOST = "127.0.0.243"
PORTS = range(9950, 10000)


@pytest.fixture
def own_range(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """test_review_edge3's port picker and test_review_edge2's mirror on this review's addresses
    and ports."""
    monkeypatch.setattr(test_review_edge3, "PORTS", PORTS)
    monkeypatch.setattr(test_review_edge3, "MIRROR_HOST", MIRROR_HOST)
    monkeypatch.setattr(test_review_edge2, "MIRROR_HOST", MIRROR_HOST)
    monkeypatch.setattr(test_review_edge2, "UPSTREAM_HOST", UPSTREAM_HOST)
    monkeypatch.setattr(test_review_edge2, "free_port", test_review_edge3.port_in_range)
    yield


def port_in_range(host: str, *taken: int) -> int:
    """A port of this review's range that binds on ``host`` now, none of ``taken``."""
    assert test_review_edge3.PORTS is PORTS, "the own_range fixture first"
    held: list[socket.socket] = []
    try:
        for port in taken:  # held while another is picked, so it is not picked again
            sock = socket.socket()
            sock.bind((host, port))
            held.append(sock)
        return test_review_edge3.port_in_range(host)
    finally:
        for sock in held:
            sock.close()


@dataclass
class Served:
    plain: int
    tls: int
    admin: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A loopback upstream answering every request ``200 {}``."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def real_mirror(tmp_path: Path, *settings: str) -> AsyncIterator[Served]:
    """``python -m docxy serve`` with a plain, a TLS (its own bootstrap certificate) and an
    admin listener on this review's address, its upstream a loopback one; ``settings``: more
    ``--set`` ones."""
    up_port = port_in_range(UPSTREAM_HOST)
    server = await asyncio.start_server(_upstream, UPSTREAM_HOST, up_port)
    plain = port_in_range(MIRROR_HOST)
    tls = port_in_range(MIRROR_HOST, plain)
    admin = port_in_range(MIRROR_HOST, plain, tls)
    log_path = tmp_path / "mirror.log"
    command = [
        sys.executable,
        *("-m", "docxy", "serve", "--listen", f"{MIRROR_HOST}:{plain}"),
        *("--tls-listen", f"{MIRROR_HOST}:{tls}"),
        *("--upstream", f"http://{UPSTREAM_HOST}:{up_port}"),
        *("--no-cache", "--public-url", f"https://{MIRROR_HOST}:{tls}"),
        *("--set", f"server.admin_listen={MIRROR_HOST}:{admin}"),
    ]
    for setting in settings:
        command += ["--set", setting]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=mirror_env(tmp_path, None)
        )
    try:
        await listening(MIRROR_HOST, tls, timeout=15.0)
        await listening(MIRROR_HOST, admin, timeout=5.0)
        await asyncio.sleep(0.3)  # the probe connections released
        yield Served(plain, tls, admin, log_path)
    finally:
        stop_process(proc, grace=15)
        server.close()
        await server.wait_closed()


def trusting_anything() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- 1. a TLS client gets idle_timeout for its handshake, then another for its request head ---


async def test_a_tls_client_has_one_idle_timeout_for_its_handshake_and_request_head(
    tmp_path: Path, own_range: None
) -> None:
    """A real mirror, ``limits.idle_timeout`` 2 s. A plain client that sends nothing is closed
    2 s after it connected. A TLS client took up to ``idle_timeout`` for its handshake (the
    edge's own, bounded by it) and, once done, was given the whole of it again for its request
    head (hypercorn's idle timer starts after the handshake): one that sent its ClientHello
    1.5 s in and then nothing was closed 3.5 s after it connected, and a slowloris client on
    the TLS listener held its place twice as long as on the plain one (60 s by default). The
    handshake and the head now share one deadline from the connection's start."""
    async with real_mirror(tmp_path, "limits.idle_timeout=2") as served:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(MIRROR_HOST, served.tls)
        try:
            await asyncio.sleep(1.5)
            await writer.start_tls(trusting_anything())
            handshaken = time.monotonic() - started
            assert handshaken < 1.9, f"the handshake itself took until {handshaken:.1f}s"
            with contextlib.suppress(OSError):
                assert await asyncio.wait_for(reader.read(), 8.0) == b""
            closed = time.monotonic() - started
        finally:
            writer.transport.abort()
        assert 1.8 < closed < 2.8, f"closed {closed:.1f}s after connecting (idle_timeout 2s)"
        # a request in time is served, and the connection then kept for idle_timeout again
        reader, writer = await asyncio.open_connection(
            MIRROR_HOST, served.tls, ssl=trusting_anything()
        )
        try:
            for _ in range(2):
                await asyncio.sleep(1.2)  # 2.4 s from the start at the second request
                writer.write(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n\r\n")
                line = await asyncio.wait_for(reader.readline(), 5.0)
                assert line.startswith(b"HTTP/1.1 200"), line
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                await asyncio.wait_for(reader.readexactly(2), 5.0)
        finally:
            writer.transport.abort()
        assert "Traceback" not in served.log_text()


# --- 2. connections evicted at the cap are counted but not exported ---------------------------


async def test_connections_closed_to_make_room_at_the_cap_are_exported_in_metrics(
    tmp_path: Path, own_range: None
) -> None:
    """A real mirror, ``limits.max_connections`` 3: three connections that send nothing hold
    every place; a fourth client is served, one of them closed to make room. The edge counted
    it (``ConnectionGuard.evicted``) but /metrics said nothing of it: an operator could not
    tell that the cap was being reached, nor that idle clients were being cut, from a scrape
    (``docxy_refused_total{setting="limits.max_connections"}`` stays 0: nobody was refused).
    It is ``docxy_connections_evicted_total``."""
    async with real_mirror(tmp_path, "limits.max_connections=3") as served:
        held = [socket.create_connection((MIRROR_HOST, served.plain)) for _ in range(3)]
        kept: list[asyncio.StreamWriter] = []
        try:
            await asyncio.sleep(0.5)
            for _ in range(2):  # over TLS: the plain listener redirects there
                reader, writer = await asyncio.open_connection(
                    MIRROR_HOST, served.tls, ssl=trusting_anything()
                )
                kept.append(writer)
                writer.write(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n\r\n")
                line = await asyncio.wait_for(reader.readline(), 5.0)
                assert line.startswith(b"HTTP/1.1 200"), line
            reader, writer = await asyncio.open_connection(MIRROR_HOST, served.admin)
            try:
                writer.write(
                    f"GET /metrics HTTP/1.1\r\nHost: {MIRROR_HOST}:{served.admin}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                text = (await asyncio.wait_for(reader.read(), 10.0)).decode()
            finally:
                writer.transport.abort()
        finally:
            for sock in held:
                sock.close()
            for kept_writer in kept:
                kept_writer.transport.abort()
        assert text.startswith("HTTP/1.1 200"), text[:300]
        found = re.search(r"^docxy_connections_evicted_total (\S+)$", text, re.MULTILINE)
        assert found is not None, "no docxy_connections_evicted_total in /metrics"
        assert float(found.group(1)) == 2.0
        refused = r'^docxy_refused_total\{setting="limits.max_connections"\} (\S+)$'
        assert re.search(refused, text, re.MULTILINE).group(1) == "0.0"  # type: ignore[union-attr]


# --- 3. Quart's body timeout: a fixed 30 s, whatever limits.idle_timeout says -----------------


async def test_a_trickled_request_body_is_cut_at_the_idle_timeout(
    tmp_path: Path, own_range: None, edge_installed: None
) -> None:
    """``limits.idle_timeout`` 1 s: a client sends ``POST /auth/token`` (the one route that
    reads a body) with ``Content-Length: 1000`` and two bytes of it. Quart waits for a body for
    ``BODY_TIMEOUT``, which the app fixed at 30 s: a user who lowered ``idle_timeout`` to shed
    slow clients still had each such request (and its place under the caps) held for 30 s. The
    body is now given ``idle_timeout``, as a request head is; the client gets ``408``."""
    post = (
        b"POST /auth/token HTTP/1.1\r\nHost: mirror.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nab"
    )
    async with mirror(tmp_path, {"limits.idle_timeout": "1"}, send_timeout=30.0) as served:
        reader, writer = await asyncio.open_connection(MIRROR_HOST, served.port)
        try:
            started = time.monotonic()
            writer.write(post)
            line = await asyncio.wait_for(reader.readline(), 6.0)
            answered = time.monotonic() - started
        finally:
            writer.transport.abort()
        assert line.startswith(b"HTTP/1.1 408"), line
        assert 0.8 < answered < 2.5, f"answered {answered:.1f}s on (idle_timeout 1s)"


@pytest.mark.parametrize(("idle", "body"), [("1", 1.0), ("30", 30.0), ("300", 30.0)])
def test_a_request_body_gets_the_idle_timeout_but_never_more_than_30_s(
    idle: str, body: float
) -> None:
    """A lowered ``idle_timeout`` cuts a trickled body sooner (above); a raised one (300 s,
    for slow networks' idle keep-alive) gave a trickled ``POST /auth/token`` body that long
    too, where it had been cut at 30 s: at most 30 s, as before."""
    import httpx

    from docxy.config import load_config
    from docxy.http.app import create_app

    config = load_config(
        {"limits.idle_timeout": idle, "upstream.registry": "http://127.0.0.242:9999"}, environ={}
    )
    app = create_app(
        config, probe=False, transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    assert app.config["BODY_TIMEOUT"] == body
