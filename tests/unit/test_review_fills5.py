"""Review of a cache fill's framing and its rests: an answer with both Transfer-Encoding and
Content-Length, a close-delimited 206 cut short, and a client's rest of a blob of unknown size
that runs past the blob."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.cache import fill
from docxy.config import load_config
from docxy.core import headers
from docxy.http import app as app_module
from docxy.http.app import create_app
from lab.bed.httpserver import QuietHandler
from tests.unit import fakes
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_pull_blobs import BLOB, DIGEST, HALF, cached_blobs, committed, mirror
from tests.unit.test_review_fills import AUTH, PATH, SETTINGS, LongRest

#: This review's loopback address and port (its range: 127.0.45.1-9, ports 10400-10449).
HOST, PORT = "127.0.45.1", 10400

#: Writes one blob answer: the handler, and the start of the Range asked (None: no Range).
Answer = Callable[[QuietHandler, int | None], None]


class ScriptedHandler(QuietHandler):
    """A registry with no auth whose blob answers the server's ``answer`` writes, byte-level;
    records each blob GET's Range."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/v2/":
            self.send_bytes(200, b"{}", "application/json")
            return
        ranged = self.headers.get("Range")
        self.server.seen.append(ranged)  # type: ignore[attr-defined]
        start = None if ranged is None else int(ranged.removeprefix("bytes=").removesuffix("-"))
        self.server.answer(self, start)  # type: ignore[attr-defined]
        self.wfile.flush()


class Scripted(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer) -> None:
        super().__init__((HOST, PORT), ScriptedHandler)
        self.answer = answer
        self.seen: list[str | None] = []


@contextmanager
def scripted(answer: Answer) -> Iterator[Scripted]:
    server = Scripted(answer)
    thread = threading.Thread(target=server.serve_forever, name="fills5", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def pull_blob(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str = "direct",
    registry: str | None = None,
) -> AsgiAnswer:
    """A client's GET of the blob from a mirror of the scripted ``registry`` (this review's
    HOST and PORT, as they are at the call), its fill made directly (http.client) or,
    ``path="httpx"``, through httpx (h11)."""
    if path == "httpx":  # as for a client with a transport of its own: fills on httpx
        monkeypatch.setattr(app_module, "direct_settings", lambda *_: None)
    config = load_config(
        {
            "upstream.registry": registry or f"http://{HOST}:{PORT}",
            "cache.dir": str(tmp_path / "cache"),
        },
        environ={},
    )
    app = create_app(config, probe=False)
    async with app.test_app():
        answer = await call_asgi(app, "GET", PATH, host="mirror.test")
        await committed(app)
    return answer


def chunked(data: bytes, piece: int = 300_000) -> bytes:
    """``data`` in chunked framing, its ending included."""
    framed = [
        b"%x\r\n%s\r\n" % (len(data[at : at + piece]), data[at : at + piece])
        for at in range(0, len(data), piece)
    ]
    return b"".join(framed) + b"0\r\n\r\n"


# 1. Transfer-Encoding and Content-Length both.


def chunked_and_length(coding: str, length: int) -> Answer:
    def answer(handler: QuietHandler, start: int | None) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", coding)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(chunked(BLOB))

    return answer


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_a_chunked_answer_with_a_content_length_is_read_as_chunked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The blob's answer is chunked and says a Content-Length (here half the blob's):
    Transfer-Encoding overrides it (RFC 9112 6.3), on either path. The fill takes the blob's
    length for unknown (it announced the Content-Length, then found the chunked body ran past
    it: the fill failed, its client cut at half the blob); the client gets it whole, verified,
    without that length, and it is cached."""
    with scripted(chunked_and_length("chunked", HALF)) as server:
        answer = await pull_blob(tmp_path, monkeypatch, path)
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert answer.headers.get("content-length") in (None, str(len(BLOB)))
    assert server.seen == [None]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_an_answer_in_a_transfer_coding_other_than_chunked_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The blob's answer says ``Transfer-Encoding: gzip, chunked`` and a Content-Length:
    http.client reads a body whose last coding is not exactly ``chunked`` by its
    Content-Length (the direct fill took the chunk framing for the blob's bytes, sent them to
    its client, then failed the digest); httpx (h11) refuses it. Both refuse it now: no byte
    of it reaches the client as the blob, which gets an error, and nothing is cached."""
    with scripted(chunked_and_length("gzip, chunked", len(BLOB))) as server:
        answer = await pull_blob(tmp_path, monkeypatch, path)
    assert answer.status == 502, (answer.status, answer.body[:200])
    assert BLOB[:64] not in answer.body
    assert server.seen and all(r is None for r in server.seen)
    assert cached_blobs(tmp_path) == []


def test_an_answer_with_a_transfer_coding_has_no_length_to_trust() -> None:
    """The one reading of a length, for a fill and for a relayed answer alike."""
    assert headers.body_length([("Content-Length", "10")]) == 10
    framed = [("Transfer-Encoding", "chunked"), ("Content-Length", "10")]
    assert headers.body_length(framed) is None
    relayed = headers.response_headers([("Transfer-Encoding", "chunked"), ("Content-Length", "10")])
    assert relayed == []


# 2. A close-delimited 206 cut short.


def cut_rests(first: int, rests: list[int]) -> Answer:
    """The whole blob's answer (with its length) breaks off after ``first`` bytes; each Range
    GET is answered 206 with its Content-Range and no length (the body runs to the close), the
    n-th cleanly closed after ``rests[n]`` bytes (the last ones in full)."""
    answered: list[int] = []

    def answer(handler: QuietHandler, start: int | None) -> None:
        handler.close_connection = True
        if start is None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(BLOB)))
            handler.end_headers()
            handler.wfile.write(BLOB[:first])
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent = rests[len(answered)] if len(answered) < len(rests) else len(BLOB)
        answered.append(start)
        handler.wfile.write(BLOB[start : start + sent])

    return answer


async def test_a_close_delimited_rest_cut_short_is_resumed_not_taken_for_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fill's body breaks off; the rest asked for comes as a 206 without a length (to the
    close), and the upstream closes it cleanly short of the blob's end, twice. Its
    Content-Range says where the blob ends: each short close is a break to go on from (it was
    taken for the blob's end, and the fill failed at the verify, its client cut); the third
    rest brings the end, the client gets the whole blob and it is cached."""
    with scripted(cut_rests(300_000, [200_000, 200_000])) as server:
        answer = await pull_blob(tmp_path, monkeypatch)
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert server.seen[0] is None and len(server.seen) == 4, server.seen
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


# 3. A client's rest of a blob of unknown size, with junk after it.


class UnknownLengthLongRest(LongRest):
    """The whole blob without a length (chunked); a Range GET answered with the blob's rest,
    then ``extra`` (see :class:`LongRest`)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if request.url.host == "auth.test" or request.headers.get("range") is not None:
            return answer
        if answer.status_code != 200 or request.url.path == "/v2/":
            return answer
        return httpx.Response(200, stream=fakes.Body.of(BLOB))


@pytest.mark.parametrize("pieces", [len(BLOB), HALF // 4], ids=["with-last-byte", "after-it"])
async def test_a_followers_rest_of_a_blob_of_unknown_size_never_gives_junk_past_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    pieces: int,
) -> None:
    """The blob's length is unknown (its answer chunked); the disk fails under the fill, and
    its client's rest (a 206 whose Content-Range says the blob's end) sends junk after the
    blob's last byte. The client never gets a byte past the blob, nor its last byte (the
    junk went out to it, all of it but its last byte, before the digest check cut it)."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = UnknownLengthLongRest(b"junk" * 1000, length=False, pieces=pieces)
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200 and not answer.complete
    assert len(answer.body) < len(BLOB), len(answer.body) - len(BLOB)
    assert answer.body == BLOB[: len(answer.body)]
    assert upstream.ranges == [None, f"bytes={HALF}-"]
    said = [r.getMessage() for r in caplog.records if "the client is cut" in r.getMessage()]
    assert len(said) == 1 and "ran past the blob's" in said[0], caplog.text
    assert cached_blobs(tmp_path) == []


def unknown_length_then_junk(first: int, junk: bytes) -> Answer:
    """The whole blob chunked (its length unknown), cut after ``first`` bytes; a Range GET
    answered 206, chunked, with the blob's rest and ``junk`` after it."""

    def answer(handler: QuietHandler, start: int | None) -> None:
        handler.close_connection = True
        handler.send_response(200 if start is None else 206)
        if start is not None:
            handler.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        if start is None:
            handler.wfile.write(chunked(BLOB)[:first])  # cut inside a chunk: no ending
            return
        handler.wfile.write(chunked(BLOB[start:] + junk))

    return answer


async def test_a_fills_rest_of_a_blob_of_unknown_size_never_gives_junk_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fill's own body (chunked: the blob's length unknown) breaks off; its rest (a 206
    whose Content-Range says the blob's end) sends junk after the blob's last byte. The fill
    fails before writing past that end: its client never gets a byte past the blob, nor its
    last byte, and nothing is cached."""
    with scripted(unknown_length_then_junk(600_000, b"junk" * 100_000)) as server:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            answer = await pull_blob(tmp_path, monkeypatch)
    assert answer.status == 200 and not answer.complete
    assert len(answer.body) < len(BLOB), len(answer.body) - len(BLOB)
    assert answer.body == BLOB[: len(answer.body)]
    assert server.seen[0] is None and len(server.seen) == 2, server.seen
    failed = [r.getMessage() for r in caplog.records if "fill failed" in r.getMessage()]
    assert len(failed) == 1 and "ran past the blob's" in failed[0], caplog.text
    assert cached_blobs(tmp_path) == []
