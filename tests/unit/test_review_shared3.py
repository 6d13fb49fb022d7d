"""Review findings on the shared tier (third round), each a test that failed before its mend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import Download
from docxy.core.digests import Digest, digest_of
from docxy.shared import tier as tier_module
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier

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
