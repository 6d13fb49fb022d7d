"""Faults of the blob fill path a review found (docxy.cache.fill and its helpers): each test
shows what a client of the mirror, or the mirror itself, would see."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import BlobFollower, Download
from docxy.core.digests import digest_of

GUARD = 10.0


async def _no_close() -> None:
    pass


def _rest_of(data: bytes) -> fill_module.Resume:
    """A follower's rest from the upstream: ``data`` from an offset on."""

    async def rest(offset: int, size: int | None) -> Download:
        async def chunks() -> AsyncIterator[bytes]:
            yield data[offset:]

        return Download(None if size is None else size - offset, chunks(), _no_close)

    return rest


async def test_a_download_in_small_pieces_is_cached(tmp_path: Path) -> None:
    """A download read on the loop (httpx's chunks: a fill retried after a 401, a resumed rest,
    the shared tier) in pieces smaller than the write buffer over IOV_MAX (1024) was written
    with one writev of them all, which the kernel refuses (EINVAL): the cache said it could not
    write, gave the fill up and passed every miss through for a minute; the disk was fine."""
    data = os.urandom(1024 * 1024)
    digest = digest_of(data)
    store = DiskBlobStore.open(tmp_path, 1 << 30)  # the default write buffer, 512 KiB

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256):  # a trickle: 2048 pieces per write buffer
            yield data[start : start + 256]

    async def fetch() -> Download:
        return Download(len(data), chunks(), _no_close)

    follower = await store.fill(digest, fetch)
    assert isinstance(follower, BlobFollower)
    follower.rest = _rest_of(data)
    assert await asyncio.wait_for(follower.read_all(), GUARD) == data
    await asyncio.wait_for(store.commits_done(), GUARD)
    assert store.write_failed_at is None  # no "cannot write (EINVAL)", no minute uncached
    assert store.lookup(digest) is not None
