"""DiskBlobStore: coalesced verified fills, followers, ranges, eviction, recovery, disk full.

Real files under tmp_path; ordering between writer and followers is proven with asyncio.Event,
never with sleeps (``asyncio.wait_for`` only turns a hang into a failure).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import (
    BlobInUse,
    DigestMismatch,
    FillAborted,
    FillClosed,
    NoRoom,
    SizeMismatch,
)
from docxy.cache.fill import BlobFollower, BlobWriter, FillState
from docxy.cache.reader import READ_CHUNK, BlobReader
from docxy.core.digests import Digest, digest_of
from docxy.tasks import spawn

T = TypeVar("T")
GUARD = 10.0  # seconds before a would-be hang becomes a test failure


async def guard(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, GUARD)


def make_store(root: Path, max_size: int = 1 << 30, **options: Any) -> DiskBlobStore:
    options.setdefault("write_buffer", 0)  # every write is flushed: followers see it at once
    return DiskBlobStore.open(root, max_size, **options)


async def as_writer(store: DiskBlobStore, digest: Digest) -> BlobWriter:
    fill = await store.fetch_or_join(digest)
    assert isinstance(fill, BlobWriter)
    return fill


async def as_follower(store: DiskBlobStore, digest: Digest) -> BlobFollower:
    fill = await store.fetch_or_join(digest)
    assert isinstance(fill, BlobFollower)
    return fill


async def write_in_pieces(writer: BlobWriter, data: bytes, size: int) -> None:
    for start in range(0, len(data), size):
        await writer.write(data[start : start + size])


async def put(store: DiskBlobStore, data: bytes) -> Digest:
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    async with writer:
        await writer.write(data)
        assert await writer.commit(len(data)) is not None
    return digest


async def read(
    store: DiskBlobStore, digest: Digest, start: int = 0, stop: int | None = None
) -> bytes:
    reader = store.open_read(digest, start, stop)
    assert reader is not None
    return await reader.read_all()


def tmp_files(store: DiskBlobStore) -> list[str]:
    return sorted(os.listdir(store.tmp_dir))


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


# --- basic fill and read ---------------------------------------------------------------------


async def test_commit_then_hit(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = blob(10_000)
    digest = await put(store, data)

    entry = store.lookup(digest)
    assert entry is not None
    assert entry.size == len(data)
    assert entry.path == tmp_path / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    assert entry.path.read_bytes() == data
    assert tmp_files(store) == []
    hit = await store.fetch_or_join(digest)
    assert isinstance(hit, BlobReader)
    assert await hit.read_all() == data
    assert store.usage().pinned == 0


async def test_range_reads(tmp_path: Path) -> None:
    store = make_store(tmp_path, read_chunk=7)  # many small preads per range
    data = blob(1000)
    digest = await put(store, data)

    assert await read(store, digest) == data
    assert await read(store, digest, 0, 1) == data[:1]
    assert await read(store, digest, 100, 200) == data[100:200]
    assert await read(store, digest, 993) == data[993:]
    assert await read(store, digest, 1000) == b""
    reader = store.open_read(digest, 10, 20)
    assert reader is not None
    assert (reader.size, reader.length) == (1000, 10)
    reader.close()
    for start, stop in [(-1, 10), (10, 5), (0, 1001), (1001, None)]:
        with pytest.raises(ValueError):
            store.open_read(digest, start, stop)
    assert store.usage().pinned == 0


async def test_reads_in_large_chunks(tmp_path: Path) -> None:
    store = make_store(tmp_path, read_chunk=1 << 20)
    data = os.urandom(3 * (1 << 20) + 5)
    digest = await put(store, data)
    reader = store.open_read(digest)
    assert reader is not None
    sizes = [len(chunk) async for chunk in reader]
    assert sizes == [1 << 20, 1 << 20, 1 << 20, 5]


async def test_miss(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = digest_of(b"absent")
    assert store.lookup(digest) is None
    assert store.open_read(digest) is None


async def test_writer_buffers_until_threshold(tmp_path: Path) -> None:
    store = make_store(tmp_path, write_buffer=100)
    data = blob(150)
    writer = await as_writer(store, digest_of(data))
    await writer.write(data[:60])
    assert writer.fill.written == 0
    await writer.write(data[60:120])
    assert writer.fill.written == 120
    await writer.write(data[120:])
    assert await writer.commit(150) is not None
    assert await read(store, digest_of(data)) == data


# --- coalescing ------------------------------------------------------------------------------


async def test_five_callers_one_writer_followers_stream_before_commit(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    part1, part2 = blob(5000, 1), blob(7000, 2)
    data = part1 + part2
    digest = digest_of(data)

    fills = await asyncio.gather(*(store.fetch_or_join(digest) for _ in range(5)))
    writers = [f for f in fills if isinstance(f, BlobWriter)]
    followers = [f for f in fills if isinstance(f, BlobFollower)]
    assert (len(writers), len(followers)) == (1, 4)
    writer = writers[0]

    got_part1 = 0
    all_got_part1 = asyncio.Event()
    states_at_part1: list[FillState] = []

    async def follow(follower: BlobFollower) -> tuple[int | None, bytes]:
        nonlocal got_part1
        size = await follower.size()
        received = b""
        async for chunk in follower:
            received += chunk
            if len(received) == len(part1) - 1:  # all of part1 but the held-back last byte
                states_at_part1.append(writer.fill.state)
                got_part1 += 1
                if got_part1 == len(followers):
                    all_got_part1.set()
        return size, received

    async def write() -> None:
        async with writer:
            writer.announce(len(data))
            await writer.write(part1)
            # Followers must get part1 now, while the blob is still being written.
            await guard(all_got_part1.wait())
            assert store.lookup(digest) is None
            await writer.write(part2)
            assert await writer.commit() is not None

    results = await guard(asyncio.gather(write(), *(follow(f) for f in followers)))
    assert states_at_part1 == [FillState.WRITING] * 4
    assert results[1:] == [(len(data), data)] * 4
    assert await read(store, digest) == data
    assert store.usage().pinned == 0
    assert tmp_files(store) == []


async def test_many_concurrent_callers_still_one_writer(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = blob(100)
    digest = digest_of(data)
    fills = await asyncio.gather(*(store.fetch_or_join(digest) for _ in range(50)))
    writers = [f for f in fills if isinstance(f, BlobWriter)]
    assert len(writers) == 1
    await writers[0].write(data)
    await writers[0].commit(len(data))
    bodies = await guard(
        asyncio.gather(*(f.read_all() for f in fills if isinstance(f, BlobFollower)))
    )
    assert bodies == [data] * 49
    # After the commit a new caller gets a cache hit, not a writer.
    assert isinstance(await store.fetch_or_join(digest), BlobReader)


async def test_follower_joining_late_reads_from_start(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = blob(3000)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    await writer.write(data[:1000])
    follower = await as_follower(store, digest)
    await writer.write(data[1000:])
    await writer.commit(len(data))
    assert await guard(follower.read_all()) == data


@pytest.mark.parametrize(
    ("announced", "sent", "error"),
    [
        (None, b"wrong bytes!", DigestMismatch),  # right length, wrong content
        (2000, None, SizeMismatch),  # cut short
        (1000, None, SizeMismatch),  # too long
    ],
)
async def test_bad_fill_fails_everyone_and_caches_nothing(
    tmp_path: Path, announced: int | None, sent: bytes | None, error: type[Exception]
) -> None:
    store = make_store(tmp_path)
    good = blob(1500)
    digest = digest_of(good)
    bad = sent if sent is not None else (good[:1200] if announced == 2000 else good + b"x")
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    writer.announce(announced)
    first_chunk = asyncio.Event()

    async def follow() -> bytes:
        received = b""
        async for chunk in follower:
            received += chunk
            first_chunk.set()
        return received

    follow_task = asyncio.gather(follow())
    await writer.write(bad[:10])
    await guard(first_chunk.wait())  # the follower is mid-stream when the writer fails
    await writer.write(bad[10:])
    with pytest.raises(error):
        await writer.commit()
    with pytest.raises(FillAborted):
        await guard(follow_task)
    assert store.lookup(digest) is None
    assert tmp_files(store) == []
    assert (store.usage().in_flight, store.usage().reserved) == (0, 0)  # its room given back
    with pytest.raises(FillClosed):
        await writer.write(b"more")

    # The next attempt (upstream healed) gets a fresh writer and succeeds.
    assert await put(store, good) == digest
    assert await read(store, digest) == good


async def test_writer_leaving_without_commit_aborts_followers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = blob(500)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)

    with pytest.raises(ConnectionError):
        async with writer:
            await writer.write(data[:100])
            raise ConnectionError("upstream cut the connection")
    with pytest.raises(FillAborted, match="ConnectionError"):
        await guard(follower.read_all())
    assert tmp_files(store) == []
    assert isinstance(await store.fetch_or_join(digest), BlobWriter)


async def test_follower_waiting_for_size_sees_abort(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = digest_of(b"x")
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)

    async def abort() -> None:
        writer.abort("upstream said 404")

    # gather starts its tasks in order: size() is already waiting when abort() runs.
    with pytest.raises(FillAborted, match="404"):
        await guard(asyncio.gather(follower.size(), abort()))
    follower.close()
    assert store.usage().pinned == 0


async def test_dropped_writer_aborts_followers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = digest_of(b"dropped")
    writer = await as_writer(store, digest)
    await writer.write(b"drop")
    follower = await as_follower(store, digest)
    del writer
    gc.collect()
    with pytest.raises(FillAborted, match="dropped"):
        await guard(follower.read_all())
    assert tmp_files(store) == []
    assert isinstance(await store.fetch_or_join(digest), BlobWriter)


async def test_a_writer_dropped_in_another_thread_is_discarded_on_the_loop(
    tmp_path: Path,
) -> None:
    """The garbage collector may finalize a dropped writer in any thread (one that happens to
    allocate when a collection is due): its discard still runs on the loop, where its
    followers wait, and all of it at once (the abort is never seen before the temp file is
    gone)."""
    store = make_store(tmp_path)
    digest = digest_of(b"dropped elsewhere")
    writer = await as_writer(store, digest)
    await writer.write(b"drop")
    follower = await as_follower(store, digest)
    discarded_in: list[int] = []
    discard = store.fill_discarded

    def recording(*args: object, **kwargs: object) -> None:
        discarded_in.append(threading.get_ident())
        discard(*args, **kwargs)  # type: ignore[arg-type]

    store.fill_discarded = recording  # type: ignore[method-assign]
    await asyncio.to_thread(writer._finalizer)  # as a collection in a worker thread would
    del writer
    with pytest.raises(FillAborted, match="dropped"):
        await guard(follower.read_all())
    assert discarded_in == [threading.get_ident()]
    assert tmp_files(store) == []


async def test_a_reader_dropped_in_another_thread_is_released_on_the_loop(
    tmp_path: Path,
) -> None:
    """A reader the garbage collector finalizes in another thread unpins its blob on the loop
    it was opened on (the store's pins live there), not in that thread."""
    store = make_store(tmp_path)
    digest = await put(store, b"a blob to read")
    released_in: list[int] = []
    release = store._reader_closed

    def recording(*args: Any) -> None:
        released_in.append(threading.get_ident())
        release(*args)

    store._reader_closed = recording  # type: ignore[method-assign,assignment]
    reader = store.open_read(digest)
    assert reader is not None and store.usage().pinned == 1
    # Run in a worker thread, as a collection there would (not on ``del``: no cycle holds it).
    await asyncio.to_thread(reader._finalizer)
    del reader
    await asyncio.sleep(0)  # the release handed to the loop runs now
    assert released_in == [threading.get_ident()]
    assert store.usage().pinned == 0


# --- disk full -------------------------------------------------------------------------------


async def test_disk_full_switches_writer_to_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path)
    real_write_all = fill_module.write_all
    calls = 0

    def write_all(fd: int, data: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(fill_module, "write_all", write_all)
    caplog.set_level(logging.DEBUG, logger="docxy.cache")

    async def one_blob(data: bytes) -> None:
        digest = digest_of(data)
        writer = await as_writer(store, digest)
        follower = await as_follower(store, digest)
        async with writer:
            await write_in_pieces(writer, data, 100)  # the route keeps streaming to its client
            assert not writer.caching
            assert await writer.commit(len(data)) is None  # verified, not cached
        with pytest.raises(FillAborted, match="No space"):
            await guard(follower.read_all())
        assert store.lookup(digest) is None
        assert tmp_files(store) == []

    await one_blob(blob(1000, 1))
    await one_blob(blob(1000, 2))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged once, not per blob
    assert "uncached" in warnings[0].getMessage()
    assert store.usage().in_flight == 0


async def test_pass_through_still_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)

    def write_all(fd: int, data: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fill_module, "write_all", write_all)
    writer = await as_writer(store, digest_of(b"good"))
    await writer.write(b"evil")
    with pytest.raises(DigestMismatch):
        await writer.commit(4)


async def test_cannot_create_temp_file_is_pass_through(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.tmp_dir.rmdir()  # os.open fails, as it would with no free inodes
    data = b"payload"
    writer = await as_writer(store, digest_of(data))
    assert not writer.caching
    await writer.write(data)
    assert await writer.commit(len(data)) is None
    # A second caller is not made to follow a fill that writes nothing.
    assert isinstance(await store.fetch_or_join(digest_of(data)), BlobWriter)


# --- eviction --------------------------------------------------------------------------------


def disk_bytes(store: DiskBlobStore) -> int:
    return sum(p.stat().st_size for p in (store.root / "blobs").rglob("*") if p.is_file())


async def test_lru_eviction_keeps_under_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=100)
    a = await put(store, blob(40, 1))
    b = await put(store, blob(40, 2))
    assert store.lookup(a) is not None  # a is now more recent than b
    c = await put(store, blob(40, 3))
    assert store.lookup(b) is None
    assert store.lookup(a) is not None and store.lookup(c) is not None
    assert store.usage().bytes == 80 == disk_bytes(store)
    assert not store.path_of(b).exists()


async def test_eviction_spares_pinned_blobs(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=100)
    a_data = blob(40, 1)
    a = await put(store, a_data)
    b = await put(store, blob(40, 2))
    reader = store.open_read(a)  # a is the least recent, but being read
    assert reader is not None
    c = await put(store, blob(40, 3))
    assert store.lookup(b) is None
    assert store.lookup(c) is not None
    assert await reader.read_all() == a_data
    assert store.usage().bytes <= 100


async def test_follower_pin_survives_eviction_after_commit(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=100)
    data = blob(60, 1)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    await writer.write(data)
    await writer.commit(60)
    # Another blob needs the space, but the follower still reads the first one: not kept.
    other = blob(60, 2)
    other_writer = await as_writer(store, digest_of(other))
    await other_writer.write(other)
    assert await other_writer.commit(60) is None
    assert store.lookup(digest) is not None
    assert await guard(follower.read_all()) == data
    # Once the follower is done, the space can be reclaimed.
    await put(store, other)
    assert store.lookup(digest) is None
    assert store.usage().bytes == 60 == disk_bytes(store)


async def test_blob_larger_than_cache_is_never_written_nor_evicts(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=100)
    keep = await put(store, blob(50, 1))
    big = blob(150, 2)
    writer = await as_writer(store, digest_of(big))
    follower = await store.fetch_or_join(digest_of(big))
    assert isinstance(follower, BlobFollower)
    await writer.write(big)
    assert os.listdir(store.tmp_dir) == []  # not a byte of it on disk
    assert await writer.commit(150) is None  # still verified, for a caller serving it itself
    with pytest.raises(NoRoom, match="larger than the whole cache"):  # the route passes it on
        await guard(follower.read_all())
    assert store.lookup(digest_of(big)) is None
    assert store.lookup(keep) is not None
    assert tmp_files(store) == []


async def test_in_flight_bytes_make_room_on_a_running_store(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=100)
    old = await put(store, blob(80, 1))
    data = blob(60, 2)
    writer = await as_writer(store, digest_of(data))
    await writer.write(data[:30])  # 80 + 30 > 100: the old blob goes while we still write
    await store.settle()  # eviction runs in the background
    assert store.lookup(old) is None
    assert disk_bytes(store) == 0
    await writer.write(data[30:])
    assert await writer.commit(60) is not None
    assert store.usage().bytes == 60


# --- administration --------------------------------------------------------------------------


async def test_remove_list_usage(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=1000)
    a = await put(store, blob(10, 1))
    b = await put(store, blob(20, 2))
    assert [e.digest for e in store.list_entries()] == [a, b]
    usage = store.usage()
    assert (usage.entries, usage.bytes, usage.max_size) == (2, 30, 1000)
    reader = store.open_read(a)
    with pytest.raises(BlobInUse):
        store.remove(a)
    assert reader is not None
    reader.close()
    assert store.remove(a)
    assert not store.remove(a)
    assert not store.path_of(a).exists()
    assert store.usage().bytes == 20


async def test_reader_dropped_unread_releases_its_pin(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = await put(store, b"pinned")
    reader = store.open_read(digest)
    assert store.usage().pinned == 1
    del reader
    gc.collect()
    await asyncio.sleep(0)  # the finalizer's release runs at the loop's next turn
    assert store.usage().pinned == 0
    assert store.remove(digest)


async def test_blob_deleted_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = await put(store, b"gone")
    os.unlink(store.path_of(digest))
    assert store.open_read(digest) is None
    assert store.usage().entries == 0


async def test_gc_removes_strays_old_temps_and_corrupt_blobs(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    good = await put(store, blob(100, 1))
    corrupt = await put(store, blob(100, 2))
    store.path_of(corrupt).write_bytes(blob(100, 3))  # bit rot: same name, other bytes
    stray = store.root / "blobs" / "sha256" / "zz"
    stray.mkdir(parents=True)
    (stray / "notes.txt").write_bytes(b"x" * 7)
    old_tmp, young_tmp = store.tmp_dir / "old", store.tmp_dir / "young"
    old_tmp.write_bytes(b"o")
    young_tmp.write_bytes(b"y")
    os.utime(old_tmp, (0, 0))

    report = await store.gc(verify=True)
    assert (report.removed_tmp, report.removed_stray, report.removed_corrupt) == (1, 1, 1)
    assert tmp_files(store) == ["young"]  # may belong to a live server's fill
    assert store.lookup(corrupt) is None
    assert await read(store, good) == blob(100, 1)


class SlowHasher:
    """A digest's hasher that takes its time over each chunk, and counts them."""

    def __init__(self, inner: Any, chunks: list[int], started: threading.Event) -> None:
        self.inner, self.chunks, self.started = inner, chunks, started

    def update(self, data: bytes) -> None:
        self.chunks.append(len(data))
        self.started.set()
        time.sleep(0.005)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return str(self.inner.hexdigest())


async def test_a_cancelled_gc_verify_stops_hashing_at_the_next_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C of ``docxy cache gc --verify`` cancelled its task, and ``asyncio.run`` then
    waited for the worker thread to hash the whole blob it was on (76 s for 30 GiB): the
    thread now stops at its next chunk."""
    from docxy.cache import blobs as blobs_module

    store = make_store(tmp_path)
    await put(store, blob(1 << 20, 1))
    monkeypatch.setattr(blobs_module, "READ_CHUNK", 4096)  # 256 chunks
    chunks: list[int] = []
    started, ended = threading.Event(), threading.Event()
    real_hasher, real_hash = Digest.hasher, blobs_module._hash_matches
    monkeypatch.setattr(Digest, "hasher", lambda d: SlowHasher(real_hasher(d), chunks, started))

    def hashing(entry: Any, *stop: threading.Event) -> bool:
        try:
            return real_hash(entry, *stop)
        finally:
            ended.set()

    monkeypatch.setattr(blobs_module, "_hash_matches", hashing)
    gc_task = spawn("gc", store.gc(verify=True, evict=False))
    assert await asyncio.to_thread(started.wait, GUARD)
    gc_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gc_task
    assert await asyncio.to_thread(ended.wait, GUARD)
    assert len(chunks) < 128, len(chunks)  # not the whole blob


async def test_gc_evicts_down_to_a_lowered_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=1000)
    digests = [await put(store, blob(100, i)) for i in range(5)]
    reopened = make_store(tmp_path, max_size=250)
    report = await reopened.gc()
    assert report.evicted == 3
    assert report.freed_bytes == 300
    assert [e.digest for e in reopened.list_entries()] == digests[3:]


# --- crash safety ----------------------------------------------------------------------------


async def test_restart_rebuilds_index_and_drops_partial_state(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = await put(store, blob(100, 1))
    second = await put(store, blob(200, 2))
    os.utime(store.path_of(first), (1000, 1000))  # first is the least recently used
    # A fill in progress when the process is killed: half a temp file, never committed.
    half = blob(300, 3)
    writer = await as_writer(store, digest_of(half))
    await writer.write(half[:150])
    assert len(tmp_files(store)) == 1
    # A foreign file with a blob-like name in the wrong directory is not a blob either.
    misplaced = store.root / "blobs" / "sha256" / "00" / digest_of(half).hex
    misplaced.parent.mkdir(parents=True, exist_ok=True)
    misplaced.write_bytes(half[:150])

    reopened = make_store(tmp_path)  # what the next process does on start
    assert tmp_files(reopened) == []
    assert reopened.lookup(digest_of(half)) is None
    assert [e.digest for e in reopened.list_entries()] == [first, second]
    assert reopened.usage().bytes == 300
    assert await read(reopened, second) == blob(200, 2)
    assert isinstance(await reopened.fetch_or_join(digest_of(half)), BlobWriter)
    writer.abort("test over")


async def test_a_blob_file_that_cannot_be_read_at_start_is_left_out_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One blob file whose lstat fails (EIO under its inode) while the index is read: it is
    not cached, the others are. It ended the index's thread with the error, which every
    lookup, usage and reserve raised again from then on (a 500 for every pull and /health)."""
    store = make_store(tmp_path)
    good, bad = await put(store, blob(100, 1)), await put(store, blob(100, 2))
    bad_path = store.path_of(bad)
    real = Path.lstat

    def lstat(self: Path) -> os.stat_result:
        if self == bad_path:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self)

    monkeypatch.setattr(Path, "lstat", lstat)
    caplog.set_level(logging.WARNING, logger="docxy.cache.blobs")
    reopened = make_store(tmp_path)  # a restart
    await reopened.indexed()

    assert reopened.lookup(good) is not None and reopened.lookup(bad) is None
    assert reopened.usage().bytes == 100
    assert "1 blob files" in caplog.text and "Input/output error" in caplog.text


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from docxy.cache.blobs import DiskBlobStore
    from docxy.core.digests import digest_of

    async def main() -> None:
        store = DiskBlobStore.open(Path(sys.argv[1]), 1 << 30, write_buffer=0)
        data = bytes(range(256)) * 4096
        writer = await store.fetch_or_join(digest_of(data))
        await writer.write(data[: len(data) // 2])
        print("half written", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # killed while waiting here

    asyncio.run(main())
    """
)


def test_kill_9_mid_write_leaves_nothing_servable(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "half written\n"
            assert len(os.listdir(tmp_path / "tmp")) == 1
        finally:
            proc.kill()  # SIGKILL: no finally blocks, no finalizers
            proc.wait(GUARD)
    assert proc.returncode == -9
    store = make_store(tmp_path)
    assert store.lookup(digest_of(data)) is None
    assert os.listdir(tmp_path / "tmp") == []
    assert store.usage().entries == 0


# --- the last byte waits for verification ----------------------------------------------------


@pytest.mark.parametrize("good", [True, False])
async def test_follower_gets_last_byte_only_after_verified_commit(
    tmp_path: Path, good: bool
) -> None:
    store = make_store(tmp_path)
    data = blob(4000)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    chunks = follower.__aiter__()
    await writer.write(data if good else data[:-1] + b"?")  # everything is on disk...
    assert await guard(chunks.__anext__()) == data[:-1]  # ...but one byte is held back
    rest = asyncio.gather(chunks.__anext__())
    if good:
        await writer.commit(len(data))
        assert (await guard(rest))[0] == data[-1:]
    else:
        with pytest.raises(DigestMismatch):
            await writer.commit(len(data))
        with pytest.raises(FillAborted):
            await guard(rest)


# --- the commit's sync: after the followers' last byte, not before it ---------------------


class HeldSync:
    """The commit's sync waits (in its worker thread) until :meth:`release`; then it syncs, or
    fails with ``error`` when one is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self._go = threading.Event(), threading.Event()
        self.error: OSError | None = None
        real = fill_module._sync_and_close

        def held(fd: int) -> None:
            self.started.set()
            self._go.wait(GUARD)
            if self.error is not None:
                os.close(fd)
                raise self.error
            real(fd)

        monkeypatch.setattr(fill_module, "_sync_and_close", held)

    def release(self) -> None:
        self._go.set()


async def test_followers_end_once_the_blob_verifies_while_the_commits_sync_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync of a big blob takes seconds (nothing forced its bytes to disk meanwhile): the
    followers have their last byte as soon as the length and digest are right, and a new
    caller meanwhile follows the fill still; the blob is a hit once the sync is done."""
    held_sync = HeldSync(monkeypatch)
    store = make_store(tmp_path)
    data = blob(3 << 20)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    async with writer:
        await write_in_pieces(writer, data, 1 << 20)
        committing = spawn("commit", writer.commit(len(data)))
        try:
            assert await guard(follower.read_all()) == data
            assert held_sync.started.is_set() and not committing.done()  # the sync still runs
            late = await store.fetch_or_join(digest)  # a hit: every byte is in, verified
            assert isinstance(late, BlobReader) and await guard(late.read_all()) == data
            assert not store.holds(digest)  # not committed yet
        finally:
            held_sync.release()
        assert await guard(committing) is not None
    assert await read(store, digest) == data


async def test_a_sync_failing_after_the_verify_leaves_followers_every_byte_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower still midway when the commit's sync fails (EIO) reads on from its own
    descriptor on the removed temp file: the bytes verified, only the cache lost them."""

    def failing_sync(fd: int) -> None:
        os.close(fd)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fill_module, "_sync_and_close", failing_sync)
    store = make_store(tmp_path)
    data = blob(3 << 20)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    chunks = follower.__aiter__()
    async with writer:
        await write_in_pieces(writer, data, 1 << 20)
        first = await guard(chunks.__anext__())  # midway
        assert 0 < len(first) < len(data)
        assert await writer.commit(len(data)) is None
    assert writer.fill.state is FillState.ABORTED
    rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == data
    assert store.lookup(digest) is None
    assert tmp_files(store) == []
    assert store.write_failed_at is not None


def test_write_all_survives_partial_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [buffers[0][:3]])  # the kernel may write less than asked

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        fill_module.write_all(fd, [b"hello ", b"", b"partial", b" world"])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hello partial world"


def test_read_chunk_follows_the_number_of_readers(tmp_path: Path) -> None:
    from docxy.cache.blobs import MIN_READ_CHUNK, READ_BUDGET
    from docxy.core.digests import digest_of

    store = DiskBlobStore.open(tmp_path, 1 << 30)
    data = b"x" * 4096
    digest = digest_of(data)
    path = store.path_of(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    store.scan()
    readers = [store.open_read(digest) for _ in range(100)]
    try:
        assert all(r is not None for r in readers)
        asks = [r._chunk_size for r in readers if r is not None]
        assert all(callable(ask) for ask in asks)
        ask = asks[0]
        assert callable(ask)
        assert ask() == MIN_READ_CHUNK  # a hundred at once: the floor, for every reader
        for r in readers[21:]:
            assert r is not None
            r.close()
        assert ask() == max(MIN_READ_CHUNK, READ_BUDGET // 21)  # 21 left
        for r in readers[1:21]:
            assert r is not None
            r.close()
        assert ask() == READ_CHUNK  # alone again: the full default chunk
    finally:
        for r in readers:
            if r is not None:
                r.close()


async def test_cancelled_writer_never_closes_the_file_under_its_io_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    store = make_store(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real_write_all = fill_module.write_all
    seen_fds: list[int] = []
    write_errors: list[OSError] = []

    def slow_write_all(fd: int, data: list[bytes]) -> None:
        seen_fds.append(fd)
        entered.set()
        assert release.wait(10), "test never released the write"
        try:
            real_write_all(fd, data)  # EBADF if the descriptor was closed meanwhile
        except OSError as exc:
            write_errors.append(exc)
            raise

    monkeypatch.setattr(fill_module, "write_all", slow_write_all)
    data = b"z" * (1 << 20)
    writer = await as_writer(store, digest_of(data))

    async def fill() -> None:
        async with writer:
            await writer.write(data)  # a full buffer: hashed and written in a thread

    task = asyncio.get_running_loop().create_task(fill())  # noqa: TID251 - the test owns it
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    for _ in range(20):  # let the cancellation reach the writer
        await asyncio.sleep(0)
    os.fstat(seen_fds[0])  # still open: the thread is still writing to it
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await guard(task)
    assert write_errors == []  # the write ended on the file it started on
    assert tmp_files(store) == []


async def test_a_blob_the_disk_cannot_move_into_place_leaves_no_temp_file(tmp_path: Path) -> None:
    """The verified, synced fill cannot be renamed into place (here its directory cannot be
    made: a file has its name; EIO, ENOSPC on a full disk's mkdir): its follower still gets the
    blob, and the temp file does not stay behind until the next start, uncounted."""
    store = make_store(tmp_path)
    data = blob(10_000)
    digest = digest_of(data)
    store.path_of(digest).parent.parent.mkdir(parents=True, exist_ok=True)
    store.path_of(digest).parent.write_bytes(b"")  # where the blob's directory goes
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    async with writer:
        await writer.write(data)
        assert await writer.commit(len(data)) is None
    assert await guard(follower.read_all()) == data
    assert store.lookup(digest) is None
    assert tmp_files(store) == []
