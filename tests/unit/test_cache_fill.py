"""DiskBlobStore.fill: one call that coalesces, makes the temp file, then fetches once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnwritable, FetchFailed, FillAborted
from docxy.cache.fill import BlobFollower, Download
from docxy.cache.reader import BlobReader
from docxy.core.digests import digest_of

DATA = bytes(range(256)) * 1024
DIGEST = digest_of(DATA)
GUARD = 10.0


class Upstream:
    """Counts fetches; holds the bytes until ``release`` is set."""

    def __init__(self, data: bytes = DATA, fail: str | None = None) -> None:
        self.data = data
        self.fail = fail
        self.fetches = 0
        self.closed = 0
        self.release = asyncio.Event()

    async def fetch(self) -> Download:
        self.fetches += 1
        if self.fail is not None:
            raise FetchFailed(self.fail)
        return Download(len(DATA), self._chunks(), self._close)

    async def _chunks(self) -> AsyncIterator[bytes]:
        await self.release.wait()
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]

    async def _close(self) -> None:
        self.closed += 1


def store(root: Path) -> DiskBlobStore:
    return DiskBlobStore.open(root, 1 << 30, write_buffer=0)


async def read(stream: BlobReader | BlobFollower) -> bytes:
    return await asyncio.wait_for(stream.read_all(), GUARD)


async def test_callers_during_a_fill_share_one_fetch_then_hit(tmp_path: Path) -> None:
    blobs, upstream = store(tmp_path), Upstream()
    first = await blobs.fill(DIGEST, upstream.fetch)
    second = await blobs.fill(DIGEST, upstream.fetch)
    assert isinstance(first, BlobFollower) and isinstance(second, BlobFollower)
    upstream.release.set()
    assert await read(first) == DATA and await read(second) == DATA
    third = await blobs.fill(DIGEST, upstream.fetch)
    assert isinstance(third, BlobReader) and await read(third) == DATA
    await asyncio.wait_for(blobs.commits_done(), GUARD)  # the download is closed after it
    assert (upstream.fetches, upstream.closed) == (1, 1)


async def test_no_temp_file_no_fetch(tmp_path: Path) -> None:
    blobs, upstream = store(tmp_path), Upstream()
    blobs.tmp_dir.rmdir()
    blobs.tmp_dir.write_text("not a directory")
    with pytest.raises(CacheUnwritable):
        await blobs.fill(DIGEST, upstream.fetch)
    with pytest.raises(CacheUnwritable):  # and for a while after, without trying again
        await blobs.fill(DIGEST, upstream.fetch)
    assert upstream.fetches == 0
    assert blobs.usage().in_flight == 0


async def test_a_refused_fetch_cuts_its_followers_with_the_reason(tmp_path: Path) -> None:
    blobs, upstream = store(tmp_path), Upstream(fail="upstream answered 403")
    follower = await blobs.fill(DIGEST, upstream.fetch)
    assert isinstance(follower, BlobFollower)
    with pytest.raises(FillAborted, match="403"):
        await asyncio.wait_for(follower.size(), GUARD)
    follower.close()
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_wrong_bytes_are_not_kept(tmp_path: Path) -> None:
    blobs, upstream = store(tmp_path), Upstream(data=DATA[:-1] + b"!")
    follower = await blobs.fill(DIGEST, upstream.fetch)
    upstream.release.set()
    with pytest.raises(FillAborted, match="digest mismatch: expected .*, got "):
        await read(follower)
    assert blobs.lookup(DIGEST) is None
