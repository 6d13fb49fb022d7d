"""Faults of the cache's eviction a review left: a cache disk that fills up (ENOSPC) before
``cache.max_size`` is reached never evicted, so nothing new was cached again; a cap lowered
between runs freed nothing until a download needed room (with only hits, never)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from docxy.cache import blobs as blobs_module
from docxy.cache import fill as fill_module
from docxy.cache import open_cache
from docxy.cache.blobs import DiskBlobStore, low_water
from docxy.core.digests import Digest, digest_of
from tests.unit import fakes
from tests.unit.test_cache_blobs import as_writer, blob, guard, make_store, put

SIZE = 1000


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


async def disk_full_fill(store: DiskBlobStore, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """One fill the disk refuses a byte of (ENOSPC), as on a full cache disk; then the disk
    writes again (the bytes an eviction frees are there for the next fill)."""
    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(0))
    data = blob(SIZE, seed)
    writer = await as_writer(store, digest_of(data))
    async with writer:
        await writer.write(data)
        assert not writer.caching  # the disk failed under it: passed through
        await writer.commit(len(data))
    monkeypatch.undo()
    await guard(store.settle())


async def full_store(tmp_path: Path, count: int = 10) -> tuple[DiskBlobStore, list[Digest]]:
    """A store far under its cap (a 1 GiB cap on a small disk) holding ``count`` blobs."""
    store = make_store(tmp_path)
    digests = [await put(store, blob(SIZE, i)) for i in range(count)]
    return store, digests


async def test_a_full_disk_evicts_so_that_misses_are_cached_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, digests = await full_store(tmp_path)
    await disk_full_fill(store, monkeypatch, 100)
    assert store.usage().bytes <= 9 * SIZE  # 10% of what it held, least recent first
    assert store.lookup(digests[0]) is None and store.lookup(digests[-1]) is not None
    assert store.write_failed_at is None  # room was made: the next miss is cached
    assert await put(store, blob(SIZE, 200)) is not None


async def test_a_full_disk_spares_a_blob_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, digests = await full_store(tmp_path)
    reader = store.open_read(digests[0])  # the least recent, but read now
    assert reader is not None
    await disk_full_fill(store, monkeypatch, 100)
    assert store.lookup(digests[0]) is not None
    assert store.lookup(digests[1]) is None
    await reader.read_all()


async def test_a_disk_that_stays_full_evicts_once_not_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other files fill the disk: what an eviction frees is gone again before a blob is
    stored. The cache evicts once, then passes misses through as before (the back-off), and
    never shrinks away; once a blob is stored again, a full disk evicts again."""
    store, _ = await full_store(tmp_path)
    await disk_full_fill(store, monkeypatch, 100)
    after_one = store.usage().bytes
    assert after_one < 10 * SIZE
    for seed in range(101, 106):  # each back-off over, the disk still full
        store.write_failed_at = None
        await disk_full_fill(store, monkeypatch, seed)
        assert store.write_failed_at is not None  # misses pass through a while again
    assert store.usage().bytes == after_one
    store.write_failed_at = None
    await put(store, blob(SIZE, 300))
    await disk_full_fill(store, monkeypatch, 106)
    assert store.usage().bytes < after_one + SIZE


async def test_a_cap_larger_than_the_disk_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = 4 << 30  # a small disk (the conftest makes every disk look large)
    monkeypatch.setattr(blobs_module, "file_system_size", lambda _: disk)
    caplog.set_level(logging.WARNING, logger="docxy.cache")
    open_cache(tmp_path, max_size=disk * 2, tag_ttl=300)
    said = [r.getMessage() for r in caplog.records if "max_size" in r.getMessage()]
    assert len(said) == 1
    assert str(disk * 2) in said[0] and str(disk) in said[0]
    caplog.clear()
    open_cache(tmp_path / "other", max_size=disk // 2, tag_ttl=300)
    assert not [r for r in caplog.records if "max_size" in r.getMessage()]


async def test_a_cap_lowered_between_runs_is_kept_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_cache(tmp_path, max_size=1 << 30, tag_ttl=300)
    digests = [await put(first.blobs, blob(SIZE, i)) for i in range(10)]
    caplog.set_level(logging.WARNING, logger="docxy.cache")
    again = open_cache(tmp_path, max_size=5 * SIZE, tag_ttl=300)  # only hits from now on
    await guard(again.blobs.indexed())
    await until(lambda: again.blobs.usage().bytes <= low_water(5 * SIZE))
    await guard(again.blobs.settle())
    assert again.blobs.lookup(digests[-1]) is not None  # the most recent stay
    over = [r.getMessage() for r in caplog.records if "over cache.max_size" in r.getMessage()]
    assert len(over) == 1 and str(5 * SIZE) in over[0]  # how much over it was


async def test_a_cache_under_its_cap_evicts_nothing_at_start(tmp_path: Path) -> None:
    first = open_cache(tmp_path, max_size=1 << 30, tag_ttl=300)
    for i in range(3):
        await put(first.blobs, blob(SIZE, i))
    again = open_cache(tmp_path, max_size=3 * SIZE, tag_ttl=300)
    await guard(again.blobs.indexed())
    await guard(again.manifests.loaded())
    # The start-up check ends before anything is asserted: else it could evict after.
    assert again.blobs.start_check is not None
    await guard(again.blobs.start_check)
    await guard(again.blobs.settle())
    assert again.blobs.usage().bytes == 3 * SIZE and again.blobs.evicted == 0
