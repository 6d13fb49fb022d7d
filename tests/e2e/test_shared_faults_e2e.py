"""Faults of the shared tier a review found, shown against a real S3-compatible store (SeaweedFS
on loopback): what an operator reads in /health (``last_error``, ``reachable``, the counts) and
where a replica's blobs come from.

The tier runs in this process (``SharedTier`` over a real disk cache and a real httpx client);
the upstream is the unit tests' kind of fake, since only the store's side is under test.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.files import BlobFile
from docxy.core.digests import Digest, digest_of
from docxy.core.names import Kind, Reference
from docxy.pull.blobs import BlobService
from docxy.pull.outcome import BlobContent, Pull, Served, Source
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from lab.objectstore import ObjectStore as Weed

pytestmark = pytest.mark.e2e

GUARD = 30.0  # seconds before a would-be hang becomes a test failure
REGISTRY = Upstream("https://registry.test")
REPO = "team/app"
ABSENT = Digest("sha256", "ab" * 32)


def prefix_of(tmp_path: Path) -> str:
    """Each test's own keys in the module's one bucket."""
    return f"faults-{os.getpid()}-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"


@asynccontextmanager
async def tier_on(
    weed: Weed,
    tmp_path: Path,
    *,
    bucket: str | None = None,
    key: str | None = None,
    secret: str | None = None,
) -> AsyncIterator[SharedTier]:
    """A tier over a fresh disk cache, talking to ``weed`` (its bucket and full key unless
    told otherwise)."""
    where = Bucket(
        weed.url,
        bucket or weed.bucket,
        weed.region,
        key or weed.access_key,
        secret or weed.secret_key,
        prefix_of(tmp_path),
    )
    store = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    async with httpx.AsyncClient(timeout=10) as http:
        tier = SharedTier(ObjectStore(where, http), store, 1)
        try:
            yield tier
        finally:
            tier.uploads.cancel()


async def put_object(weed: Weed, tmp_path: Path, data: bytes) -> Digest:
    """Store ``data`` under its digest's key with the full key; the digest."""
    digest = digest_of(data)
    path = tmp_path / f"object-{digest.hex[:12]}"
    path.write_bytes(data)
    file = BlobFile.open(path)
    try:
        async with tier_on(weed, tmp_path) as tier:
            await tier.objects.put(digest, file, len(data))
    finally:
        file.close()
    return digest


# --- the store's own reason for a refusal ----------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [("skewed clock", "RequestTimeTooSkewed"), ("wrong secret", "SignatureDoesNotMatch")],
)
async def test_a_refused_request_says_why_in_last_error_and_the_log(
    weed: Weed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    code: str,
) -> None:
    """A replica whose clock drifted and one given a wrong secret both get a 403; the store's
    answer says which (its S3 error code), and so must /health's last_error and the log:
    "GET answered 403" sends the operator to check the keys when the clock is wrong."""
    import botocore.auth

    secret = weed.secret_key
    if fault == "skewed clock":
        now = botocore.auth.get_current_datetime
        monkeypatch.setattr(
            botocore.auth, "get_current_datetime", lambda: now() - datetime.timedelta(hours=1)
        )
    else:
        secret = "not-the-secret-" + weed.secret_key[:8]
    async with tier_on(weed, tmp_path, secret=secret) as tier:
        assert await asyncio.wait_for(tier.download(ABSENT), GUARD) is None
        assert tier.reachable is False
        assert code in (tier.last_error or ""), tier.last_error
    assert code in caplog.text
    assert weed.secret_key not in caplog.text and secret not in caplog.text


# --- a missing bucket ------------------------------------------------------------------------


async def test_a_missing_bucket_is_the_store_in_trouble_not_a_miss(
    weed: Weed, tmp_path: Path
) -> None:
    """A bucket that was never made (or a typo in shared.bucket) answers every GET 404, with
    the code NoSuchBucket. That is not "this blob is not there yet": /health must not say the
    store is reachable and count misses while no blob can ever come from it."""
    async with tier_on(weed, tmp_path, bucket="docxy-never-made") as tier:
        assert await asyncio.wait_for(tier.download(ABSENT), GUARD) is None
        assert (tier.reachable, tier.counts.misses) == (False, 0)
        assert "NoSuchBucket" in (tier.last_error or ""), tier.last_error


async def test_an_absent_object_is_a_miss_of_a_reachable_store(weed: Weed, tmp_path: Path) -> None:
    async with tier_on(weed, tmp_path) as tier:
        assert await asyncio.wait_for(tier.download(ABSENT), GUARD) is None
        assert (tier.reachable, tier.counts.misses, tier.last_error) == (True, 1, None)


# --- a refused upload ------------------------------------------------------------------------


class Registry:
    """An open registry (no auth) whose repository holds ``blobs``; counts blob GETs."""

    def __init__(self, *blobs: bytes) -> None:
        self.blobs = {str(digest_of(blob)): blob for blob in blobs}
        self.blob_gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        blob = self.blobs.get(request.url.path.rsplit("/", 1)[-1])
        if blob is None:
            return httpx.Response(404)
        headers = {"Content-Length": str(len(blob))}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        self.blob_gets += 1
        # A stream, as a network answer is: the fill reads the body raw, which httpx cannot
        # do for a Response(content=...), read (and decoded) when it is made.
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(blob))


def pull_of(digest: Digest) -> Pull:
    return Pull(REGISTRY, REPO, Reference(REPO, Kind.BLOB, digest=digest))


async def pulled(service: BlobService, digest: Digest) -> tuple[Source, bytes]:
    outcome = await asyncio.wait_for(service.get(pull_of(digest)), GUARD)
    assert isinstance(outcome, Served) and isinstance(outcome.content, BlobContent)
    assert outcome.content.stream is not None
    data = await asyncio.wait_for(outcome.content.stream.read_all(), GUARD)
    if service.store is not None:  # committed (then uploaded) after the client's last byte
        await asyncio.wait_for(service.store.commits_done(), GUARD)
    return outcome.source, data


async def test_a_replica_whose_uploads_are_refused_still_fills_from_the_bucket(
    weed: Weed, tmp_path: Path
) -> None:
    """A replica given a read-only key (it should only read what the others upload) is
    refused every upload (403 AccessDenied). The store answered: it is up, and reading from
    it works. A refused upload must not send the replica's next misses to the upstream."""
    in_bucket, upstream_only = os.urandom(300_000), os.urandom(200_000)
    stored = await put_object(weed, tmp_path, in_bucket)
    registry = Registry(in_bucket, upstream_only)
    async with (
        tier_on(weed, tmp_path, key=weed.reader_key, secret=weed.reader_secret) as tier,
        httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http,
    ):
        service = BlobService(tier.blobs, MirrorTokens(UpstreamClient(http)), shared=tier)
        assert await pulled(service, digest_of(upstream_only)) == (Source.MISS, upstream_only)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        assert (tier.counts.uploaded, tier.counts.upload_failed) == (0, 1)

        assert await pulled(service, stored) == (Source.SHARED, in_bucket)
        assert registry.blob_gets == 1  # only the blob the bucket did not have
        assert tier.counts.hits == 1 and tier.reachable is True
        assert "AccessDenied" in (tier.last_error or ""), tier.last_error  # why it failed


# --- a local copy that went bad --------------------------------------------------------------


async def test_a_local_copy_that_went_bad_is_not_uploaded(
    weed: Weed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README: the bucket holds only verified blobs. SeaweedFS does not check the payload hash
    an upload is signed with, so what reaches the bucket is whatever the local file holds: a
    blob whose file changed after its fill (bit rot, what `docxy cache gc --verify` looks for)
    must not be uploaded, where every other replica would fetch it, fail to verify it and cut
    its client."""
    blob = os.urandom(3 * 1024 * 1024 + 5)  # more than one read of the upload
    digest = digest_of(blob)
    async with (
        tier_on(weed, tmp_path) as tier,
        httpx.AsyncClient(transport=httpx.MockTransport(Registry(blob))) as http,
    ):
        without_tier = BlobService(tier.blobs, MirrorTokens(UpstreamClient(http)))
        assert await pulled(without_tier, digest) == (Source.MISS, blob)
        with open(tier.blobs.path_of(digest), "r+b") as cached:  # one byte rots
            cached.seek(2_000_000)
            cached.write(bytes([blob[2_000_000] ^ 1]))
        tier.filled(digest)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        assert (tier.counts.uploaded, tier.counts.upload_failed) == (0, 1)
        assert await asyncio.wait_for(tier.objects.size_of(digest), GUARD) is None
        assert tier.reachable is not False  # the local disk's fault, not the store's
    assert str(digest) in caplog.text
