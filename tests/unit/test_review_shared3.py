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
