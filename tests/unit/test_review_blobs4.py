"""Review of the blob path of a pull (docxy/pull/blobs.py, the fill's followers, the blob
responses) as Docker, containerd and skopeo use it: ranges, HEADs, digests, redirects, and a
fill whose upstream body fails before its first byte."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.config import load_config
from docxy.core.digests import parse_digest
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.pull import blobs
from docxy.tasks import spawn
from tests.unit.asgi import call_asgi
from tests.unit.test_fills import Held
from tests.unit.test_pull_blobs import CutAfter, committed, mirror, reply
from tests.unit.turns import until

BLOB = bytes(range(256)) * 1024  # 256 KiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PATH = f"/v2/library/app/blobs/{DIGEST}"


class BreaksFirst:
    """An anonymous registry whose first blob GET (the mirror's fill) answers 200 with the
    blob's length, then breaks off before its first byte; every later GET gets the blob."""

    def __init__(self) -> None:
        self.gets: list[str | None] = []  # the Range of each blob GET

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(BLOB))})
        self.gets.append(request.headers.get("range"))
        if len(self.gets) == 1:
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=CutAfter(BLOB, 0))
        return reply(200, BLOB)


async def test_a_fill_whose_body_breaks_off_before_its_first_byte_is_no_200_then_a_cut(
    tmp_path: Path,
) -> None:
    """The fill's upstream answered 200 and the length, then reset before a byte: its client
    got ``200 Content-Length: N`` and a cut of no bytes (docker: "unexpected EOF"), where the
    failure could still be answered as any fill's failure before its headers is (a
    pass-through: the upstream's own answer, here the blob)."""
    upstream = BreaksFirst()
    async with mirror(tmp_path, upstream) as app:
        answer = await call_asgi(app, "GET", PATH, host="mirror.test")
    assert answer.status == 200
    assert answer.complete and answer.body == BLOB, (answer.complete, len(answer.body))
    assert answer.headers["Cache-Status"] == "Docxy; fwd=bypass; detail=upstream-failed"
    assert upstream.gets == [None, None]  # the fill's, then the client's pass-through


class GatedCut(httpx.AsyncByteStream):
    """A body that breaks off before its first byte once ``gate`` is set."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.gate.wait()
        raise httpx.ReadError("connection reset by peer")
        yield b""  # pragma: no cover - makes this an async generator


async def test_every_client_of_a_fill_cut_before_its_first_byte_is_passed_through(
    tmp_path: Path,
) -> None:
    """A second client joins the fill while its upstream body is held after the headers; the
    body then breaks off before a byte: both clients (the starter and the joined one) are
    passed through, each getting the whole blob, none a 200 then a cut."""
    upstream = BreaksFirst()
    gate = asyncio.Event()

    def held(request: httpx.Request) -> httpx.Response:
        answer = upstream(request)
        if request.method == "GET" and upstream.gets == [None] and "/blobs/" in request.url.path:
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=GatedCut(gate))
        return answer

    async with mirror(tmp_path, held) as app:
        state = mirror_state(app)
        first = spawn("first", call_asgi(app, "GET", PATH, host="mirror.test"))
        await until(lambda: upstream.gets == [None])
        second = spawn("second", call_asgi(app, "GET", PATH, host="mirror.test"))
        store = state.running.blobs.store
        assert store is not None
        fill = store._fills[parse_digest(DIGEST)]  # noqa: SLF001 - the test watches the fill
        await until(lambda: fill.holders == 2)  # both clients follow its temp file
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), 30)
    for answer in answers:
        assert (answer.status, answer.complete, answer.body == BLOB) == (200, True, True)
    statuses = sorted(answer.headers["Cache-Status"] for answer in answers)
    assert statuses == ["Docxy; fwd=bypass; detail=upstream-failed"] * 2
    assert upstream.gets == [None, None, None]


class HeldAfterHeaders:
    """An anonymous registry whose blob body flows only once ``flowing`` is set."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        headers = {"Content-Length": str(len(BLOB))}
        return httpx.Response(200, headers=headers, stream=Held(self.flowing, BLOB))


async def test_a_fill_slow_after_its_headers_still_answers_its_client_before_a_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for a fill's first byte is bounded: an upstream that sends its headers, then
    nothing yet, still has the mirror's headers go out to its client (the earlier unbounded
    wait, reverted in a0642b1, hung such clients until the first byte)."""
    monkeypatch.setattr(blobs, "FIRST_BYTE_WAIT", 0.2)
    upstream = HeldAfterHeaders()
    started = asyncio.Event()
    async with mirror(tmp_path, upstream) as app:
        asking = spawn("asking", call_asgi(app, "GET", PATH, host="mirror.test", started=started))
        try:
            await asyncio.wait_for(started.wait(), 10.0)  # no byte has come
        finally:
            upstream.flowing.set()
        answer = await asyncio.wait_for(asking, 10.0)
        await committed(app)
    assert (answer.status, answer.complete, answer.body == BLOB) == (200, True, True)
    assert answer.headers["Cache-Status"] == "Docxy; fwd=miss"


#: This review's own loopback address and port (the direct path reads a real socket).
HOST, PORT = "127.0.0.164", 9711


class ResetFirst(BaseHTTPRequestHandler):
    """An anonymous registry on a socket: its first blob GET is 200 with the length, then the
    connection closes before a byte of the body; every later one gets the blob."""

    protocol_version = "HTTP/1.1"
    gets: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, *, cut: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if cut:
            self.close_connection = True
            return
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
        self._answer(200, BLOB if "/blobs/" in self.path else b"{}")

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if "/blobs/" not in self.path:
            self._answer(200, b"{}")
            return
        self.gets.append(self.headers.get("Range") or "")
        self._answer(200, BLOB, cut=len(self.gets) == 1)


@pytest.fixture
def reset_first() -> Iterator[type[ResetFirst]]:
    ResetFirst.gets = []
    server = ThreadingHTTPServer((HOST, PORT), ResetFirst)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ResetFirst
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_direct_fill_whose_body_is_cut_before_its_first_byte_is_passed_through(
    tmp_path: Path, reset_first: type[ResetFirst]
) -> None:
    """The same on the direct path (http.client in a worker thread, as fills read bodies in
    production): the upstream's connection closes after its 200 headers."""
    overrides = {
        "upstream.registry": f"http://{HOST}:{PORT}",
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
    }
    app = create_app(load_config(overrides, environ={}), probe=False)
    async with app.test_app():
        answer = await asyncio.wait_for(call_asgi(app, "GET", PATH, host="mirror.test"), 30)
    assert answer.status == 200
    assert answer.complete and answer.body == BLOB, (answer.complete, len(answer.body))
    assert answer.headers["Cache-Status"] == "Docxy; fwd=bypass; detail=upstream-failed"
    assert reset_first.gets == ["", ""]


class ShortBody(httpx.AsyncByteStream):
    """``data``, then the connection closes short of the length its headers announced."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def distribution_416(request: httpx.Request) -> httpx.Response:
    """An anonymous registry that answers a blob ``Range`` past its end as Distribution 2.8
    (the lab's docker-registry) does: 416 with ``Content-Range: bytes */N``, but the blob's
    ``Content-Length`` (N) over a 33-byte text body, then the connection closed."""
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    headers = {
        "Content-Length": str(len(BLOB)),
        "Content-Range": f"bytes */{len(BLOB)}",
        "Content-Type": "text/plain; charset=utf-8",
    }
    return httpx.Response(
        416, headers=headers, stream=ShortBody(b"invalid range: failed to overlap\n")
    )


async def test_an_upstream_416_to_a_range_past_the_end_is_a_whole_answer(tmp_path: Path) -> None:
    """A ``Range`` past the end of a blob not cached passes through; the upstream's 416 (as the
    real docker-registry sends it) was relayed with its Content-Length of the whole blob over
    a short body, so the client got 416, then a cut connection. It gets the 416 with its
    ``Content-Range`` and the registry's JSON error, whole, as for a cached blob."""
    async with mirror(tmp_path, distribution_416) as app:
        past = [("Range", f"bytes={len(BLOB)}-")]
        answer = await call_asgi(app, "GET", PATH, headers=past, host="mirror.test")
    assert (answer.status, answer.complete) == (416, True)
    assert answer.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    assert answer.headers["Content-Type"] == "application/json"
    assert int(answer.headers["Content-Length"]) == len(answer.body)
    assert b'"RANGE_INVALID"' in answer.body
