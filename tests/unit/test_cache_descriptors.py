"""The cache's file descriptors: a hit that cannot open its blob, where each descriptor is
closed (on the loop, or in a worker thread when its close may free a file's blocks), and the
cap while a removed file's blocks are still held by a descriptor.

Real files under tmp_path; faults are injected at the OS call (``os.open``, ``os.close``).
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnreadable
from docxy.cache.fill import Download
from docxy.core.digests import Digest
from docxy.edge.fills import FillPermits
from docxy.pull.outcome import BlobContent, PassThrough, Reason, Served
from tests.unit.test_cache_faults import (
    BLOB,
    DIGEST,
    GUARD,
    PULL,
    Registry,
    blob_service,
    make_store,
    running,
)


async def cached(store: DiskBlobStore, registry: Registry, permits: FillPermits) -> None:
    """BLOB filled through the service and committed."""
    registry.flowing.set()
    outcome = await asyncio.wait_for(blob_service(store, registry, permits).get(PULL), GUARD)
    assert isinstance(outcome, Served) and isinstance(outcome.content, BlobContent)
    assert outcome.content.stream is not None
    assert await asyncio.wait_for(outcome.content.stream.read_all(), GUARD) == BLOB
    assert store.holds(DIGEST)


def failing_blob_open(
    monkeypatch: pytest.MonkeyPatch, store: DiskBlobStore, digest: Digest, code: int
) -> None:
    """Opening the committed file of ``digest`` fails with ``code``; everything else opens."""
    real_open, path = os.open, store.path_of(digest)

    def open_(file: str | Path, flags: int, *args: int) -> int:
        if Path(file) == path:
            raise OSError(code, os.strerror(code))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", open_)


# --- a cache hit that cannot open its blob ------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EIO], ids=errno.errorcode.get)
async def test_a_hit_that_cannot_open_its_blob_is_passed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """No descriptor left (EMFILE, ENFILE) or a failing disk (EIO) when a cached blob is opened
    for a hit: the client is passed through to the upstream, with the reason (not a 500); the
    blob stays cached, nothing is fetched for the cache, and no fill slot is taken."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    await cached(store, registry, permits)
    gets = registry.blob_gets
    failing_blob_open(monkeypatch, store, DIGEST, code)

    outcome = await asyncio.wait_for(blob_service(store, registry, permits).get(PULL), GUARD)
    assert isinstance(outcome, PassThrough), outcome
    assert outcome.reason is Reason.CACHE_UNREADABLE
    assert os.strerror(code) in outcome.detail
    assert (registry.blob_gets, running(permits), store.fills_open) == (gets, 0, 0)
    assert store.usage().pinned == 0
    monkeypatch.undo()
    assert store.holds(DIGEST)  # still cached: the next hit is served from disk
    reader = store.open_read(DIGEST)
    assert reader is not None and await reader.read_all() == BLOB


async def test_a_blob_committed_while_a_miss_looked_that_cannot_be_opened_is_passed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way to a hit: a miss asks the store to fill the blob, which another client
    committed meanwhile (``fill`` opens it as a hit). No descriptor left then: passed through,
    and the fill slot the miss took is given back."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    await cached(store, registry, permits)
    failing_blob_open(monkeypatch, store, DIGEST, errno.EMFILE)

    async def fetch() -> Download:
        raise AssertionError("a committed blob is never fetched")

    with pytest.raises(CacheUnreadable, match="Too many open files"):
        await store.fill(DIGEST, fetch)
    assert (store.fills_open, store.usage().pinned) == (0, 0)
