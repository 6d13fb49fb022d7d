"""Review of 398e824, 5346406 and 7cb3219 (framing of upstream answers, rests that end short):
the shared store's length check against an upstream that ignores ``Range``, a rest that ends
short after the shared store's body broke off, a relayed ``HEAD``'s ``Content-Length``, and
``Transfer-Encoding: identity`` on both fill paths."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.cache import fill
from docxy.cache.resuming import EndedShort
from docxy.http.responses import relay
from docxy.http.state import mirror_state
from docxy.shared.objects import ObjectStoreError
from lab.bed.httpserver import QuietHandler
from tests.unit import fakes
from tests.unit import test_review_fills5 as fills5
from tests.unit.asgi import call_asgi
from tests.unit.test_observe_routes import BLOB, SHARED, STORE_HOST, stack
from tests.unit.test_pull_blobs import BLOB as LARGE_BLOB
from tests.unit.test_pull_blobs import HALF, cached_blobs, mirror
from tests.unit.test_pull_blobs import Upstream as PullUpstream
from tests.unit.test_review_fills import AUTH, PATH, SETTINGS
from tests.unit.test_review_fills5 import Answer
from tests.unit.test_review_shared3 import RangedRegistry, cache
from tests.unit.test_shared_resume import CUT_AT, CutBucket, Rest, blob_path, cached, object_body

#: This review's loopback address and port (its range: 127.0.53.1-9, ports 10800-10849).
HOST, PORT = "127.0.53.1", 10800


class Unsized(httpx.AsyncByteStream):
    """A body of no stated length (chunked, or to the close), ended cleanly."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


# 1. An upstream that ignores Range does not confirm a shared object's length.


class IgnoresRange(RangedRegistry):
    """The bucket's object is ``extra`` bytes longer than the blob; the registry ignores
    ``Range`` and answers the whole blob, 200, chunked (no length)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if wanted is None or request.url.host == STORE_HOST:
            return super().__call__(request)
        self.seen.append(f"{request.method} {request.url.path} {wanted}")
        chunked = {"Transfer-Encoding": "chunked"}
        return httpx.Response(200, headers=chunked, stream=Unsized(BLOB))


async def test_a_200_without_a_length_does_not_confirm_a_shared_objects_length(
    tmp_path: Path,
) -> None:
    """The shared object says 5000 bytes more than the blob, more than the cache has free: its
    last byte is asked of the upstream, which ignores the ``Range`` and answers a chunked
    ``200``. That says no length; 5346406 gave such a rest the length the caller expected (the
    object's), which the tier took for the upstream confirming it: the object was taken, the
    other cached blob evicted for it, the fill failed its check and the client got a ``200``
    of no byte, then a cut. The blob comes from the upstream, whole, and nothing is evicted."""
    registry = IgnoresRange(5000)
    settings = {**SHARED, "cache.max_size": str(2 * len(BLOB) + 100)}
    async with stack(tmp_path, settings=settings, upstream=registry) as mirror:
        store = mirror_state(mirror.app).running.blobs.store
        assert store is not None
        other = await cache(store, bytes(len(BLOB)))
        pulled = await mirror.get(blob_path())
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
        still = store.holds(other)
    assert (pulled.status, pulled.complete, pulled.body == BLOB) == (200, True, True)
    assert [line for line in registry.seen if "bytes=" in line] == [
        f"GET {blob_path()} bytes={len(BLOB) + 5000 - 1}-"
    ]
    assert f"GET {blob_path()}" in registry.seen  # the whole blob, from the upstream
    assert (health["hits"], still) == (0, True)


def ranges_ignored_rests_short(first: int, rests: list[int]) -> Answer:
    """The whole blob's answer (with its length) breaks off after ``first`` bytes; each Range
    GET is ignored: a ``200`` of the whole blob without a length (to the close), the n-th
    cleanly closed ``rests[n]`` bytes past the offset asked (the last ones in full)."""
    answered: list[int] = []

    def answer(handler: QuietHandler, start: int | None) -> None:
        handler.close_connection = True
        handler.send_response(200)
        if start is None:
            handler.send_header("Content-Length", str(len(LARGE_BLOB)))
            handler.end_headers()
            handler.wfile.write(LARGE_BLOB[:first])
            return
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent = rests[len(answered)] if len(answered) < len(rests) else len(LARGE_BLOB)
        answered.append(start)
        handler.wfile.write(LARGE_BLOB[: start + sent])

    return answer


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_a_200_rest_without_a_length_cut_short_is_resumed_by_the_blobs_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """What 5346406 gave a rest of no length from the expected size, the fill keeps from the
    blob's own answer (its Content-Length): the body breaks off, the upstream ignores the
    ``Range`` and answers ``200`` to the close, closed cleanly short, twice; each is a break,
    and the third brings the end: the client gets the whole blob and it is cached."""
    monkeypatch.setattr(fills5, "HOST", HOST)
    monkeypatch.setattr(fills5, "PORT", PORT + 1)
    with fills5.scripted(ranges_ignored_rests_short(300_000, [100_000, 100_000])) as server:
        answer = await fills5.pull_blob(tmp_path, monkeypatch, path)
    assert answer.status == 200 and answer.complete and answer.body == LARGE_BLOB
    assert server.seen == [None, "bytes=300000-", "bytes=400000-", "bytes=500000-"]
    assert len(cached_blobs(tmp_path)) == 1


class IgnoredRangesShort(PullUpstream):
    """The registry ignores ``Range``: a ranged GET gets the whole blob, ``200``, chunked (no
    length), the first closed cleanly 1000 bytes past the offset asked, the next whole."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ranged = request.headers.get("range")
        if ranged is None or request.url.host == "auth.test":
            return super().__call__(request)
        self.ranges.append(ranged)
        start = int(ranged.removeprefix("bytes=").removesuffix("-"))
        first = sum(r is not None for r in self.ranges) == 1
        sent = LARGE_BLOB[: start + 1000] if first else LARGE_BLOB
        return httpx.Response(200, stream=fakes.Body.of(sent))


async def test_a_followers_200_rest_without_a_length_cut_short_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the rest a client gets for itself when the disk fails under its fill: the
    blob's length is the fill's (its answer's Content-Length), so a ``200`` of no length that
    ends cleanly short of it is a break to go on from, and the client gets the blob whole."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = IgnoredRangesShort()
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == LARGE_BLOB
    assert upstream.ranges == [None, f"bytes={HALF}-", f"bytes={HALF + 1000}-"]


# 2. A rest that ends short after the shared store's body broke off is resumed.


class ShortFirstRest(CutBucket):
    """The bucket's object breaks off after ``CUT_AT`` bytes; the registry answers each
    ranged GET with a ``206`` and its ``Content-Range``, no length (to the close): the first
    closed cleanly after 1000 bytes, the next whole."""

    def __init__(self) -> None:
        super().__init__("honoured")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.method != "GET" or "/blobs/" not in request.url.path or wanted is None:
            return super().__call__(request)
        self.ranged.append(wanted)
        start = int(wanted.removeprefix("bytes=").removesuffix("-"))
        span = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        sent = BLOB[start : start + 1000] if len(self.ranged) == 1 else BLOB[start:]
        return httpx.Response(206, headers=span, stream=Unsized(sent))


async def test_a_short_rest_after_the_shared_body_broke_off_is_resumed(tmp_path: Path) -> None:
    """README: a rest that ends short of the blob's end is a break, resumed (up to three
    times). After the shared store's body broke off, the hand-over's own Resuming (allowed
    once) took the short end for its own break and gave up: the fill failed, its client got a
    ``200`` then a cut. The short end goes on to the fill's resume: a second rest from where
    the first ended, the blob whole to the client and cached."""
    upstream = ShortFirstRest()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        got = await mirror.get(blob_path())
        await mirror.committed()
        kept = cached(tmp_path)
    assert (got.status, got.complete, got.body == BLOB) == (200, True, True)
    assert upstream.ranged == [f"bytes={CUT_AT}-", f"bytes={CUT_AT + 1000}-"]
    assert [path.read_bytes() == BLOB for path in kept] == [True]


async def test_the_hand_over_raises_a_short_rest_as_it_is() -> None:
    """The object body's hand-over gives its short end to the fill (EndedShort, a break the
    fill's Resuming goes on from), not a give-up of its own (BrokeOff)."""
    rest, told = Rest([BLOB[CUT_AT : CUT_AT + 10]], breaks=False), list[ObjectStoreError]()
    body = object_body(rest, told)
    got = b""
    with pytest.raises(EndedShort):
        async for chunk in body.chunks():
            got += chunk
    assert got == BLOB[: CUT_AT + 10] and rest.asked == [CUT_AT] and rest.closed == 1
    assert not body.finished()
    await body.close()


# 3. A relayed HEAD keeps its Content-Length.


def test_a_relayed_head_keeps_its_content_length_beside_a_transfer_encoding() -> None:
    """A HEAD has no body, so no framing for its Transfer-Encoding to override: its
    Content-Length (the blob's) is relayed, as relay's docstring says. A GET's is dropped."""
    said = [("Transfer-Encoding", "chunked"), ("Content-Length", "1234")]
    realm = "https://mirror.test/auth/token"
    head = relay(httpx.Response(200, headers=said), method="HEAD", realm=realm, library_prefix=True)
    assert head.headers.get("Content-Length") == "1234"
    assert "Transfer-Encoding" not in head.headers
    get = relay(httpx.Response(200, headers=said), method="GET", realm=realm, library_prefix=True)
    assert get.headers.get("Content-Length") is None


# 4. Transfer-Encoding: identity, refused on both paths alike.


def identity_and_length(handler: QuietHandler, start: int | None) -> None:
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "identity")
    handler.send_header("Content-Length", str(len(LARGE_BLOB)))
    handler.end_headers()
    handler.wfile.write(LARGE_BLOB)


@pytest.mark.parametrize("path", ["direct", "httpx"])
async def test_an_identity_transfer_coding_is_refused_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """``Transfer-Encoding: identity`` (gone from HTTP since RFC 7230) with a Content-Length:
    h11 (the httpx path) refuses it, and the direct path does so too (http.client would read
    it by its length): the same answer, 502, whichever path fills, and nothing cached."""
    monkeypatch.setattr(fills5, "HOST", HOST)
    monkeypatch.setattr(fills5, "PORT", PORT)
    with fills5.scripted(identity_and_length) as server:
        answer = await fills5.pull_blob(tmp_path, monkeypatch, path)
    assert answer.status == 502, (answer.status, answer.body[:200])
    assert LARGE_BLOB[:64] not in answer.body
    assert server.seen and all(r is None for r in server.seen)
    assert cached_blobs(tmp_path) == []
