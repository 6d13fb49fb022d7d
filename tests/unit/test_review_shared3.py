"""Review findings on the shared tier (third round), each a test that failed before its mend."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FetchFailed
from docxy.cache.fill import Download
from docxy.core.digests import Digest, digest_of
from docxy.http.state import mirror_state
from docxy.shared import tier as tier_module
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier
from tests.unit.test_observe_routes import (
    BLOB,
    BLOB_DIGEST,
    SHARED,
    STORE_HOST,
    Upstream,
    blob_path,
    stack,
)

GUARD = 30.0  # seconds before a would-be hang becomes a test failure
STORE = "http://127.0.0.81:9"  # never connected to: every request goes to a MockTransport
BUCKET = "docxy-cache"
REQUEST_ID = {"x-amz-request-id": "18EE17D3BF0E9510"}  # every S3 answer has one
NO_SUCH_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)
TIMED_OUT = (
    b"<Error><Code>RequestTimeout</Code><Message>Your socket connection to the server was not "
    b"read from or written to within the timeout period.</Message></Error>"
)
MAX_SIZE = 1 << 20
LAYER = b"the upstream's layer " * 100
NGINX_404 = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"

Handler = Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """An answer whose body is still to be read, as from the network; S3's unless ``headers``
    say otherwise."""
    said = {**REQUEST_ID, "content-length": str(len(body))} if headers is None else headers
    return httpx.Response(status, headers=said, stream=httpx.ByteStream(body))


def s3_missing(request: httpx.Request) -> httpx.Response:
    """S3's (and SeaweedFS's) answer for a key that is not there: a HEAD has no body."""
    if request.method == "HEAD":
        return answer(404, headers={**REQUEST_ID, "content-type": "application/xml"})
    return answer(404, NO_SUCH_KEY)


def open_tier(blobs: DiskBlobStore, handler: Handler) -> tuple[SharedTier, httpx.AsyncClient]:
    where = Bucket(STORE, BUCKET, "us-east-1", "docxy", "not-a-secret")
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return SharedTier(ObjectStore(where, http), blobs, 1), http


async def cache(blobs: DiskBlobStore, data: bytes) -> Digest:
    """``data`` filled into ``blobs`` (as from the upstream) and committed; its digest."""
    digest = digest_of(data)
    stream = await blobs.fill(digest, lambda: whole(data))
    assert await asyncio.wait_for(stream.read_all(), GUARD) == data
    await asyncio.wait_for(blobs.commits_done(), GUARD)
    return digest


async def whole(data: bytes, offset: int = 0) -> Download:
    async def chunks() -> AsyncIterator[bytes]:
        yield data[offset:]

    async def close() -> None:
        pass

    return Download(len(data) - offset, chunks(), close)


# --- 1. an object's claimed length evicts the local cache ---------------------------------------

CLAIMED = 900_000  # the planted object's length: most of the cache


class Registry:
    """The upstream's blob (``LAYER``), as the pull path's ``rest`` and a fill's fetch get it:
    a ``Range`` past its end is refused (a 416), as a registry does."""

    def __init__(self) -> None:
        self.asked: list[int] = []  # the offset of each ranged GET
        self.fetched = 0  # whole GETs

    async def rest(self, offset: int, size: int | None) -> Download:
        self.asked.append(offset)
        if offset >= len(LAYER):
            raise FetchFailed("registry.test answered 416")
        if size is not None and size != len(LAYER):
            raise FetchFailed(f"registry.test answered Content-Range: not of the blob's {size}")
        return await whole(LAYER, offset)

    async def fetch(self) -> Download:
        self.fetched += 1
        return await whole(LAYER)


def planted(request: httpx.Request) -> httpx.Response:
    """A bucket writer's object under the layer's key: ``CLAIMED`` bytes, not the layer."""
    if request.method == "GET" and request.url.path.endswith(digest_of(LAYER).hex):
        return answer(200, bytes(CLAIMED))
    return s3_missing(request)


async def test_an_object_claiming_a_length_the_upstream_denies_evicts_nothing(
    tmp_path: Path,
) -> None:
    """The fill reserved the object's length before its first byte: four cached blobs were
    evicted for a planted object that then failed its digest. Now a length that needs room
    the cache does not have free is first asked of the upstream (the last byte of a blob that
    long); the upstream denies it, the fill is the upstream's, and once it is cached the object
    is known bad (corrupt, replaced by the upload)."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    kept = [await cache(blobs, bytes([n]) * 200_000) for n in range(4)]
    registry = Registry()
    tier, http = open_tier(blobs, planted)
    layer = digest_of(LAYER)
    async with http:

        async def fetch() -> Download:
            download = await tier.download(layer, registry.rest)
            if download is not None:
                return download

            async def close() -> None:
                await upstream.close()
                tier.filled(layer)

            upstream = await registry.fetch()
            return Download(upstream.size, upstream.chunks, close)

        stream = await blobs.fill(layer, fetch)
        try:
            body = await asyncio.wait_for(stream.read_all(), GUARD)
        except Exception as exc:  # noqa: BLE001 - the fill from the object failed
            body = repr(exc).encode()
        await asyncio.wait_for(blobs.commits_done(), GUARD)
        tier.uploads.cancel()
    assert [blobs.holds(digest) for digest in kept] == [True] * 4
    assert body == LAYER
    assert registry.asked == [CLAIMED - 1] and registry.fetched == 1
    assert (tier.counts.hits, tier.counts.corrupt) == (0, 1)


def good_object(request: httpx.Request) -> httpx.Response:
    if request.method == "GET" and request.url.path.endswith(digest_of(LAYER).hex):
        return answer(200, LAYER)
    return s3_missing(request)


async def test_an_object_the_upstream_confirms_is_filled_from_the_store(tmp_path: Path) -> None:
    """The other side: a length the upstream confirms is the object's to fill (eviction and
    all), and one that fits the room free asks the upstream nothing."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 4 * len(LAYER), write_buffer=0)
    await cache(blobs, bytes(3 * len(LAYER) + 1000))  # room for half the layer left
    registry = Registry()
    tier, http = open_tier(blobs, good_object)
    layer = digest_of(LAYER)
    async with http:
        download = await tier.download(layer, registry.rest)
        assert download is not None and download.size == len(LAYER)
        await download.close()
        assert registry.asked == [len(LAYER) - 1]
        roomy = DiskBlobStore.open(tmp_path / "roomy", MAX_SIZE, write_buffer=0)
        tier.blobs = roomy
        download = await tier.download(layer, registry.rest)
        assert download is not None and download.size == len(LAYER)
        await download.close()
    assert registry.asked == [len(LAYER) - 1]  # not asked again: it fit
    assert (tier.counts.hits, tier.counts.corrupt) == (2, 0)


class RangedRegistry(Upstream):
    """The registry answers a ranged blob GET with a ``206`` (as Distribution does); the bucket
    holds the blob's object, ``extra`` bytes longer than the blob when planted."""

    def __init__(self, extra: int = 0) -> None:
        super().__init__(in_bucket=True)
        self.extra = extra
        self.ranged: list[str] = []

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(BLOB_DIGEST[7:]):
            self.bucket_seen.append(f"GET {request.url.path}")
            return answer(200, BLOB + bytes(self.extra))
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if wanted is None or request.url.host == STORE_HOST:
            return super().__call__(request)
        self.seen.append(f"{request.method} {request.url.path} {wanted}")
        start = int(wanted.removeprefix("bytes=").removesuffix("-"))
        if start >= len(BLOB):
            return answer(416, headers={"Content-Range": f"bytes */{len(BLOB)}"})
        span = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        length = str(len(BLOB) - start)
        return answer(206, BLOB[start:], {"Content-Range": span, "Content-Length": length})


async def pull_beside_another(
    tmp_path: Path, registry: RangedRegistry, max_size: int
) -> tuple[dict[str, Any], bool]:
    """Through a mirror with the bucket and a cache of ``max_size`` holding another blob as
    large as ``BLOB``: pull ``BLOB`` (asserted whole), then its ``/health``'s ``shared`` and
    whether the other blob is still cached."""
    settings = {**SHARED, "cache.max_size": str(max_size)}
    async with stack(tmp_path, settings=settings, upstream=registry) as mirror:
        store = mirror_state(mirror.app).running.blobs.store
        assert store is not None
        other = await cache(store, bytes(len(BLOB)))
        pulled = await mirror.get(blob_path())
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
        still = store.holds(other)
    assert (pulled.status, pulled.body == BLOB) == (200, True)
    return health, still


@pytest.mark.parametrize("extra", [0, 1000, 5000])
async def test_the_pull_path_asks_the_upstream_for_a_length_that_would_evict(
    tmp_path: Path, extra: int
) -> None:
    """Through the mirror, the object's length more than the cache has free: it is first
    checked with a ranged GET of its last byte. The blob's own length (``extra`` 0, the cache
    with room for half of it) is confirmed, and the blob comes from the bucket. A planted
    object longer than the blob (the cache with room for the blob, not for the object) is
    denied (a ``Content-Range`` of another length, a ``416``): the blob comes from the
    upstream, nothing is evicted, and the object is known bad."""
    registry = RangedRegistry(extra)
    room = len(BLOB) // 2 if extra == 0 else len(BLOB) + 100
    health, still = await pull_beside_another(tmp_path, registry, len(BLOB) + room)
    ranged = [line for line in registry.seen if "bytes=" in line]
    assert ranged == [f"GET {blob_path()} bytes={len(BLOB) + extra - 1}-"]
    if extra:
        assert (health["hits"], health["corrupt"], still) == (0, 1, True)
        assert f"GET {blob_path()}" in registry.seen
    else:  # from the bucket, evicting what it must, as the upstream's own fill would
        assert (health["hits"], health["corrupt"], still) == (1, 0, False)
        assert f"GET {blob_path()}" not in registry.seen


class RangesFailing(RangedRegistry):
    """The registry in trouble for ranged GETs: a 503 (or the mirror's 429), as in an outage
    that lets nothing through."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.trouble = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("range") is None or request.url.host == STORE_HOST:
            return super().__call__(request)
        self.seen.append(f"{request.method} {request.url.path} {request.headers['range']}")
        return answer(self.trouble, headers={"Retry-After": "30"})


@pytest.mark.parametrize("status", [429, 503])
async def test_an_upstream_that_cannot_confirm_a_length_leaves_the_object_to_fill(
    tmp_path: Path, status: int
) -> None:
    """The upstream asked for the object's length answers 429/503: that says nothing of the
    object, and in an outage the bucket is what serves misses, so the object fills the blob
    (evicting what it must), as before the length was asked at all."""
    registry = RangesFailing(status)
    health, still = await pull_beside_another(tmp_path, registry, len(BLOB) + len(BLOB) // 2)
    assert [line for line in registry.seen if "bytes=" in line] == [
        f"GET {blob_path()} bytes={len(BLOB) - 1}-"
    ]
    assert (health["hits"], health["corrupt"], still) == (1, 0, False)
    assert f"GET {blob_path()}" not in registry.seen


# --- 2. a 404 that is not S3's NoSuchKey --------------------------------------------------------


def not_a_store(request: httpx.Request) -> httpx.Response:
    """A web server where the store should be (a wrong endpoint, a path-style setting the
    store does not take): 404 for everything, no S3 in it."""
    body = b"" if request.method == "HEAD" else NGINX_404
    return answer(404, body, {"content-type": "text/html", "content-length": str(len(body))})


async def test_a_404_that_is_no_s3_answer_is_the_store_failing_not_a_miss(
    tmp_path: Path,
) -> None:
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    tier, http = open_tier(blobs, not_a_store)
    async with http:
        assert await tier.download(digest_of(LAYER)) is None
    assert (tier.reachable, tier.counts.misses, tier.counts.errors) == (False, 0, 1)
    assert tier.last_error is not None and "GET answered 404" in tier.last_error
    assert "not an S3 store's answer" in tier.last_error


async def test_an_upload_to_no_s3_store_is_the_store_failing_not_a_refusal(
    tmp_path: Path,
) -> None:
    """The HEAD before the upload took the bare 404 for "not there", and the PUT's 404 was
    a refusal: nothing in /health said the store was not one. A HEAD's 404 with nothing of
    S3 in it is asked again as a GET, whose answer has no ``NoSuchKey`` either."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    layer = await cache(blobs, LAYER)
    tier, http = open_tier(blobs, not_a_store)
    async with http:
        tier.filled(layer)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert (tier.counts.upload_failed, tier.counts.errors) == (1, 1)
    assert tier.last_error is not None and "answered 404" in tier.last_error


def minio_no_bucket(request: httpx.Request) -> httpx.Response:
    """MinIO without the bucket: a HEAD's 404 says its code in a header."""
    if request.method == "HEAD":
        return answer(404, headers={**REQUEST_ID, "x-minio-error-code": "NoSuchBucket"})
    body = b"<Error><Code>NoSuchBucket</Code><Message>The bucket does not exist</Message></Error>"
    return answer(404, body)


async def test_a_head_404_that_names_another_code_is_the_store_failing(tmp_path: Path) -> None:
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    layer = await cache(blobs, LAYER)
    tier, http = open_tier(blobs, minio_no_bucket)
    async with http:
        tier.filled(layer)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert (tier.counts.upload_failed, tier.counts.errors) == (1, 1)
    assert tier.last_error is not None and "HEAD answered 404 NoSuchBucket" in tier.last_error


@pytest.mark.parametrize("head_says", ["s3", "nothing"])
async def test_s3s_own_misses_are_misses(tmp_path: Path, head_says: str) -> None:
    """A GET's ``NoSuchKey``, and a HEAD's bodiless 404: S3's (``x-amz-request-id``), or one
    with nothing of S3 in it that the GET then says is ``NoSuchKey`` (a store that sends no
    request id): the object is not there; the upload goes ahead."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    layer = await cache(blobs, LAYER)
    seen: list[str] = []

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "PUT":
            request.read()
            return answer(200)
        if request.method == "HEAD" and head_says == "nothing":
            return answer(404, headers={"content-length": "0"})
        return s3_missing(request)

    tier, http = open_tier(blobs, store)
    async with http:
        assert await tier.download(digest_of(b"another")) is None
        tier.filled(layer)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert (tier.reachable, tier.counts.misses, tier.counts.errors) == (True, 1, 0)
    assert seen == ["GET", "HEAD", "PUT"] if head_says == "s3" else ["GET", "HEAD", "GET", "PUT"]
    assert tier.counts.uploaded == 1


# --- 3. a 400 RequestTimeout to an upload ---------------------------------------------------------


async def test_an_upload_answered_requesttimeout_is_tried_again_not_dropped_as_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 answers ``400 RequestTimeout`` to a body that came too slowly (a busy link, a
    loaded store): trouble that passes, as a 503 SlowDown is. It was taken for a refusal of
    that blob, and a repair was forgotten; now the uploads rest, and the repair goes once the
    rest is over."""
    caplog.set_level(logging.INFO, "docxy.shared")
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    layer = await cache(blobs, LAYER)
    puts: list[str] = []

    def store(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            puts.append(request.url.path)
            request.read()
            if len(puts) == 1:
                return answer(400, TIMED_OUT)
            return answer(200)
        return s3_missing(request)

    tier, http = open_tier(blobs, store)
    async with http:
        tier._repair(layer)  # its object broke off under a fill the upstream made whole
        assert await tier.download(digest_of(b"another")) is None  # an answer: repairs go
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        assert (len(puts), tier.counts.upload_failed, tier.counts.errors) == (1, 1, 1)
        monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the uploads' rest is over
        assert await tier.download(digest_of(b"yet another")) is None
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert (len(puts), tier.counts.uploaded) == (2, 1)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("refused" in line for line in said), said
    assert any("fails uploads" in line and "RequestTimeout" in line for line in said), said
