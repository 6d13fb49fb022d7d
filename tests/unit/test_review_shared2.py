"""Review findings on the shared tier, each a test that failed before its mend."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import Download
from docxy.core.digests import Digest
from docxy.shared import tier as tier_module
from docxy.shared.keys import blob_key, object_url, parse_prefix
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier

HOST = "127.0.0.77"
PORTS = range(9370, 9400)  # below 10000, outside the ephemeral range
GUARD = 30.0  # seconds before a would-be hang becomes a test failure


def digest(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


async def _held_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A ``200`` whose body starts and then waits (a big object still on its way)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nx-amz-request-id: 18EE17D3BF0E9510\r\n"
        writer.write(head + b"\r\n" + b"x" * 10)
        await writer.drain()
        await reader.read()  # until the client closes
    finally:
        writer.close()


@asynccontextmanager
async def store_sending_slowly() -> AsyncIterator[str]:
    """A store on loopback whose every GET answer takes its time; its URL."""
    for port in PORTS:  # bounded: the first free one
        try:
            server = await asyncio.start_server(_held_body, HOST, port)
        except OSError:
            continue
        async with server:
            yield f"http://{HOST}:{port}"
            server.close()
        return
    raise AssertionError(f"no free port in {PORTS}")


async def test_a_full_pool_of_the_tiers_own_connections_is_not_the_store_in_trouble(
    tmp_path: Path,
) -> None:
    """Every miss is a fill of its own with its own connection to the store: a burst of more
    misses than the client's connections waited for one, then took the PoolTimeout for the
    store failing: ``reachable: false``, an error counted, and every miss sent upstream for
    30 s (in the very burst sharing is for). The miss goes upstream; the store stays trusted."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    async with store_sending_slowly() as url:
        where = Bucket(url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        limits = httpx.Limits(max_connections=1)
        timeout = httpx.Timeout(GUARD, pool=0.2)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            first = await asyncio.wait_for(tier.download(digest(1)), GUARD)
            assert first is not None  # its body holds the one connection
            try:
                assert await asyncio.wait_for(tier.download(digest(2)), GUARD) is None
                assert (tier.reachable, tier.counts.errors, tier.last_error) == (True, 0, None)
            finally:
                await first.close()
            # the connection free again, the next miss asks the store as before
            again = await asyncio.wait_for(tier.download(digest(3)), GUARD)
            assert again is not None
            await again.close()


LAYER = b"a sha512 layer " * 3000
SHA512 = Digest("sha512", hashlib.sha512(LAYER).hexdigest())
CUT_AT = 5000


class BreaksOff(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield LAYER[:CUT_AT]
        raise httpx.ReadError("connection reset by peer")


def sha512_bucket(request: httpx.Request) -> httpx.Response:
    """A bucket whose sha512 object breaks off after ``CUT_AT`` bytes; nothing else in it."""
    if request.method == "GET" and request.url.path.endswith(SHA512.hex):
        headers = {"Content-Length": str(len(LAYER)), **S3}
        return httpx.Response(200, headers=headers, stream=BreaksOff())
    return httpx.Response(200 if request.method == "PUT" else 404, headers=S3)


S3 = {"x-amz-request-id": "18EE17D3BF0E9510"}  # every answer of an S3 store has one


async def upstream_rest(offset: int, size: int | None) -> Download:
    async def chunks() -> AsyncIterator[bytes]:
        yield LAYER[offset:]

    async def close() -> None:
        pass

    return Download(len(LAYER) - offset, chunks(), close)


async def test_a_sha512_blob_finished_from_the_upstream_is_not_sent_to_the_upload_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sha512 object (the bucket is not docxy's alone) whose body broke off under a fill,
    the upstream's rest making the blob whole, was queued as a repair: its upload raised
    ValueError (a PUT is signed with a sha256 digest) in the worker, a traceback at every
    later answer of the store, the repair never forgotten. Only sha256 blobs are uploaded."""
    caplog.set_level(logging.INFO)
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    where = Bucket("http://127.0.0.77:9", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    async with httpx.AsyncClient(transport=httpx.MockTransport(sha512_bucket)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)

        async def fetch() -> Download:
            download = await tier.download(SHA512, upstream_rest)
            assert download is not None
            return download

        stream = await blobs.fill(SHA512, fetch)
        assert await asyncio.wait_for(stream.read_all(), GUARD) == LAYER
        await asyncio.wait_for(blobs.commits_done(), GUARD)
        assert (tier.counts.resumed, blobs.holds(SHA512)) == (1, True)
        monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the break's rest is over
        for n in (2, 3):  # misses the store answers: each offers the repairs
            assert await asyncio.wait_for(tier.download(digest(n)), GUARD) is None
            await asyncio.wait_for(tier.uploads.drained(), GUARD)
    crashed = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert crashed == []
    assert (tier.counts.uploaded, tier.counts.upload_failed) == (0, 0)


@pytest.mark.parametrize("raw", [".", "a/./b", "a/.", "./a"])
def test_a_prefix_with_a_dot_segment_is_refused(raw: str) -> None:
    """A ``.`` segment was taken, and removed from the path of every request (httpx and the
    signer normalise it): the blobs of ``.`` went to the bucket's root, those of ``a/./b`` to
    ``a/b``, not to ``<prefix>/blobs/sha256/<hex>`` as the setting says."""
    with pytest.raises(ValueError, match="path segments"):
        parse_prefix(raw)


@pytest.mark.parametrize("raw", ["docxy", "a/b", "...", "a/.b", "x.y_z-1"])
def test_a_prefix_taken_is_where_the_requests_go(raw: str) -> None:
    key = blob_key(parse_prefix(raw), digest(1))
    assert httpx.URL(object_url("http://127.0.0.77:9", "bucket", key)).path == f"/bucket/{key}"
