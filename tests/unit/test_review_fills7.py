"""Review of a cache fill's upstream paths (docxy/upstream/client.py, direct.py, the pull's
blob fill): an answer both chunked and with a Content-Length on httpx's path (the ``Range``
rest's), an answer in a transfer coding not read on either path, and how the waiters of a
fill whose fetch timed out are counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import Upstream, UpstreamClient, make_http_client, upstream_ssl_context
from docxy.upstream.direct import DirectSettings
from tests.unit import test_review_fills4 as fills4
from tests.unit.test_observe_routes import BLOB_DIGEST, stack
from tests.unit.test_observe_routes import Upstream as RoutesUpstream
from tests.unit.test_pull_blobs import BLOB, DIGEST, cached_blobs
from tests.unit.test_review_fills4 import RawServer, Respond
from tests.unit.test_review_fills5 import chunked, pull_blob

#: This review's loopback address and ports (its range: 127.0.88.0/24, ports 12570-12589).
HOST = "127.0.88.1"
GUARD = 10.0  # seconds any socket or wait takes, at most

#: The answer to one request (its head, as received): its bytes, and whether to close after.


def raw_server(port: int, respond: Respond) -> AbstractContextManager[RawServer]:
    """test_review_fills4's byte-level server, on this file's address."""
    return fills4.raw_server(port, respond, HOST)


def blob_answer(*head: str, status: str = "200 OK") -> Respond:
    """Every request answered ``status`` with ``head``'s headers and the blob chunked."""

    def respond(_: bytes) -> tuple[bytes, bool]:
        lines = "".join(f"{line}\r\n" for line in (f"HTTP/1.1 {status}", *head))
        return lines.encode() + b"\r\n" + chunked(BLOB), False

    return respond


def httpx_client() -> UpstreamClient:
    """The mirror's own httpx client (its pool, guarded transport), fills on httpx."""
    config = load_config({}, environ={})
    return UpstreamClient(make_http_client(config.upstream))


async def read_whole(client: UpstreamClient, upstream: Upstream, path: str) -> bytes:
    """A ``Range`` GET as a fill's rest sends it, its body read to its end, then closed."""
    asked = [("Range", "bytes=0-")]
    answer = await client.send(upstream, "GET", upstream.url(path), asked)
    try:
        return b"".join([chunk async for chunk in answer.aiter_raw()])
    finally:
        await answer.aclose()


# --- 1. chunked with a Content-Length, on httpx's path: the connection is not kept ----------


async def gets_on_httpx(port: int, respond: Respond) -> RawServer:
    """Two GETs of the blob, one after the other, through the mirror's httpx client."""
    with raw_server(port, respond) as server:
        client = httpx_client()
        upstream = Upstream(server.url)
        try:
            for _ in range(2):
                assert await read_whole(client, upstream, "/v2/a/blobs/x") == BLOB
        finally:
            await client.http.aclose()
    return server


async def test_a_chunked_answer_without_a_length_keeps_its_httpx_connection() -> None:
    """The control: a chunked answer read to its end leaves its connection in httpx's pool
    for the next request (one connection for two GETs), so the count below tells reuse."""
    server = await gets_on_httpx(12570, blob_answer("Transfer-Encoding: chunked"))
    assert (len(server.requests), server.connections) == (2, 1)


async def test_a_chunked_answer_with_a_content_length_closes_its_httpx_connection() -> None:
    """RFC 9112 6.3: an answer with both Transfer-Encoding and Content-Length is read by its
    chunks and its connection closed after it (whatever framed it on the way may have read
    another body). The direct path closed it; httpx's (a fill's ``Range`` rest, a fill through
    a transport of its own) gave it back to the pool, and the next request went on it. Now
    each GET there has a connection of its own too."""
    respond = blob_answer("Transfer-Encoding: chunked", f"Content-Length: {len(BLOB) // 2}")
    server = await gets_on_httpx(12571, respond)
    assert (len(server.requests), server.connections) == (2, 2)


def cut_then_framed_twice(head: bytes) -> tuple[bytes, bool]:
    """The registry: ``/v2/`` open; the blob's GET breaks off after half of it; its ``Range``
    rest (a 206) comes chunked with a Content-Length too."""
    if head.startswith(b"GET /v2/ "):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False
    ranged = [line for line in head.split(b"\r\n") if line.lower().startswith(b"range:")]
    if not ranged:
        start = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BLOB)}\r\n\r\n".encode()
        return start + BLOB[: len(BLOB) // 2], True
    offset = int(ranged[0].split(b"=")[1].rstrip(b"-"))
    lines = (
        "HTTP/1.1 206 Partial Content",
        f"Content-Range: bytes {offset}-{len(BLOB) - 1}/{len(BLOB)}",
        "Transfer-Encoding: chunked",
        "Content-Length: 7",
    )
    framed = "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n"
    return framed + chunked(BLOB[offset:]), False


async def test_a_fills_rest_framed_twice_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest of a broken fill (httpx's ``Range`` GET) answered chunked with a
    Content-Length: read by its chunks to the blob's end through the connection that is then
    closed; the client gets the blob whole and it is cached."""
    with raw_server(12574, cut_then_framed_twice) as server:
        answer = await pull_blob(tmp_path, monkeypatch, "direct", server.url)
    ranged = [head for head in server.requests if b"range:" in head.lower()]
    assert len(ranged) == 1, server.requests
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


# --- 2. a transfer coding not read: a bad answer in health, never unreachable --------------


@contextmanager
def direct_settings() -> Iterator[DirectSettings]:
    made = DirectSettings(upstream_ssl_context(), 5.0, 5.0)
    try:
        yield made
    finally:
        made.idle.close()


def assert_a_bad_answer(client: UpstreamClient, upstream: Upstream) -> None:
    """The upstream answered, badly: reachable, never counted unreachable, degraded, and on
    the status page's recent errors and /health's upstream part (its last error) as such."""
    health = client.health_of(upstream)
    assert health.failures["unreachable"] == 0, health.failures
    assert health.failures["bad_answer"] == 1, health.failures
    assert health.reachable is True
    assert health.healthy is False
    kinds = [kind for _, kind, _ in health.recent_failures]
    assert kinds == ["bad_answer"], health.recent_failures
    shown = health.as_dict()
    assert "Transfer-Encoding" in str(shown["last_error_message"]), shown
    assert shown["last_error"] is not None


async def test_a_transfer_coding_not_read_is_a_bad_answer_on_the_direct_path() -> None:
    """``Transfer-Encoding: gzip, chunked`` on a 200: the direct GET refuses it (502 for the
    fill's clients) and took it for a good answer, leaving no trace on /health (its last
    error, healthy) nor among the recent errors. Now it is recorded as a bad answer."""
    respond = blob_answer("Transfer-Encoding: gzip, chunked")
    with raw_server(12572, respond) as server, direct_settings() as made:
        upstream = Upstream(server.url)
        client = UpstreamClient(httpx.AsyncClient(), made)
        try:
            with pytest.raises(UpstreamUnavailable, match="gzip, chunked"):
                await direct.open_get(client, upstream, server.url + "/v2/a/blobs/x", [])
        finally:
            await client.http.aclose()
    assert len(server.requests) == 1
    assert_a_bad_answer(client, upstream)


async def test_a_transfer_coding_not_read_is_a_bad_answer_on_the_httpx_path() -> None:
    """The same answer through httpx (h11 refuses it: a RemoteProtocolError) counted as
    'upstream unreachable', and was asked twice (the retry of a connection that broke before
    an answer). Now it is recorded as the direct path records it, asked once."""
    with raw_server(12573, blob_answer("Transfer-Encoding: gzip, chunked")) as server:
        client = httpx_client()
        upstream = Upstream(server.url)
        try:
            with pytest.raises(UpstreamUnavailable) as raised:
                await read_whole(client, upstream, "/v2/a/blobs/x")
        finally:
            await client.http.aclose()
    assert_a_bad_answer(client, upstream)
    assert len(server.requests) == 1
    assert "Transfer-Encoding" in raised.value.message, raised.value.message


# --- 3. the waiters of a fill whose fetch timed out: counted as other failed fills' ---------


@dataclass
class FailingBlob(RoutesUpstream):
    """The blob's GET waits for ``release``, then fails ``how``: a read timeout, a 500, or
    the registry's 404 BLOB_UNKNOWN."""

    how: str = "timeout"
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/blobs/{BLOB_DIGEST}") and request.method == "GET":
            self.seen.append(f"{request.method} {request.url.path}")
            await self.release.wait()
            if self.how == "timeout":
                raise httpx.ReadTimeout("nothing came", request=request)
            if self.how == "500":
                return httpx.Response(500, content=b"{}")
            unknown = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}
            return httpx.Response(404, json=unknown)
        return self(request)


@pytest.mark.parametrize(
    ("how", "status", "reason"),
    [
        ("timeout", 504, "upstream-failed"),
        ("500", 500, "upstream-failed"),
        ("404", 404, "upstream-answer"),
    ],
)
async def test_the_waiters_of_a_failed_fill_count_as_its_starter_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, status: int, reason: str
) -> None:
    """Judged right as it is, kept so: a client that waited for a fill whose fetch timed out
    is ``uncached`` (reason ``upstream-failed``), as the fill's starter is, and as the waiters
    of a fill that failed otherwise (a 5xx: passed through; the registry's 404: its word) are.
    ``joined`` is for a client served from another's fill; nothing was served from this one,
    and the access log's reason says why for all alike."""
    upstream = FailingBlob(how=how)
    async with stack(tmp_path, upstream=upstream, transport_handler=upstream.handle) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        answers = await mirror.two_on_one_fill(upstream.release)
        seen = await mirror.scrape()
    assert [a.status for a in answers] == [status, status]
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert [line.split(" cache=")[1].split()[:2] for line in lines] == [
        ["uncached", f"reason={reason}"]
    ] * 2, lines
    assert seen["docxy_cache_requests_total{outcome=uncached,route=blob}"] == 2
    assert not seen.get("docxy_cache_requests_total{outcome=joined,route=blob}")
