"""An object the bucket labels with a content coding is filled as the bytes it stores."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from pathlib import Path

import httpx

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import Download
from docxy.core.digests import Digest
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier

GUARD = 30.0  # seconds before a would-be hang becomes a test failure
LAYER = gzip.compress(os.urandom(200_000))  # a layer: gzip bytes, its digest theirs
DIGEST = Digest("sha256", hashlib.sha256(LAYER).hexdigest())


def labelling_bucket(request: httpx.Request) -> httpx.Response:
    """A bucket whose object carries ``Content-Encoding: gzip`` metadata (put there by another
    tool: the bucket is not docxy's alone), sent whatever the GET asked for."""
    if request.method == "GET" and request.url.path.endswith(DIGEST.hex):
        headers = {
            "Content-Length": str(len(LAYER)),
            "Content-Encoding": "gzip",
            "x-amz-request-id": "18EE17D3BF0E9510",  # an S3 store's answer
        }
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(LAYER))
    return httpx.Response(404)


async def test_an_object_labelled_gzip_is_filled_as_its_stored_bytes(tmp_path: Path) -> None:
    """The tier read the object's body decoded (httpx undoes a Content-Encoding): the fill got
    the unzipped bytes, failed its check, and the miss went upstream every time, the object
    counted corrupt. The blob is the stored bytes, as the upstream path reads them."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    where = Bucket("http://127.0.0.77:9", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    async with httpx.AsyncClient(transport=httpx.MockTransport(labelling_bucket)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)

        async def fetch() -> Download:
            download = await tier.download(DIGEST)
            assert download is not None
            return download

        stream = await blobs.fill(DIGEST, fetch)
        assert await asyncio.wait_for(stream.read_all(), GUARD) == LAYER
        await asyncio.wait_for(blobs.commits_done(), GUARD)
    assert blobs.holds(DIGEST)
    assert tier.counts.corrupt == 0
