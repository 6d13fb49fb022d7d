"""Fills whose body a worker thread reads (docxy.upstream.direct + BlobWriter.pump), against a
real loopback HTTP(S) server: whole bodies, bad bytes, a cut or stalled upstream, cancelling."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FillAborted
from docxy.cache.fill import BlobFollower, BlobWriter, Download, run_fill
from docxy.config import load_config
from docxy.core.digests import Digest, digest_of
from docxy.core.errors import HopTimeout, UpstreamTimeout, UpstreamUnavailable
from docxy.http.state import MirrorState
from docxy.observe.observer import Observer, total
from docxy.tasks import spawn
from docxy.tls.context import self_signed
from docxy.upstream import direct
from docxy.upstream.client import Upstream, UpstreamClient, upstream_ssl_context
from docxy.upstream.direct import DirectSettings
from lab.bed.httpserver import LoopbackServer, QuietHandler
from tests.unit import fakes

GUARD = 20.0
MakeClient = Callable[..., UpstreamClient]
LONG = os.urandom(5 * 1024 * 1024 + 12345)  # several buffers of the pump, and a tail
REDIRECT_CHUNK = 64 * 1024
REDIRECT_BODY = 256 * 1024 * 1024


@dataclass
class Plan:
    """What the server sends for ``/blob``: a body, maybe cut or stalled after ``upto`` bytes."""

    body: bytes = b""
    upto: int | None = None
    #: "cut": close the connection; "stall": wait for `release`; "hang": wait for `release`
    #: before the status line
    then: str = "send"
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    connections: int = 0
    redirect_body_sent: int = 0  # bytes of /moved-endless's body the server got to send


class CountingHandler(QuietHandler):
    def setup(self) -> None:
        super().setup()
        self.owner().plan.connections += 1


class BlobHandler(CountingHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        plan: Plan = self.owner().plan
        plan.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/moved-endless":  # a redirect whose chunked body never seems to end
            self.send_response(307)
            self.send_header("Location", "/blob")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n%s\r\n" % (REDIRECT_CHUNK, b"r" * REDIRECT_CHUNK)
            try:
                for _ in range(REDIRECT_BODY // REDIRECT_CHUNK):  # bounded: 256 MiB at most
                    self.wfile.write(chunk)
                    plan.redirect_body_sent += REDIRECT_CHUNK
                self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the client closed the connection: it stopped reading
                self.close_connection = True
            return
        if self.path in ("/moved-utf8", "/moved-space"):  # raw bytes http.client won't send
            self.send_response(307)
            raw = "/blob-\u00e9" if self.path == "/moved-utf8" else "/blob a%2Fb"
            self.send_header("Location", raw.encode().decode("latin-1"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/moved-away":  # to another origin (a CDN): this server by name
            self.send_response(307)
            port = self.owner().port
            self.send_header("Location", f"http://localhost:{port}/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/moved" or self.path.startswith("/v2/"):  # a registry's, to its CDN
            self.send_response(307)
            self.send_header("Location", "/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if plan.then == "hang":
            plan.release.wait(GUARD)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(plan.body)))
        self.end_headers()
        upto = len(plan.body) if plan.upto is None else plan.upto
        self.wfile.write(plan.body[:upto])
        self.wfile.flush()
        if plan.then == "stall":
            plan.release.wait(GUARD)
        elif plan.then == "cut":
            self.close_connection = True
            return
        self.wfile.write(plan.body[upto:])


class BlobServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(BlobHandler)
        self.plan = Plan()


class TLSBlobServer(BlobServer):
    """The same, over TLS with a self-signed certificate for 127.0.0.1."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    def start(self) -> None:
        super().start()
        server = self._server
        assert server is not None
        server.socket = self.context.wrap_socket(server.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[BlobServer]:
    served = BlobServer()
    served.start()
    yield served
    served.plan.release.set()
    served.stop()


@pytest.fixture
def clients() -> Iterator[list[UpstreamClient]]:
    made: list[UpstreamClient] = []
    yield made
    for client in made:
        assert client.direct is not None
        client.direct.idle.close()


@pytest.fixture
def client_for(
    clients: list[UpstreamClient],
) -> MakeClient:
    def make(read_timeout: float = GUARD, context: ssl.SSLContext | None = None) -> UpstreamClient:
        settings = DirectSettings(context or upstream_ssl_context(), 5.0, read_timeout)
        clients.append(UpstreamClient(httpx.AsyncClient(), settings))
        return clients[-1]

    return make


async def open_download(client: UpstreamClient, url: str) -> Download:
    upstream = Upstream(url.split("/blob")[0].split("/moved")[0])
    answer = await direct.open_get(client, upstream, url, [("Authorization", "Bearer t")])
    assert answer.status == 200
    length = answer.header("content-length")

    async def close() -> None:
        answer.close()

    return Download(int(length) if length else None, None, close, body=answer.body)


def make_store(root: Path) -> DiskBlobStore:
    return DiskBlobStore.open(root, 1 << 30)


async def fill_and_read(
    blobs: DiskBlobStore, digest: Digest, client: UpstreamClient, url: str
) -> bytes:
    follower = await blobs.fill(digest, lambda: open_download(client, url))
    assert isinstance(follower, BlobFollower)
    data = await asyncio.wait_for(follower.read_all(), GUARD)
    await asyncio.wait_for(blobs.commits_done(), GUARD)  # the sync comes after the last byte
    return data


@pytest.mark.parametrize("body", [b"x", LONG], ids=["short", "long"])
async def test_a_body_is_read_verified_and_kept(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, body: bytes
) -> None:
    server.plan.body = body
    blobs, digest = make_store(tmp_path), digest_of(body)
    assert await fill_and_read(blobs, digest, client_for(), server.url + "/blob") == body
    entry = blobs.lookup(digest)
    assert entry is not None and entry.path.read_bytes() == body
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_redirects_are_followed_with_the_same_headers(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body = LONG
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    assert await fill_and_read(blobs, digest, client_for(), server.url + "/moved") == LONG
    assert server.plan.seen == [("/moved", "Bearer t"), ("/blob", "Bearer t")]


@pytest.mark.parametrize(
    ("moved", "then"), [("/moved-utf8", "/blob-%C3%A9"), ("/moved-space", "/blob%20a%2Fb")]
)
async def test_a_redirect_to_a_url_with_raw_bytes_is_followed_percent_encoded(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, moved: str, then: str
) -> None:
    """http.client sends only ASCII without spaces: a Location with raw UTF-8 ended the fill
    with an uncaught UnicodeEncodeError and a traceback, one with a space failed it
    (InvalidURL); httpx and browsers send those bytes percent-encoded (and keep a %2F)."""
    server.plan.body = LONG
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    assert await fill_and_read(blobs, digest, client_for(), server.url + moved) == LONG
    assert [path for path, _ in server.plan.seen] == [moved, then]


async def test_a_redirect_with_an_endless_body_is_not_read_to_its_end(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    """A redirect's body is read off only when small, so its connection can be kept: one of
    no stated length (chunked) was read to its end, however long, before the fill went on (a
    broken or hostile upstream could hold the fill there for ever). Now at most the drain limit
    is read; the rest is left and that connection closed."""
    server.plan.body = LONG
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    assert await fill_and_read(blobs, digest, client_for(), server.url + "/moved-endless") == LONG
    assert [path for path, _ in server.plan.seen] == ["/moved-endless", "/blob"]
    assert server.plan.connections == 2  # the redirect's connection was not kept
    # What loopback buffers take beyond the drain limit, not the 256 MiB body.
    assert server.plan.redirect_body_sent < 64 * 1024 * 1024, server.plan.redirect_body_sent


async def test_connections_are_kept_and_a_closed_one_is_replaced(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body = LONG
    digest, client = digest_of(LONG), client_for()
    for name in ("a", "b"):  # two fills, each through a redirect: one connection
        blobs = make_store(tmp_path / name)
        assert await fill_and_read(blobs, digest, client, server.url + "/moved") == LONG
    assert (len(server.plan.seen), server.plan.connections) == (4, 1)
    server.stop()  # cuts the kept connection
    server.start()
    blobs = make_store(tmp_path / "c")
    assert await fill_and_read(blobs, digest, client, server.url + "/blob") == LONG
    assert server.plan.connections == 2


async def test_an_answer_closed_twice_gives_its_connection_back_once(
    client_for: MakeClient, server: BlobServer
) -> None:
    """A second close of a read answer gave its connection back again: two later GETs would
    have taken the same connection and read each other's answers."""
    server.plan.body = b"x"
    client = client_for()
    assert client.direct is not None
    answer = await direct.open_get(client, Upstream(server.url), server.url + "/blob", [])
    assert answer.body.read(10) == b"x" and answer.body.read(10) == b""
    answer.close()
    answer.close()
    assert len(client.direct.idle) == 1


async def test_over_tls_with_the_given_context(client_for: MakeClient, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls", "127.0.0.1")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    tls = TLSBlobServer(served)
    tls.start()
    try:
        tls.plan.body = LONG
        blobs, digest = make_store(tmp_path / "cache"), digest_of(LONG)
        trusting = ssl.create_default_context(cafile=str(cert))
        read = await fill_and_read(blobs, digest, client_for(context=trusting), tls.url + "/blob")
        assert read == LONG
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):  # not trusted: refused
            await direct.open_get(client_for(), Upstream(tls.url), tls.url + "/blob", [])
    finally:
        tls.stop()


async def test_wrong_bytes_are_not_kept(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body = LONG[:-1] + b"!"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    with pytest.raises(FillAborted, match="digest mismatch: expected .*, got "):
        await fill_and_read(blobs, digest, client_for(), server.url + "/blob")
    assert blobs.lookup(digest) is None and list(blobs.tmp_dir.iterdir()) == []


async def test_an_upstream_cut_mid_body_aborts_the_fill(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body, server.plan.upto, server.plan.then = LONG, len(LONG) // 2, "cut"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    with pytest.raises(FillAborted, match="UpstreamUnavailable: .*broke off"):
        await fill_and_read(blobs, digest, client_for(), server.url + "/blob")
    assert blobs.lookup(digest) is None and list(blobs.tmp_dir.iterdir()) == []


async def test_a_stalled_upstream_times_out(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body, server.plan.upto, server.plan.then = LONG, 1000, "stall"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    # 1 s: the in-process server's answer head must come within it (it is the body that stalls)
    said = "stopped sending in time (GET 127.0.0.1: nothing received within 1s)"
    with pytest.raises(FillAborted, match=f"{UpstreamTimeout.__name__}: .*{re.escape(said)}"):
        await fill_and_read(blobs, digest, client_for(read_timeout=1.0), server.url + "/blob")
    assert blobs.lookup(digest) is None


async def test_an_upstream_that_never_answers_times_out_saying_after_how_long(
    client_for: MakeClient, server: BlobServer
) -> None:
    server.plan.then = "hang"
    netloc = server.url.removeprefix("http://")
    said = f"did not answer in time (GET {netloc}: nothing received within 0.2s)"
    with pytest.raises(UpstreamTimeout, match=re.escape(said)):
        await open_download(client_for(read_timeout=0.2), server.url + "/blob")


@pytest.mark.parametrize(
    ("path", "hop"), [("/blob", False), ("/moved", False), ("/moved-away", True)]
)
async def test_a_silent_host_the_registry_redirected_to_is_told_from_the_registry(
    client_for: MakeClient, server: BlobServer, path: str, hop: bool
) -> None:
    """The registry itself, or where it redirected on its own origin, sending nothing is its
    silence (the client is answered at once); a host on another origin (a CDN) sending
    nothing may be another next time (the client's request goes on)."""
    server.plan.then = "hang"
    with pytest.raises(UpstreamTimeout) as caught:
        await open_download(client_for(read_timeout=0.2), server.url + path)
    assert isinstance(caught.value, HopTimeout) is hop


async def test_an_upstream_that_takes_no_connection_times_out_saying_after_how_long(
    clients: list[UpstreamClient],
) -> None:
    """A listener that accepts nothing, its queue (of one) full: the kernel drops the next
    connection's SYN, and the connect waits out its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        netloc = f"127.0.0.1:{listener.getsockname()[1]}"
        queued = [socket.create_connection(listener.getsockname(), timeout=GUARD)]
        settings = DirectSettings(upstream_ssl_context(), 0.2, GUARD)
        clients.append(UpstreamClient(httpx.AsyncClient(), settings))
        said = f"did not answer in time (GET {netloc}: no connection within 0.2s)"
        try:
            with pytest.raises(UpstreamTimeout, match=re.escape(said)):
                await open_download(clients[-1], f"http://{netloc}/blob")
        finally:
            for sock in queued:
                sock.close()


def resolving(name: str, then: Callable[[], object] = lambda: None) -> Callable[..., Any]:
    """A resolver that knows ``name`` as 127.0.0.1 (after ``then()``), and nothing else."""

    def resolve(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        if host == name:
            then()
            return socket.getaddrinfo("127.0.0.1", port, *args)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


async def test_a_host_name_is_looked_up_and_connected_to(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other test names 127.0.0.1: here the URL has a host name, looked up by the
    direct path's resolver, and the body comes from the address it gives."""
    monkeypatch.setattr(direct, "RESOLVE", resolving("registry.test"))
    server.plan.body = LONG
    url = server.url.replace("127.0.0.1", "registry.test") + "/blob"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    assert await fill_and_read(blobs, digest, client_for(), url) == LONG
    unknown = url.replace("registry.test", "unknown.test")
    with pytest.raises(UpstreamUnavailable, match=r"cannot reach .*unknown\.test.*gaierror"):
        await open_download(client_for(), unknown)


async def test_an_idn_host_is_reached_by_the_name_httpx_uses(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx sends a host name that is not ASCII in its IDNA 2008 form (``faß.test`` as
    ``xn--fa-hia.test``); http.client, ssl and the lookup encode it with IDNA 2003, which maps
    it to ``fass.test``, another domain: the fill's GET, with the mirror's credentials, went
    there. The direct path now names the host as httpx does (found by a read-only review)."""
    monkeypatch.setattr(direct, "RESOLVE", resolving("xn--fa-hia.test"))
    server.plan.body = LONG
    url = server.url.replace("127.0.0.1", "faß.test") + "/blob"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    assert await fill_and_read(blobs, digest, client_for(), url) == LONG


async def test_a_lookup_that_never_ends_times_out_as_a_connection_would(
    clients: list[UpstreamClient], server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver that does not answer (a dead name server): ``getaddrinfo`` waited until the
    C library gave up (its timeout times its retries, per name server), the fill with it; httpx
    bounds the lookup by the connect timeout, and now the direct path does too."""
    answer = threading.Event()
    monkeypatch.setattr(direct, "RESOLVE", resolving("registry.test", lambda: answer.wait(GUARD)))
    settings = DirectSettings(upstream_ssl_context(), 0.2, GUARD)
    clients.append(UpstreamClient(httpx.AsyncClient(), settings))
    netloc = server.url.replace("http://127.0.0.1", "registry.test")
    said = f"did not answer in time (GET {netloc.split(':')[0]}"
    try:
        with pytest.raises(UpstreamTimeout, match=re.escape(said) + ".*no connection within 0.2s"):
            await asyncio.wait_for(open_download(clients[-1], f"http://{netloc}/blob"), GUARD / 2)
    finally:
        answer.set()


async def test_cancelling_ends_the_thread_and_removes_the_temp_file(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    server.plan.body, server.plan.upto, server.plan.then = LONG, len(LONG) // 3, "stall"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    writer = await blobs.fetch_or_join(digest)
    assert isinstance(writer, BlobWriter)
    follower = await blobs.fetch_or_join(digest)
    assert isinstance(follower, BlobFollower)
    download = await open_download(client_for(), server.url + "/blob")
    task = spawn("test fill", run_fill(writer, lambda: asyncio.sleep(0, download)))
    while writer.fill.written < len(LONG) // 3 - fill_module.PUMP_BUFFER:
        await asyncio.wait_for(writer.fill.changed(), GUARD)  # the thread is reading
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)  # returns although the upstream still stalls
    for thread in [t for t in threading.enumerate() if t.name.startswith("fill ")]:
        thread.join(GUARD)  # it has handed back its result: only its last lines remain
        assert not thread.is_alive()
    with pytest.raises(FillAborted):
        await asyncio.wait_for(follower.read_all(), GUARD)
    assert list(blobs.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("how", ["cancelled", "aborted"])
async def test_a_fill_that_waits_for_room_ends_at_once_when_cancelled_or_aborted(
    client_for: MakeClient,
    tmp_path: Path,
    server: BlobServer,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The pump's thread waits on the loop for room in the store (up to ``cache.room_wait``,
    minutes): cancelling the fill (a shutdown) or aborting it (its client went away) cuts that
    wait, so the fill ends now."""
    server.plan.body = LONG
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    waiting, cut = asyncio.Event(), asyncio.Event()

    async def no_room_yet(fill: object, nbytes: int) -> None:
        waiting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cut.set()
            raise

    monkeypatch.setattr(blobs, "reserve", no_room_yet)
    asked = asyncio.run_coroutine_threadsafe

    def late(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        future = asked(coro, loop)
        time.sleep(0.3)  # the thread not yet back when the loop stops it: the wait starts late
        return future

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", late)
    writer = await blobs.fetch_or_join(digest)
    assert isinstance(writer, BlobWriter)
    opened = await open_download(client_for(), server.url + "/blob")
    unsized = Download(None, None, opened.close, body=opened.body)  # reserves as it reads
    task = spawn("test fill", run_fill(writer, lambda: asyncio.sleep(0, unsized)))
    await asyncio.wait_for(waiting.wait(), GUARD)
    if how == "cancelled":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)  # not after room_wait
    else:
        writer.abort("its client went away")
        await asyncio.wait_for(task, 5)
    await asyncio.wait_for(cut.wait(), 5)
    for thread in [t for t in threading.enumerate() if t.name.startswith("fill ")]:
        thread.join(GUARD)
        assert not thread.is_alive()
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_an_abort_under_a_stalled_read_is_logged_once(
    client_for: MakeClient,
    tmp_path: Path,
    server: BlobServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An abort (its client went away) while the pump's thread is blocked on the upstream
    interrupts that read: the fill logged the abort, then a second line, a warning that the
    fill failed with the read it had itself interrupted. One event, one line."""
    server.plan.body, server.plan.upto, server.plan.then = LONG, len(LONG) // 3, "stall"
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    writer = await blobs.fetch_or_join(digest)
    assert isinstance(writer, BlobWriter)
    download = await open_download(client_for(), server.url + "/blob")
    task = spawn("test fill", run_fill(writer, lambda: asyncio.sleep(0, download)))
    while writer.fill.written < len(LONG) // 3 - fill_module.PUMP_BUFFER:
        await asyncio.wait_for(writer.fill.changed(), GUARD)  # the thread is reading
    with caplog.at_level("DEBUG", logger="docxy"):
        writer.abort("its client went away")
        await asyncio.wait_for(task, GUARD)  # the interrupted read ends the fill's task
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and digest.hex in r.message]
    assert [r.getMessage() for r in lines] == [
        f"cache fill of {digest} aborted: its client went away"
    ]
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_a_failing_disk_passes_through_and_keeps_nothing(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, chunks: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fill_module, "write_all", full)
    server.plan.body = LONG
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    with pytest.raises(FillAborted, match="cache write failed"):
        await fill_and_read(blobs, digest, client_for(), server.url + "/blob")
    assert blobs.write_failed_at is not None and blobs.lookup(digest) is None
    assert list(blobs.tmp_dir.iterdir()) == []


@dataclass
class CountingBody:
    """A body that counts the bytes the pump read from it."""

    inner: fill_module.BodySource
    taken: int = 0

    def read(self, size: int) -> bytes:
        data = self.inner.read(size)
        self.taken += len(data)
        return data

    def interrupt(self) -> None:
        self.inner.interrupt()


async def test_a_disk_failing_mid_fill_stops_the_pump_and_its_follower_gets_the_rest(
    client_for: MakeClient, tmp_path: Path, server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes fail past 2 MiB: the pump stops reading the upstream at once (nobody would get
    its bytes; it has read at most the reads its pipeline holds), the fill keeps what it wrote
    for its follower, which gets the rest from its ``rest`` (asked from where the kept bytes
    end) and the whole blob, verified."""
    blob = os.urandom(4 * fill_module.PUMP_DEPTH * fill_module.PUMP_BUFFER + 12345)
    disk = fakes.DiskFullAfter(2 * 1024 * 1024, errno.EIO)
    monkeypatch.setattr(fill_module, "write_all", disk)
    server.plan.body = blob
    blobs, digest, client = make_store(tmp_path), digest_of(blob), client_for()
    counted: list[CountingBody] = []
    asked: list[int] = []

    async def download() -> Download:
        opened = await open_download(client, server.url + "/blob")
        assert opened.body is not None
        counted.append(CountingBody(opened.body))
        return Download(opened.size, None, opened.close, body=counted[0])

    async def rest(offset: int, size: int | None) -> Download:
        asked.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(offset, len(blob), 100_000):
                yield blob[start : start + 100_000]

        async def close() -> None:
            pass

        return Download(len(blob) - offset, chunks(), close)

    follower = await blobs.fill(digest, download)
    assert isinstance(follower, BlobFollower)
    follower.rest = rest
    assert await asyncio.wait_for(follower.read_all(), GUARD) == blob
    assert asked == [disk.written] and follower.handover.at == disk.written
    held = fill_module.PUMP_DEPTH * fill_module.PUMP_BUFFER  # read, not yet written
    assert counted[0].taken <= disk.written + held, "the pump read on for nobody"
    assert blobs.lookup(digest) is None and blobs.write_failed_at is not None
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_an_upstream_cut_mid_body_goes_on_from_there_when_it_may(
    client_for: MakeClient, tmp_path: Path, server: BlobServer
) -> None:
    """The pump's body breaks off after 2 MiB; the download says how to go on (its ``resume``,
    for the error the direct body raises): the fill asks for the rest from where the bytes
    stopped, feeds it on the loop, and commits the whole, verified."""
    server.plan.body, server.plan.upto, server.plan.then = LONG, 2 * 1024 * 1024, "cut"
    blobs, digest, client = make_store(tmp_path), digest_of(LONG), client_for()
    asked: list[int] = []

    async def rest(offset: int, size: int | None) -> Download:
        asked.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            yield LONG[offset:]

        async def close() -> None:
            pass

        return Download(len(LONG) - offset, chunks(), close)

    async def download() -> Download:
        opened = await open_download(client, server.url + "/blob")
        return dataclasses.replace(opened, resume=rest, broke_off=(UpstreamUnavailable,))

    follower = await blobs.fill(digest, download)
    assert isinstance(follower, BlobFollower)
    assert await asyncio.wait_for(follower.read_all(), GUARD) == LONG
    assert asked == [2 * 1024 * 1024]
    await asyncio.wait_for(blobs.commits_done(), GUARD)
    entry = blobs.lookup(digest)
    assert entry is not None and entry.path.read_bytes() == LONG


async def test_a_client_that_leaves_mid_rest_closes_the_rest_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk failed under the fill, its follower went on with the rest from the upstream,
    and its client leaves: the rest's answer (an upstream connection) is closed as the
    follower's stream is, not left to the garbage collector's finalizer task."""

    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(1024 * 1024))
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    asked: list[int] = []
    closed: list[int] = []

    async def pieces(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    async def nothing() -> None:
        pass

    async def download() -> Download:
        return Download(len(LONG), pieces(LONG), nothing)

    async def rest(offset: int, size: int | None) -> Download:
        asked.append(offset)

        async def close() -> None:
            closed.append(offset)

        return Download(len(LONG) - offset, pieces(LONG[offset:]), close)

    follower = await blobs.fill(digest, download)
    assert isinstance(follower, BlobFollower)
    follower.rest = rest
    chunks = aiter(follower)
    while not asked:
        await asyncio.wait_for(anext(chunks), GUARD)
    await asyncio.wait_for(anext(chunks), GUARD)  # a piece of the rest
    await chunks.aclose()  # type: ignore[attr-defined]
    assert closed == asked


class Rehashes:
    """Wraps ``BlobFollower._hashed`` (a re-read and re-hash of the kept bytes from the temp
    file) and records the length of each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        real = BlobFollower._hashed

        def hashed(follower: BlobFollower, nbytes: int) -> Any:
            self.calls.append(nbytes)
            return real(follower, nbytes)

        monkeypatch.setattr(BlobFollower, "_hashed", hashed)


async def rest_of(data: bytes, offset: int, size: int | None) -> Download:
    """The rest of ``data`` from ``offset``, in 100 KB pieces."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(offset, len(data), 100_000):
            yield data[start : start + 100_000]

    async def close() -> None:
        pass

    return Download(len(data) - offset, chunks(), close)


async def test_followers_of_a_given_up_fill_go_on_from_its_hash_without_reading_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails past 1 MiB under a fill fed on the loop: its two followers send the kept
    bytes from the temp file and get the rest from their own ``rest``, verified with a copy of
    the fill's own hash of the kept bytes: neither reads them again to hash them. (Its hash
    took in the batch that failed to write, once: a copy of it would not verify.)"""
    disk = fakes.DiskFullAfter(1024 * 1024)
    monkeypatch.setattr(fill_module, "write_all", disk)
    rehashes = Rehashes(monkeypatch)
    blobs, digest = make_store(tmp_path), digest_of(LONG)
    asked: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(LONG), 100_000):
            yield LONG[start : start + 100_000]

    async def nothing() -> None:
        pass

    async def download() -> Download:
        return Download(len(LONG), pieces(), nothing)

    async def rest(offset: int, size: int | None) -> Download:
        asked.append(offset)
        return await rest_of(LONG, offset, size)

    followers = [await blobs.fill(digest, download) for _ in range(2)]
    for follower in followers:
        assert isinstance(follower, BlobFollower)
        follower.rest = rest
    read = [asyncio.wait_for(f.read_all(), GUARD) for f in followers]
    assert await asyncio.gather(*read) == [LONG, LONG]
    assert disk.written > 0 and asked == [disk.written] * 2 and rehashes.calls == []
    assert blobs.lookup(digest) is None and list(blobs.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("when", ["pumped", "hashing-behind"])
async def test_a_pumped_fill_given_up_hands_its_hash_over_only_once_it_is_of_the_kept_bytes(
    client_for: MakeClient,
    tmp_path: Path,
    server: BlobServer,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The disk fails past 2 MiB under a pumped fill, whose hashing thread runs behind its
    writes. A follower that asks for the kept bytes' hash once the pump is done gets a copy of
    the fill's; one that asks while the hashing thread is held back (it has not hashed the
    kept bytes yet) hashes them again from the temp file. Both get the blob, verified."""
    disk = fakes.DiskFullAfter(2 * 1024 * 1024)
    monkeypatch.setattr(fill_module, "write_all", disk)
    monkeypatch.setattr(fill_module, "PUMP_DEPTH", 8)  # reads go on while hashing is held
    rehashes = Rehashes(monkeypatch)
    hashing = threading.Event()
    real_hash_all = fill_module._hash_all

    def held_hash_all(*args: Any) -> None:
        hashing.wait(GUARD)
        real_hash_all(*args)

    if when == "hashing-behind":
        monkeypatch.setattr(fill_module, "_hash_all", held_hash_all)
    else:
        hashing.set()
    server.plan.body = LONG
    blobs, digest, client = make_store(tmp_path), digest_of(LONG), client_for()
    pump_done = asyncio.Event()

    async def download() -> Download:
        opened = await open_download(client, server.url + "/blob")

        async def close() -> None:
            await opened.close()
            pump_done.set()

        return dataclasses.replace(opened, close=close)

    follower = await blobs.fill(digest, download)
    assert isinstance(follower, BlobFollower)
    follower.rest = partial(rest_of, LONG)
    if when == "pumped":
        await asyncio.wait_for(pump_done.wait(), GUARD)
    try:
        assert await asyncio.wait_for(follower.read_all(), GUARD) == LONG
    finally:
        hashing.set()
    assert disk.written > 0 and follower.handover.at == disk.written
    assert rehashes.calls == ([] if when == "pumped" else [disk.written])
    await asyncio.wait_for(pump_done.wait(), GUARD)
    assert blobs.lookup(digest) is None


async def test_a_body_longer_than_announced_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A download that sends more than its announced length failed, as a short one does:
    one WARNING says so (it was an INFO line, as for a fill its clients left)."""
    blobs, digest = make_store(tmp_path), digest_of(LONG)

    async def longer() -> AsyncIterator[bytes]:
        yield LONG
        yield b"more"

    async def nothing() -> None:
        pass

    async def download() -> Download:
        return Download(len(LONG), longer(), nothing)

    follower = await blobs.fill(digest, download)
    assert isinstance(follower, BlobFollower)
    with caplog.at_level(logging.INFO, logger="docxy"), pytest.raises(FillAborted):
        await asyncio.wait_for(follower.read_all(), GUARD)
    await blobs.settle()
    lines = [r for r in caplog.records if "announced" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING], caplog.text
    assert blobs.lookup(digest) is None


async def test_a_direct_gets_cdn_hop_is_counted_as_the_blob_it_is(
    client_for: MakeClient, server: BlobServer
) -> None:
    """The answers of a fill's direct GET are counted by route (docxy_upstream_responses_total)
    by what it first asked: the CDN's answer was ``other``, its URL naming no blob."""
    config = load_config({"upstream.registry": server.url}, environ={})
    observer = Observer(MirrorState(config, Upstream.from_config(config.upstream)))
    client = client_for()
    client.direct_listeners.append(observer.direct_answered)
    server.plan.body = b"blob"
    path = "/v2/library/hello/blobs/" + str(digest_of(b"blob"))
    answer = await direct.open_get(client, Upstream(server.url), server.url + path, [])
    answer.close()
    assert server.plan.seen == [(path, None), ("/blob", None)]
    samples = observer.samples()
    answers = "docxy_upstream_responses_total"
    assert total(samples, answers, route="blob", status_class="3xx") == 1
    assert total(samples, answers, route="blob", status_class="2xx") == 1
    assert total(samples, answers, route="other") == 0


# --- a CDN's refusal on the direct path (docxy.pull.blobs.BlobService._fetch_direct) ----------


@dataclass
class Registry:
    """A token-auth registry that sends every blob GET to its CDN, another origin (``cdn``:
    the CDN's port), and what both saw."""

    blobs: dict[str, bytes]
    cdn: int = 0
    refusals: list[int] = field(default_factory=list)  # the CDN's next answers, then 200s
    tokens_issued: int = 0
    cdn_gets: int = 0
    token_status: int = 200  # the token service's answer to the mirror


class RegistryHandler(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        registry: Registry = self.owner().registry
        path, auth = self.path, self.headers.get("Authorization")
        if path.startswith("/token"):
            registry.tokens_issued += 1
            self.answer(registry.token_status, b'{"token": "t"}')
        elif path.startswith("/blob/"):  # the CDN's
            registry.cdn_gets += 1
            refused = registry.refusals.pop(0) if registry.refusals else None
            if refused is not None:
                self.answer(refused, b"<Error>Request has expired</Error>")
            else:
                self.answer(200, registry.blobs[path.rsplit("/", 1)[1]])
        elif auth != "Bearer t":
            realm = self.owner().url + "/token"
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(307)
            where = f"http://127.0.0.1:{registry.cdn}/blob/{path.rsplit(':', 1)[1]}"
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RegistryServer(LoopbackServer):
    def __init__(self, registry: Registry) -> None:
        super().__init__(RegistryHandler)
        self.registry = registry


@asynccontextmanager
async def direct_mirror(tmp_path: Path, registry: Registry) -> AsyncIterator[Quart]:
    """A mirror with its real (direct) upstream client in front of ``registry``, its CDN on
    another port (another origin); both servers stopped after."""
    from docxy.http.app import create_app

    registry_server, cdn_server = RegistryServer(registry), RegistryServer(registry)
    registry_server.start()
    cdn_server.start()
    registry.cdn = cdn_server.port
    config = load_config(
        {"upstream.registry": registry_server.url, "cache.dir": str(tmp_path / "cache")},
        environ={},
    )
    try:
        app = create_app(config, probe=False)
        async with app.test_app():
            yield app
    finally:
        registry_server.stop()
        cdn_server.stop()


@pytest.mark.parametrize("status", [401, 403])
async def test_a_cdns_refusal_on_the_direct_path_keeps_the_token_and_the_repository(
    tmp_path: Path, status: int
) -> None:
    """The registry took the mirror's token and sent a fill's direct GET to its CDN, which
    refused it (an expired signed URL). The token is kept (not fetched again for a retry that
    goes to the same CDN), and the repository is not marked refused: its next blob is fetched
    and cached with that token."""
    first, second = os.urandom(300_000), os.urandom(200_000)
    registry = Registry({digest_of(data).hex: data for data in (first, second)}, refusals=[status])
    async with direct_mirror(tmp_path, registry) as app:
        client = app.test_client()
        for data in (first, second):
            response = await client.get(
                f"/v2/team/app/blobs/{digest_of(data)}",
                headers={"Authorization": "Bearer t"},  # the client's, for a pass-through
            )
            assert (response.status_code, await response.get_data()) == (200, data)
        blobs = app.extensions["docxy"].cache.blobs
        await asyncio.wait_for(blobs.commits_done(), GUARD)
        assert blobs.lookup(digest_of(second)) is not None, "passed through uncached"
    assert registry.tokens_issued == 1


async def test_a_token_service_refusing_the_mirror_on_the_direct_path_passes_the_blob_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The token service refuses the mirror (a private repository); the client has its own
    login and gets the blob through. On the direct path the refusal was a failed fetch, logged
    as a WARNING; as on the httpx path it is the upstream's answer (INFO)."""
    data = os.urandom(100_000)
    registry = Registry({digest_of(data).hex: data}, token_status=401)
    caplog.set_level(logging.INFO, logger="docxy")
    async with direct_mirror(tmp_path, registry) as app:
        response = await app.test_client().get(
            f"/v2/team/app/blobs/{digest_of(data)}", headers={"Authorization": "Bearer t"}
        )
        assert (response.status_code, await response.get_data()) == (200, data)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
