"""Faults of the blob fill path a review found (docxy.cache.fill and its helpers): each test
shows what a client of the mirror, or the mirror itself, would see."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import BlobFollower, Download
from docxy.core.digests import digest_of
from docxy.core.errors import UpstreamUnavailable
from tests.unit import fakes

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


class _StallsAfter:
    """An upstream body whose reads after the first ``reads`` stall until interrupted (or for
    ``stall`` seconds, a read timeout)."""

    def __init__(self, data: bytes, piece: int, reads: int, stall: float) -> None:
        self.data, self.piece, self.reads, self.stall = data, piece, reads, stall
        self.pos = 0
        self.interrupted = threading.Event()

    def read(self, size: int) -> bytes:
        if self.pos >= self.reads * self.piece:
            if self.interrupted.wait(self.stall):
                raise UpstreamUnavailable("the upstream registry's body broke off: interrupted")
            raise UpstreamUnavailable("the upstream registry stopped sending in time")
        chunk = self.data[self.pos : self.pos + self.piece]
        self.pos += len(chunk)
        return chunk

    def interrupt(self) -> None:
        self.interrupted.set()


async def test_a_pump_given_up_for_a_failed_write_stops_reading_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails under a pumped fill while its reading thread waits on a stalled upstream:
    the fill is given up (its clients get the rest from the upstream), but the reading thread
    was not interrupted, so the fill's download (its connection, its thread, the fill permit
    it holds until it is closed: a client's rest waits for one under ``limits.fills_total``)
    stayed open until the upstream's read timeout. README: "The download the disk failed
    under stops reading the upstream"."""
    piece = 64 * 1024
    data = os.urandom(piece * 8)
    digest = digest_of(data)
    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(piece))  # 2nd read fails
    store = DiskBlobStore.open(tmp_path, 1 << 30, direct_writes=False)
    body = _StallsAfter(data, piece, reads=2, stall=2 * GUARD)
    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    async def fetch() -> Download:
        return Download(len(data), None, close, body=body)

    follower = await store.fill(digest, fetch)
    assert isinstance(follower, BlobFollower)
    follower.rest = _rest_of(data)
    assert await asyncio.wait_for(follower.read_all(), GUARD) == data
    await asyncio.wait_for(closed.wait(), 2.0)  # not at the read timeout
    assert body.interrupted.is_set()
