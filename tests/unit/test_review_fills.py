"""Review of a cache fill's download and its followers when the upstream or the disk misbehaves:
an upstream whose rest runs past the blob, a body whose every byte came but whose chunked ending
broke off."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.cache import fill
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import BlobFollower, Download
from docxy.cache.reader import BlobReader
from docxy.config import load_config
from docxy.core.digests import digest_of
from docxy.http.app import create_app
from docxy.tasks import spawn
from lab.bed.httpserver import QuietHandler
from tests.unit import fakes
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import (
    BLOB,
    DIGEST,
    HALF,
    Upstream,
    WrongRest,
    cached_blobs,
    committed,
    mirror,
)

GUARD = 10.0  # seconds before a would-be hang is a failure
SETTINGS = {"upstream__username": "bot", "upstream__password": "s3cret"}
PATH, AUTH = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]


class Pieces(httpx.AsyncByteStream):
    """``data`` in ``pieces``-byte chunks, then (``then``) an error: a body that broke off."""

    def __init__(self, data: bytes, pieces: int, then: Exception | None = None) -> None:
        self.data, self.pieces, self.then = data, pieces, then

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.pieces):
            yield self.data[start : start + self.pieces]
        if self.then is not None:
            raise self.then


class LongRest(Upstream):
    """Answers a Range GET with the right Content-Range, then more bytes than it: the rest of
    the blob and ``extra`` after it, with a Content-Length of all of them (``length``) or none
    (chunked); in one piece with the last byte, or after it (``pieces``)."""

    def __init__(self, extra: bytes, length: bool, pieces: int) -> None:
        super().__init__()
        self.extra, self.length, self.pieces = extra, length, pieces

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ranged = request.headers.get("range")
        if ranged is None or request.url.host == "auth.test":
            return super().__call__(request)
        self.ranges.append(ranged)
        start = int(ranged.removeprefix("bytes=").removesuffix("-"))
        body = BLOB[start:] + self.extra
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        if self.length:
            headers["Content-Length"] = str(len(body))
        return httpx.Response(206, headers=headers, stream=Pieces(body, self.pieces))


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
@pytest.mark.parametrize("pieces", [len(BLOB), HALF // 4], ids=["with-last-byte", "after-it"])
async def test_a_followers_rest_with_bytes_past_the_blob_never_gives_its_client_more(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    length: bool,
    pieces: int,
) -> None:
    """The disk fails under the fill and its client's rest from the upstream (a 206 whose
    Content-Range is right) sends more bytes than the blob has: the client never gets a byte
    past the blob, nor its last byte from an answer that is not its rest: it is cut, with one
    WARNING saying so, as for a rest of wrong bytes."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = LongRest(b"junk" * 1000, length, pieces)
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200
    assert len(answer.body) < len(BLOB), len(answer.body) - len(BLOB)
    assert answer.body == BLOB[: len(answer.body)] and not answer.complete
    assert upstream.ranges == [None, f"bytes={HALF}-"]
    said = [r.getMessage() for r in caplog.records if "the client is cut" in r.getMessage()]
    said += [r.getMessage() for r in caplog.records if "cannot get the rest" in r.getMessage()]
    # A Content-Length that says so is refused unread (not_the_rest); a chunked one is cut
    # as its bytes run past the blob.
    why = "and a Content-Length of" if length else "ran past the blob's"
    assert len(said) == 1 and why in said[0], caplog.text
    assert cached_blobs(tmp_path) == []


#: What httpx raises when a chunked body's ending does not come (h11: no last chunk).
UNENDED = httpx.RemoteProtocolError("peer closed connection without sending complete message body")


class EndBrokeOff(Upstream):
    """Every blob body (the first GET's, with ``rests`` a Range GET's too) brings all its bytes,
    then breaks off where its chunked ending should be; with or without a Content-Length
    (``length``). A Range GET from the blob's end is answered 416, as a registry does."""

    def __init__(self, length: bool, rests: bool = False) -> None:
        super().__init__()
        self.length, self.rests = length, rests

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test" or request.url.path == "/v2/":
            return super().__call__(request)
        ranged = request.headers.get("range")
        self.ranges.append(ranged)
        start = 0 if ranged is None else int(ranged.removeprefix("bytes=").removesuffix("-"))
        if start >= len(BLOB):
            headers = {"Content-Range": f"bytes */{len(BLOB)}", "Content-Length": "0"}
            return httpx.Response(416, headers=headers)
        headers = (
            {}
            if ranged is None
            else {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        )
        if self.length:
            headers["Content-Length"] = str(len(BLOB) - start)
        broken = ranged is None or self.rests
        stream = Pieces(BLOB[start:], 65536, UNENDED if broken else None)
        return httpx.Response(200 if ranged is None else 206, headers=headers, stream=stream)


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
async def test_a_body_that_broke_off_after_its_last_byte_is_the_whole_blob(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, length: bool
) -> None:
    """The upstream's body brings every byte of the blob, then breaks off where its chunked
    ending should be (a proxy that closes early): the bytes are the blob, verified, so its
    client gets it whole and it is cached; no rest is asked for (from the blob's end: a 416,
    which failed the fill and cut the client before its last byte, every time)."""
    upstream = EndBrokeOff(length)
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.INFO, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
async def test_a_followers_rest_that_broke_off_after_its_last_byte_is_the_whole_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, length: bool
) -> None:
    """The disk fails under the fill; its client's rest from the upstream brings every byte,
    then breaks off where its chunked ending should be: the client gets the whole blob,
    verified, with no rest asked from the blob's end."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = EndBrokeOff(length, rests=True)
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None, f"bytes={HALF}-"]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w for w in warned if "cannot write" not in w] == [], warned


#: This review's loopback address and port (its range: 127.0.0.206-209, ports 9500-9549).
HOST, PORT = "127.0.0.206", 9500


class UnendedHandler(QuietHandler):
    """A registry with no auth whose blob answers (the whole, or a 206 for a Range) are
    chunked, and close after their last data chunk: no ending (``0``, CRLF) comes. A Range
    from the blob's end is a 416. Records each blob GET's Range."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        seen: list[str | None] = self.server.seen  # type: ignore[attr-defined]
        if self.path == "/v2/":
            self.send_bytes(200, b"{}", "application/json")
            return
        ranged = self.headers.get("Range")
        seen.append(ranged)
        start = 0 if ranged is None else int(ranged.removeprefix("bytes=").removesuffix("-"))
        if start >= len(BLOB):
            self.send_bytes(416, b"", "text/plain", {"Content-Range": f"bytes */{len(BLOB)}"})
            return
        self.send_response(200 if ranged is None else 206)
        if ranged is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        rest = BLOB[start:]
        for at in range(0, len(rest), 300_000):
            piece = rest[at : at + 300_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.flush()
        self.close_connection = True  # the connection closes: no last chunk


class UnendedServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[QuietHandler] = UnendedHandler) -> None:
        super().__init__((HOST, PORT), handler)
        self.seen: list[str | None] = []


async def test_a_direct_fill_whose_chunked_answers_never_end_is_the_whole_blob(
    tmp_path: Path,
) -> None:
    """Byte-level, on the direct path (http.client reads the fill's body, httpx its rest): the
    upstream's chunked answers bring every byte, then close without their ending. The fill
    goes on after its body broke off (http.client drops the data of the read that hit the
    missing ending) with a Range GET, whose answer ends the same way: the blob is complete
    there, so its client gets it whole and it is cached, with no Range from the blob's end."""
    server = UnendedServer()
    thread = threading.Thread(target=server.serve_forever, name="unended", daemon=True)
    thread.start()
    try:
        config = load_config(
            {"upstream.registry": f"http://{HOST}:{PORT}", "cache.dir": str(tmp_path / "cache")},
            environ={},
        )
        app = create_app(config, probe=False)
        async with app.test_app():
            answer = await call_asgi(app, "GET", PATH, host="mirror.test")
            await committed(app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert server.seen[0] is None and all(r != f"bytes={len(BLOB)}-" for r in server.seen)
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


@pytest.mark.parametrize("more", [4000, -4000], ids=["longer", "shorter"])
@pytest.mark.parametrize("why", ["broke-off", "disk-failed"])
async def test_a_206_whose_length_is_not_its_ranges_fails_at_once_unread(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    more: int,
    why: str,
) -> None:
    """The rest is asked for (the fill's body broke off, or the disk failed under it) and the
    206's Content-Range is the rest, but its Content-Length says another length: it is not
    this blob's rest (the README: 'an answer whose Content-Range or length is not this blob's
    rest fails the download at once, unread'). Nothing of it is read; the client is cut
    before its last byte with one WARNING naming the answer."""
    offset = 300_000 if why == "broke-off" else HALF
    span = len(BLOB) - offset
    headers = {
        "Content-Range": f"bytes {offset}-{len(BLOB) - 1}/{len(BLOB)}",
        "Content-Length": str(span + more),
    }
    upstream = WrongRest(206, headers, (BLOB[offset:] + b"j" * max(more, 0))[: span + more])
    if why == "broke-off":
        upstream.cut_after = offset
    else:
        monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.INFO, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200 and not answer.complete
    assert len(answer.body) < len(BLOB) and answer.body == BLOB[: len(answer.body)]
    assert upstream.ranges == [None, f"bytes={offset}-"] and upstream.read == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    warned = [w for w in warned if "cannot write" not in w]  # the disk's own line
    assert len(warned) == 1, warned
    assert f"registry.test answered bytes={offset}- with " in warned[0], warned
    assert cached_blobs(tmp_path) == []


class OddLengthHandler(QuietHandler):
    """A registry with no auth whose blob answer says a Content-Length that is no number
    (``²``: a digit to ``str.isdigit``, not to ``int``), then sends the blob and closes."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/v2/":
            self.send_bytes(200, b"{}", "application/json")
            return
        self.server.seen.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "\u00b2")  # sent as Latin-1: one byte, 0xB2
        self.end_headers()
        self.wfile.write(BLOB)
        self.wfile.flush()
        self.close_connection = True


async def test_a_content_length_that_is_no_number_is_no_length_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Byte-level, on the direct path: the upstream's blob answer says ``Content-Length: ²``,
    which ``str.isdigit`` takes for a digit and ``int`` refuses. The fill takes it as no
    length (as http.client does, which reads the body to the close): its client gets the blob
    whole and it is cached; no ValueError crashes the fill's task (an ERROR with a traceback,
    its client passed through, the answer's connection left open)."""
    server = UnendedServer(OddLengthHandler)
    thread = threading.Thread(target=server.serve_forever, name="odd-length", daemon=True)
    thread.start()
    try:
        config = load_config(
            {"upstream.registry": f"http://{HOST}:{PORT}", "cache.dir": str(tmp_path / "cache")},
            environ={},
        )
        app = create_app(config, probe=False)
        async with app.test_app():
            with caplog.at_level(logging.WARNING, logger="docxy"):
                answer = await call_asgi(app, "GET", PATH, host="mirror.test")
                await committed(app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert server.seen == [None]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


class Latin1HeaderHandler(QuietHandler):
    """A registry with no auth whose blob answer carries a header with a Latin-1 value (a
    CDN's object metadata: ``x-amz-meta-note: café``), then the blob with its length."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/v2/":
            self.send_bytes(200, b"{}", "application/json")
            return
        self.server.seen.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        self.send_bytes(200, BLOB, "application/octet-stream", {"X-Amz-Meta-Note": "caf\u00e9"})


async def test_a_direct_answer_with_a_latin1_header_value_is_filled_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Byte-level, on the direct path: the blob's answer has a header whose value is not ASCII
    (http.client hands it over decoded as Latin-1). The fill reads the blob as ever: its
    client gets it whole and it is cached; no UnicodeEncodeError (the answer's headers turned
    into httpx's for the upstream's health) crashes the fill's task."""
    server = UnendedServer(Latin1HeaderHandler)
    thread = threading.Thread(target=server.serve_forever, name="latin1", daemon=True)
    thread.start()
    try:
        config = load_config(
            {"upstream.registry": f"http://{HOST}:{PORT}", "cache.dir": str(tmp_path / "cache")},
            environ={},
        )
        app = create_app(config, probe=False)
        async with app.test_app():
            with caplog.at_level(logging.WARNING, logger="docxy"):
                answer = await call_asgi(app, "GET", PATH, host="mirror.test")
                await committed(app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert server.seen == [None]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


async def test_a_disk_full_mid_fill_on_the_loop_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked, found right: ENOSPC on a buffered write (a fill fed on the loop, httpx's
    body) half-way: its client gets the whole blob (the rest from the upstream), and once it
    is done the temp file is gone (its name at once, its blocks with the last close)."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = Upstream()
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        blobs = app.extensions["docxy"].cache.blobs
        await committed(app)
        assert list(blobs.tmp_dir.iterdir()) == []
        usage = blobs.usage()
        assert (usage.in_flight, usage.reserved, usage.pinned) == (0, 0, 0), usage
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None, f"bytes={HALF}-"]
    assert cached_blobs(tmp_path) == []


async def test_a_client_joining_while_the_commits_sync_fails_gets_the_whole_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked, found right (a race staged, not waited for): a client joins a fill whose blob
    verified while its commit's sync runs, and that sync then fails (EIO): the client reads
    the verified temp file it opened, whole, though the fill is given up and the file removed;
    nothing is cached and no temp file is left."""
    syncing, fail = threading.Event(), threading.Event()

    def sync_fails(fd: int) -> None:
        syncing.set()
        fail.wait(GUARD)
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fill, "_sync_and_close", sync_fails)
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30)
    digest = digest_of(BLOB)

    async def nothing() -> None:
        pass

    async def download() -> Download:
        return Download(len(BLOB), Pieces(BLOB, 100_000).__aiter__(), nothing)

    first = await blobs.fill(digest, download)
    assert isinstance(first, BlobFollower)
    reading = spawn("first client", first.read_all())
    await asyncio.wait_for(asyncio.to_thread(syncing.wait, GUARD), GUARD)
    joined = await blobs.fill(digest, download)  # verified: a reader of its temp file
    assert isinstance(joined, BlobReader)
    fail.set()
    assert await asyncio.wait_for(reading, GUARD) == BLOB
    await asyncio.wait_for(blobs.commits_done(), GUARD)
    assert await asyncio.wait_for(joined.read_all(), GUARD) == BLOB
    assert blobs.lookup(digest) is None
    assert list(blobs.tmp_dir.iterdir()) == []
