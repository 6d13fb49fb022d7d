"""Review s46 (shared): the shared tier against the real store (SeaweedFS's ``weed``, on
127.0.172.1, ports 15700-15799). The review found no fault to pin with an xfail; these pass, and
keep what was checked against a real store (not a fake) from regressing:

- an upload the store refuses before reading its body (a read-only key, a large blob) is the
  store's 403 refusal, not a broken connection (which would rest the whole tier as unreachable);
- an upload under way is not visible to other replicas (no partial object: HEAD and GET miss);
- a blob that is itself gzip data (every layer) is stored and served byte for byte (the store
  neither decompresses nor re-encodes it), as is the empty blob;
- every prefix the settings take is where the requests go, signed right.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

import lab.objectstore as lab_objectstore
from docxy.cache.files import BlobFile
from docxy.core.digests import Digest, digest_of
from docxy.shared.objects import Bucket, ObjectStore, ObjectStoreError, signed_headers
from docxy.tasks import spawn
from tests.unit.weed import weed_on

WEED_HOST = "127.0.172.1"  # this review's loopback range, ports 15700-15799
WEED_PORTS = range(15700, 15800)
GUARD = 60.0


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_objectstore.ObjectStore]:
    """SeaweedFS (``lab.objectstore``) on ``WEED_HOST``, its listeners on ``WEED_PORTS``."""
    with weed_on(tmp_path_factory.mktemp("weed"), WEED_HOST, WEED_PORTS) as store:
        yield store


@asynccontextmanager
async def objects_on(
    weed: lab_objectstore.ObjectStore, prefix: str, *, reader: bool = False
) -> AsyncIterator[ObjectStore]:
    key, secret = (
        (weed.reader_key, weed.reader_secret) if reader else (weed.access_key, weed.secret_key)
    )
    where = Bucket(weed.url, weed.bucket, weed.region, key, secret, prefix)
    async with httpx.AsyncClient(timeout=15) as http:
        yield ObjectStore(where, http)


async def put(objects: ObjectStore, tmp_path: Path, data: bytes) -> Digest:
    digest = digest_of(data)
    path = tmp_path / f"blob-{digest.hex[:12]}"
    path.write_bytes(data)
    file = BlobFile.open(path)
    try:
        await asyncio.wait_for(objects.put(digest, file, len(data)), GUARD)
    finally:
        file.close()
    return digest


async def read(objects: ObjectStore, digest: Digest) -> bytes | None:
    answer = await objects.open(digest)
    if answer is None:
        return None
    try:
        return b"".join([chunk async for chunk in answer.aiter_raw()])
    finally:
        await answer.aclose()


def prefix_of(tmp_path: Path) -> str:
    return f"s46-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"


@pytest.mark.parametrize("size", [100_000, 24 * 1024 * 1024])
async def test_an_upload_a_read_only_key_makes_is_refused_not_cut(
    weed: lab_objectstore.ObjectStore, tmp_path: Path, size: int
) -> None:
    async with objects_on(weed, prefix_of(tmp_path), reader=True) as objects:
        with pytest.raises(ObjectStoreError) as raised:
            await put(objects, tmp_path, os.urandom(size))
    assert (raised.value.status, raised.value.code) == (403, "AccessDenied"), raised.value


async def test_an_upload_under_way_is_not_visible_to_other_replicas(
    weed: lab_objectstore.ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(6 * 1024 * 1024)
    digest = digest_of(data)
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[: 3 * 1024 * 1024]
        await asyncio.wait_for(gate.wait(), GUARD)
        yield data[3 * 1024 * 1024 :]

    async with objects_on(weed, prefix_of(tmp_path)) as objects:
        bucket = objects.bucket
        url = bucket.url(digest)
        headers = signed_headers(bucket, "PUT", url, digest.hex, {"Content-Length": str(len(data))})
        async with httpx.AsyncClient(timeout=GUARD) as writer:
            sent = spawn("s46-put", writer.put(url, headers=headers, content=body()))
            try:
                await asyncio.sleep(1.0)  # half of it sent
                assert await objects.head(digest) is None
                assert await read(objects, digest) is None
            finally:
                gate.set()
                assert (await sent).status_code == 200
        assert await read(objects, digest) == data


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(b"a layer's tar " * 50_000),
        gzip.compress(os.urandom(1000) * 2_000),
        b'{"schemaVersion": 2}' * 3000,
        b"",
    ],
    ids=["gzip-small", "gzip", "json", "empty"],
)
async def test_a_blob_is_stored_and_served_byte_for_byte(
    weed: lab_objectstore.ObjectStore, tmp_path: Path, data: bytes
) -> None:
    async with objects_on(weed, prefix_of(tmp_path)) as objects:
        digest = await put(objects, tmp_path, data)
        assert await objects.size_of(digest) == len(data)
        assert await read(objects, digest) == data


@pytest.mark.parametrize("prefix", ["Team_A.b-1/x", "", "a/b/c/d", "-._"])
async def test_every_prefix_taken_is_signed_right(
    weed: lab_objectstore.ObjectStore, tmp_path: Path, prefix: str
) -> None:
    data = os.urandom(1000) + prefix.encode()
    async with objects_on(weed, prefix) as objects:
        assert await read(objects, digest_of(data)) is None
        digest = await put(objects, tmp_path, data)
        assert await objects.size_of(digest) == len(data)
        assert await read(objects, digest) == data
