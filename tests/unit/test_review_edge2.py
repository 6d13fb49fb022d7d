"""Review findings on the request path's edge, each reproduced before its mend: a real mirror
app behind hypercorn and the edge's connection guard, against a loopback upstream, with real
sockets for clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from docxy.config import load_config
from docxy.edge.connections import ConnectionGuard
from docxy.http.app import create_app
from docxy.http.middleware import Guard
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from docxy.upstream.routing import configured_upstreams
from lab.ports import free_port, listening
from tests.unit import fakes
from tests.unit.asgi import call_asgi
from tests.unit.test_review_http2 import edge_installed as edge_installed  # noqa: F401  (fixture)

MIRROR_HOST = "127.0.0.87"
UPSTREAM_HOST = "127.0.0.88"
GUARD = 20.0  # seconds before a would-be hang becomes a test failure
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
BLOB_SIZE = 64 << 20  # far more than any socket buffers hold
CHUNK = b"x" * 65536


@dataclass
class Upstream:
    """A registry without auth on loopback: ``/v2/`` is 200, any blob is ``BLOB_SIZE`` bytes,
    written as fast as the mirror takes them."""

    port: int = 0
    served: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.served.append(path)
            if "/blobs/" not in path:
                body = b"{}"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                + f"content-length: {BLOB_SIZE}\r\nconnection: close\r\n\r\n".encode()
            )
            for _ in range(BLOB_SIZE // len(CHUNK)):
                writer.write(CHUNK)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@dataclass
class Mirror:
    port: int
    guard: ConnectionGuard
    app: Any


@contextlib.asynccontextmanager
async def mirror(
    tmp_path: Path,
    overrides: dict[str, str],
    send_timeout: float = 1.0,
    min_send_rate: float = 0.0,
    h2_streams: int | None = None,
) -> AsyncIterator[Mirror]:
    """The mirror's app, cache off, behind hypercorn and the edge's guard, passing through to
    an :class:`Upstream` on loopback; ``h2_streams``: hypercorn's streams a connection (with
    ``limits.h2_max_streams`` in ``overrides`` and h2c installed)."""
    upstream = Upstream()
    upstream.port = free_port(UPSTREAM_HOST)
    server = await asyncio.start_server(upstream.handle, UPSTREAM_HOST, upstream.port)
    settings = {
        "upstream.registry": f"http://{UPSTREAM_HOST}:{upstream.port}",
        "cache.enabled": "false",
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
        **overrides,
    }
    app = create_app(load_config(settings, environ={}), probe=False)
    port = free_port(MIRROR_HOST)
    config = HypercornConfig()
    config.bind = [f"{MIRROR_HOST}:{port}"]
    config.accesslog = None
    config.read_timeout = None
    if h2_streams is not None:
        config.h2_max_concurrent_streams = h2_streams
    guard = ConnectionGuard(
        max_connections=20, send_timeout=send_timeout, min_send_rate=min_send_rate
    )
    setattr(config, "edge", guard)  # noqa: B010
    stop = asyncio.Event()
    task = spawn("test-mirror", serve(app, config, shutdown_trigger=stop.wait))
    try:
        await listening(MIRROR_HOST, port)
        yield Mirror(port, guard, app)
    finally:
        stop.set()
        await asyncio.wait_for(task, GUARD)
        server.close()
        await server.wait_closed()


def blob_request(digest: str) -> bytes:
    return f"GET /v2/library/img/blobs/{digest} HTTP/1.1\r\nHost: mirror.test\r\n\r\n".encode()


def slow_reader(port: int, digest: str) -> socket.socket:
    """A client that asks for a blob and reads nothing yet (a small receive window)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((MIRROR_HOST, port))
    client.sendall(blob_request(digest))
    client.setblocking(False)
    return client


async def held(permits: Any) -> None:
    """Until a download holds one of ``permits`` (5 s at most; the caller asserts it)."""
    for _ in range(100):
        if permits.running:
            return
        await asyncio.sleep(0.05)


async def status_of(port: int, digest: str) -> int:
    """The status a fresh client gets for ``digest`` (its body left unread; closed at once)."""
    reader, writer = await asyncio.open_connection(MIRROR_HOST, port)
    try:
        writer.write(blob_request(digest))
        line = await asyncio.wait_for(reader.readline(), GUARD)
        return int(line.split()[1])
    finally:
        writer.transport.abort()


# --- 1. a pass-through download holds its permit while its client dawdles ----------------------


async def test_a_client_that_takes_no_bytes_frees_its_pass_through_permit(
    tmp_path: Path, edge_installed: None
) -> None:
    """``limits.fills_total`` 1, cache off: a client that asks a blob and reads nothing holds the
    only permit; ``limits.send_timeout`` (1 s here) on, it is cut, and its permit comes back:
    another client is served, not answered 429."""
    async with mirror(tmp_path, {"limits.fills_total": "1"}) as served:
        permits = mirror_state(served.app).running.blobs.permits
        hog = slow_reader(served.port, DIGEST)
        try:
            await held(permits)
            assert sum(permits.running.values()) == 1
            assert await status_of(served.port, OTHER) == 429  # the cap holds meanwhile
            deadline = time.monotonic() + 8.0
            while permits.running and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not permits.running, "the stalled client still holds its permit"
            assert await status_of(served.port, OTHER) == 200
        finally:
            hog.close()


async def trickle(client: socket.socket, seconds: float, per_read: int = 1024) -> int:
    """Read ``per_read`` bytes from ``client`` every 0.1 s for ``seconds``; the bytes read."""
    taken = 0
    for _ in range(int(seconds / 0.1)):
        with contextlib.suppress(BlockingIOError):
            got = client.recv(per_read)
            if not got:
                break
            taken += len(got)
        await asyncio.sleep(0.1)
    return taken


@pytest.mark.parametrize("min_rate", [64_000.0, 0.0])
async def test_a_client_that_takes_a_trickle_frees_its_pass_through_permit(
    tmp_path: Path, edge_installed: None, min_rate: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that keeps taking a few bytes (10 KB/s here, a 64 MiB blob: nearly two hours)
    was never cut: it made progress, so ``limits.send_timeout`` never fired, and it held the
    only permit (``limits.fills_total`` 1) for as long as it liked; a few such clients starve
    every other pass-through and fill. Below ``limits.send_min_rate`` for a whole
    ``limits.send_timeout`` of waiting, it is cut, and its permit comes back (0: off, the
    control case: the trickle holds it)."""
    caplog.set_level(logging.INFO, logger="docxy.edge.connections")
    async with mirror(tmp_path, {"limits.fills_total": "1"}, min_send_rate=min_rate) as served:
        permits = mirror_state(served.app).running.blobs.permits
        hog = slow_reader(served.port, DIGEST)
        try:
            await held(permits)
            assert sum(permits.running.values()) == 1
            taken = await trickle(hog, 5.0)
            assert taken > 20_000  # it did keep reading
            if not min_rate:
                assert sum(permits.running.values()) == 1  # held all along
                return
            assert not permits.running, "the trickling client still holds its permit"
            assert await status_of(served.port, OTHER) == 200
            said = [r.getMessage() for r in caplog.records if "closing stalled" in r.getMessage()]
            assert len(said) == 1 and "limits.send_min_rate" in said[0]
            assert served.guard.refusals()["limits.send_min_rate"] == 1
        finally:
            hog.close()


# --- 2. the plain-HTTP redirect kept no upstream picked by host name -------------------------

PUBLIC = "https://mirror.test"
LAB_HOST = "lab-mirror.test"


@contextlib.asynccontextmanager
async def guarded_mirror() -> AsyncIterator[tuple[Any, list[str]]]:
    """The mirror's routes behind the plain-HTTP guard, TLS on (``PUBLIC``): an upstream
    ``lab.test`` picked by ``Host: lab-mirror.test``; yields the ASGI app and the hosts the
    mirror sent requests to."""
    sent: list[str] = []

    def registries(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        return fakes.reply(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')

    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": "https://hub.example",
            "cache.enabled": "false",
            "upstreams": "lab.test=https://lab.example",
            "upstreams.lab.test.hosts": LAB_HOST,
        },
        environ={},
    )
    app = create_app(config, probe=False, transport=httpx.MockTransport(registries))
    async with app.test_app():
        yield Guard(app.asgi_app, PUBLIC, configured_upstreams(config)), sent


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/v2/owner/img/manifests/1", "?ns=lab.test"),
        ("/v2/owner/img/manifests/1?x=1", "?x=1&ns=lab.test"),
        ("/v2/", "?ns=lab.test"),
    ],
)
async def test_a_plain_http_request_by_an_upstreams_host_name_is_redirected_to_it(
    target: str, kept: str
) -> None:
    """``Host: lab-mirror.test`` picks ``lab.test`` (its ``hosts``); over plain HTTP with TLS on,
    the 308 pointed at ``server.public_url`` with the path alone, whose host picks Docker Hub:
    the client that followed it pulled ``owner/img`` from the wrong registry. The redirect
    still goes to the public URL only (no URL is built from ``Host``), with ``?ns=`` naming
    the upstream the host picked; followed, it reaches that upstream."""
    async with guarded_mirror() as (app, sent):
        answer = await call_asgi(app, "GET", target, host=LAB_HOST)
        assert answer.status == 308
        location = answer.headers["Location"]
        assert location == PUBLIC + target.partition("?")[0] + kept
        again = location.removeprefix(PUBLIC)
        followed = await call_asgi(app, "GET", again, host="mirror.test", scheme="https")
        assert followed.status in (401, 404)
        assert sent and set(sent) == {"lab.example"}


async def test_a_plain_http_request_naming_its_upstream_keeps_its_own_ns() -> None:
    """A request that names its upstream with ``?ns=`` keeps it as it was (one ``ns``: the
    routes read the first), whatever its host; one by the public name gets none added."""
    async with guarded_mirror() as (app, _):
        answer = await call_asgi(app, "GET", "/v2/x/manifests/1?ns=docker.io", host=LAB_HOST)
        assert answer.headers["Location"] == f"{PUBLIC}/v2/x/manifests/1?ns=docker.io"
        answer = await call_asgi(app, "GET", "/v2/x/manifests/1", host="mirror.test")
        assert answer.headers["Location"] == f"{PUBLIC}/v2/x/manifests/1"
        answer = await call_asgi(app, "GET", "/setup.sh", host=LAB_HOST)
        assert answer.headers["Location"] == f"{PUBLIC}/setup.sh"
