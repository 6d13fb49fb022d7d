"""Review of a fill's upstream answers (docxy/upstream/direct.py, docxy/cache/fill.py): an
answer both chunked and with a Content-Length, a transfer coding the direct path refuses, and a
blob of unknown size whose answer ends short."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import Upstream, UpstreamClient, upstream_ssl_context
from docxy.upstream.direct import DirectSettings
from lab.bed.httpserver import QuietHandler
from tests.unit.test_pull_blobs import BLOB, DIGEST, HALF, cached_blobs
from tests.unit.test_review_fills5 import Answer, ScriptedHandler, chunked, pull_blob

#: This review's loopback address and ports (its range: 127.0.71.1-9, ports 11700-11749).
HOST = "127.0.71.1"
GUARD = 10.0  # seconds any socket waits, at most

#: The answer to one request (its head, as received): its bytes, and whether to close after.
Respond = Callable[[bytes], tuple[bytes, bool]]


class RawServer:
    """A byte-level HTTP/1.1 server on ``host``: each connection's requests answered in turn
    by ``respond`` (kept open unless it says close); counts connections and requests, so a
    test can tell whether a second request came on the first's connection."""

    def __init__(self, port: int, respond: Respond, host: str = HOST) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self.url = f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(GUARD)
        buffered = b""
        with conn:
            for _ in range(50):  # requests on one connection, bounded
                while b"\r\n\r\n" not in buffered and not self._stop.is_set():
                    try:
                        got = conn.recv(65536)
                    except OSError:
                        return
                    if not got:
                        return
                    buffered += got
                if self._stop.is_set():
                    return
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.requests.append(head)
                answer, close = self.respond(head)
                try:
                    conn.sendall(answer)
                except OSError:
                    return
                if close:
                    return

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(GUARD)


@contextmanager
def raw_server(port: int, respond: Respond, host: str = HOST) -> Iterator[RawServer]:
    server = RawServer(port, respond, host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def settings() -> Iterator[DirectSettings]:
    made = DirectSettings(upstream_ssl_context(), 5.0, 5.0)
    try:
        yield made
    finally:
        made.idle.close()


def blob_answer(*head: str) -> Respond:
    """Every request answered 200 with ``head``'s headers and the blob chunked."""

    def respond(_: bytes) -> tuple[bytes, bool]:
        lines = "".join(f"{line}\r\n" for line in ("HTTP/1.1 200 OK", *head))
        return lines.encode() + b"\r\n" + chunked(BLOB), False

    return respond


def get_whole(made: DirectSettings, url: str) -> bytes:
    """One direct GET, its body read to its end, then closed as a fill closes it."""
    answer = direct.get(made, url, [])
    body = b""
    for _ in range(10_000):  # bounded
        data = answer.body.read(1 << 20)
        if not data:
            break
        body += data
    answer.close()
    return body


# --- 1. chunked with a Content-Length: the connection is not kept ---------------------------


def test_a_chunked_answer_without_a_length_keeps_its_connection() -> None:
    """The control: a chunked answer read to its end leaves its connection for the next GET
    (one connection for two GETs), so the count below tells a kept connection."""
    with raw_server(11700, blob_answer("Transfer-Encoding: chunked")) as server, settings() as s:
        assert get_whole(s, server.url + "/blob") == BLOB
        assert get_whole(s, server.url + "/blob") == BLOB
    assert (len(server.requests), server.connections) == (2, 1)


def test_a_chunked_answer_with_a_content_length_closes_its_connection() -> None:
    """RFC 9112 6.3: an answer with both Transfer-Encoding and Content-Length is read by its
    chunks, the length ignored, and its connection closed after it (the two disagree: whatever
    framed it on the way, a proxy, may have read another body). It was kept: the next GET went
    on that connection. Now each GET has a connection of its own."""
    respond = blob_answer("Transfer-Encoding: chunked", f"Content-Length: {len(BLOB) // 2}")
    with raw_server(11701, respond) as server, settings() as s:
        assert get_whole(s, server.url + "/blob") == BLOB
        assert get_whole(s, server.url + "/blob") == BLOB
    assert (len(server.requests), server.connections) == (2, 2)


# --- 2. a transfer coding the direct path does not read: answered, not unreachable ----------


async def test_a_refused_transfer_coding_is_an_answer_not_unreachable() -> None:
    """``Transfer-Encoding: gzip, chunked`` is refused (502 for the fill's clients), but the
    upstream was reached and answered: /health said it ``unreachable`` and
    ``docxy_upstream_errors_total{kind="unreachable"}`` counted it, as for a connection that
    failed. Now it is an answer (as a redirect that leads nowhere is): reachable."""
    respond = blob_answer("Transfer-Encoding: gzip, chunked")
    with raw_server(11702, respond) as server, settings() as s:
        upstream = Upstream(server.url)
        client = UpstreamClient(httpx.AsyncClient(), s)
        try:
            with pytest.raises(UpstreamUnavailable, match="gzip, chunked"):
                await direct.open_get(client, upstream, server.url + "/v2/a/blobs/x", [])
        finally:
            await client.http.aclose()
    health = client.health_of(upstream)
    assert len(server.requests) == 1
    assert health.failures["unreachable"] == 0, health.failures
    assert health.reachable is True


# --- 4. a blob of unknown size whose answer ends cleanly short: one rest asked -------------

SHORT_PORT = 11710


class Scripted(ThreadingHTTPServer):
    """test_review_fills5's scripted registry (its handler), on this review's address."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, answer: Answer) -> None:
        super().__init__((HOST, port), ScriptedHandler)
        self.answer = answer
        self.seen: list[str | None] = []


@contextmanager
def scripted(port: int, answer: Answer) -> Iterator[Scripted]:
    server = Scripted(port, answer)
    thread = threading.Thread(target=server.serve_forever, name="fills4", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(GUARD)


def short_then(rest: str) -> Answer:
    """The whole blob's answer is chunked (no length) and ends cleanly after half the blob;
    a Range GET is answered ``rest``: ``206`` (the rest, with its Content-Range) or ``416``."""

    def answer(handler: QuietHandler, start: int | None) -> None:
        if start is None:
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.write(chunked(BLOB[:HALF]))
            return
        if rest == "416":
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(BLOB)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        handler.send_header("Content-Length", str(len(BLOB) - start))
        handler.end_headers()
        handler.wfile.write(BLOB[start:])

    return answer


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_a_blob_of_unknown_size_that_ends_short_goes_on_with_a_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The blob's answer is chunked (its size unknown to the fill) and ends cleanly after half
    of it: the fill took that for the blob's end, failed the digest check and cut its client,
    though a Range GET from there gives the rest (as it does for a fill of known size). Now it
    asks that rest once: the client gets the blob whole and it is cached."""
    port = SHORT_PORT + (path == "httpx")
    with scripted(port, short_then("206")) as server:
        answer = await pull_blob(tmp_path, monkeypatch, path, f"http://{HOST}:{port}")
    assert server.seen == [None, f"bytes={HALF}-"]
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_a_blob_of_unknown_size_that_ends_short_and_has_no_rest_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The same, but the registry answers the Range 416 (nothing past those bytes): the bytes
    really are all it has, and not the blob. The fill fails as before (its client cut, nothing
    cached) after that one Range GET: no more are asked."""
    port = SHORT_PORT + 2 + (path == "httpx")
    with scripted(port, short_then("416")) as server:
        answer = await pull_blob(tmp_path, monkeypatch, path, f"http://{HOST}:{port}")
    assert server.seen == [None, f"bytes={HALF}-"]
    assert not (answer.complete and answer.body == BLOB)
    assert cached_blobs(tmp_path) == []
