"""``cache.max_size`` as a promise about the disk: fills reserve their length before writing, so
committed blobs and temp files together never pass it, and a blob that finds no room is not
written at all (its clients pass it through, with the reason).

The disk is measured for real after every write of every fill (``fill.write_all`` wrapped),
in whatever thread writes, counting each file once by inode (a rename between two directory
reads is not counted twice).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Cache, open_cache
from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FillAborted, NoRoom
from docxy.cache.fill import BlobFollower, Download
from docxy.cache.reader import BlobReader
from docxy.core.digests import Digest, digest_of
from tests.unit.test_cache_blobs import blob, guard, make_store, put
from tests.unit.test_cache_eviction import cached_image, layer, offered_whole


async def all_freed(store: Any, seconds: float = 10.0) -> None:
    """Wait (bounded) until the fills whose blob verified are committed (their clients may be
    done before the sync is) and the store counts no removed file as still being freed: an
    aborted fill's temp file is closed in a worker thread, and the store hears of it a moment
    later."""
    await asyncio.wait_for(store.commits_done(), seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while store.usage().freeing:
        assert loop.time() < deadline, f"{store.usage().freeing} bytes never freed"
        await asyncio.sleep(0.01)


def bytes_on_disk(root: Path) -> int:
    """Every file of the blob store under ``root``: blobs, temp files, evicted files not yet
    deleted (``cache.max_size`` caps blobs; manifests and tags are stored beside them), and
    files removed but still held open here, whose blocks are not freed yet (an aborted fill's
    temp file until its last descriptor is closed)."""
    seen: dict[tuple[int, int], int] = {}
    for dirpath, _dirs, files in [*os.walk(root / "blobs"), *os.walk(root / "tmp")]:
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # deleted meanwhile
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{root}/") and target.endswith(" (deleted)"):
                st = os.fstat(int(fd))
                # Still that file? Closed and its number reused meanwhile (a directory the
                # walk above opened: 4096 bytes counted once), it is not.
                if os.readlink(f"/proc/self/fd/{fd}") == target:
                    seen[(st.st_dev, st.st_ino)] = st.st_size
        except OSError:  # closed meanwhile
            continue
    return sum(seen.values())


@dataclass
class DiskWatch:
    """The most bytes seen on disk under ``root`` right after any write of any fill.

    Each write and the measurement after it hold ``lock``, so no other fill writes while the
    files are summed one by one: a sum of files read at different moments could otherwise count
    a file just before it was freed and another fill's write into that room just after (more
    than was ever on disk at once). Frees are not held: they can only lower the sum.
    """

    root: Path
    peak: int = 0
    writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def after_write(self) -> None:
        """Measure (with ``lock`` held)."""
        store = self.root / "cache"  # the ``cache`` fixture's store, else a store in root
        size = bytes_on_disk(store if store.is_dir() else self.root)
        self.writes += 1
        self.peak = max(self.peak, size)


def watch_writes(root: Path, monkeypatch: pytest.MonkeyPatch) -> DiskWatch:
    """Measure the disk under ``root`` after every write of every fill from now on."""
    watched = DiskWatch(root)
    real_write_all = fill_module.write_all

    def write_all(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
        with watched.lock:
            real_write_all(fd, chunks)
            watched.after_write()

    monkeypatch.setattr(fill_module, "write_all", write_all)
    return watched


@pytest.fixture
def watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskWatch]:
    yield watch_writes(tmp_path, monkeypatch)


class Body:
    """A blocking upstream body, as a fill's pump thread reads it."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def read(self, size: int) -> bytes:
        data = self.data[self.pos : self.pos + min(size, self.step)]
        self.pos += len(data)
        return data

    def interrupt(self) -> None:
        pass


class Upstream:
    """Serves one blob per fetch, announcing ``announced`` bytes (None: no Content-Length), as
    chunks on the loop or as a body read by the pump's thread; counts fetches."""

    def __init__(
        self, data: bytes, *, announced: int | None = -1, body: bool = False, step: int = 50
    ) -> None:
        self.data, self.body, self.step = data, body, step
        self.announced = len(data) if announced == -1 else announced
        self.fetches = 0

    async def fetch(self) -> Download:
        self.fetches += 1
        if self.body:
            return Download(self.announced, None, _closed, body=Body(self.data, self.step))
        return Download(self.announced, self._chunks(), _closed)

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.step):
            await asyncio.sleep(0)  # let the other fills write in between
            yield self.data[start : start + self.step]


async def _closed() -> None:
    pass


async def served(stream: BlobReader | BlobFollower) -> bytes | NoRoom:
    """What a client of the route gets: the bytes, or the pass-through's reason."""
    try:
        return await guard(stream.read_all())
    except NoRoom as exc:
        return exc


KINDS: dict[str, dict[str, Any]] = {
    "chunks, length known": {},
    "chunks, no length": {"announced": None},
    "pump, length known": {"body": True},
    "pump, no length": {"body": True, "announced": None},
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_concurrent_fills_that_fit_alone_never_take_the_disk_past_the_cap(
    tmp_path: Path, watch: DiskWatch, kind: str
) -> None:
    store = make_store(tmp_path, max_size=1000)
    old = [await put(store, blob(200, i)) for i in range(3)]  # 600 committed, unpinned
    reader = store.open_read(old[2])  # one of them being read: it cannot go
    assert reader is not None
    datas = [blob(300, 10 + i) for i in range(5)]  # 1500 more: each fits, together they do not
    upstreams = [Upstream(data, **KINDS[kind]) for data in datas]
    streams = [
        await store.fill(digest_of(d), u.fetch) for d, u in zip(datas, upstreams, strict=True)
    ]
    results = await asyncio.gather(*(served(s) for s in streams))
    await store.settle()
    reader.close()

    assert watch.writes > 0
    assert watch.peak <= 1000, f"{watch.peak} bytes on disk, cap 1000"
    kept = [d for d in datas if store.lookup(digest_of(d)) is not None]
    assert kept, "some fills were kept"
    if "announced" not in KINDS[kind]:  # lengths known up front: as many as fit beside the read
        assert len(kept) == 2  # blob (200 + 2 x 300 <= 1000), the two others evicted for them
    for data, result in zip(datas, results, strict=True):
        if isinstance(result, NoRoom):
            assert "no room" in str(result)
            assert store.lookup(digest_of(data)) is None
        else:
            assert result == data
    assert store.lookup(old[2]) is not None  # read while the room was made: kept
    await all_freed(store)
    usage = store.usage()
    assert usage.bytes == bytes_on_disk(tmp_path) <= 1000
    assert (usage.reserved, usage.in_flight) == (0, 0)


async def test_a_blob_larger_than_the_cache_is_never_fetched_twice_nor_evicts(
    tmp_path: Path, watch: DiskWatch
) -> None:
    store = make_store(tmp_path, max_size=1000)
    keep = await put(store, blob(600, 1))
    big = blob(1500, 2)
    upstream = Upstream(big)
    first = await store.fill(digest_of(big), upstream.fetch)
    result = await served(first)
    assert isinstance(result, NoRoom)
    assert "larger than the whole cache" in str(result)
    with pytest.raises(NoRoom, match="larger than the whole cache"):
        await store.fill(digest_of(big), upstream.fetch)  # known now: straight through
    assert upstream.fetches == 1
    assert store.lookup(keep) is not None  # nothing evicted for it
    assert store.evicted == 0
    assert watch.peak <= 1000


async def test_room_taken_by_reads_and_fills_passes_through_then_fills_again(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path, max_size=1000)
    held = await put(store, blob(800, 1))
    reader = store.open_read(held)  # pinned: eviction cannot free it
    assert reader is not None
    data = blob(300, 2)
    upstream = Upstream(data)
    result = await served(await store.fill(digest_of(data), upstream.fetch))
    assert isinstance(result, NoRoom)
    assert "800 committed" in str(result)
    with pytest.raises(NoRoom):  # for a while, without asking upstream again
        await store.fill(digest_of(data), upstream.fetch)
    assert upstream.fetches == 1
    assert store.lookup(held) is not None
    reader.close()
    store._no_room.pop(digest_of(data))  # the minute is over
    assert await served(await store.fill(digest_of(data), upstream.fetch)) == data
    assert store.lookup(held) is None  # evicted once nobody read it


async def test_a_blob_that_found_no_room_is_cached_as_soon_as_its_room_is_free(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path, max_size=1000)
    held = await put(store, blob(800, 1))
    reader = store.open_read(held)
    assert reader is not None
    data = blob(300, 2)
    upstream = Upstream(data)
    assert isinstance(await served(await store.fill(digest_of(data), upstream.fetch)), NoRoom)
    reader.close()
    with pytest.raises(NoRoom):  # the room is there to be made, but only by an eviction
        await store.fill(digest_of(data), upstream.fetch)
    assert upstream.fetches == 1
    assert store.remove(held)  # now free without evicting anything: well within the minute
    assert await served(await store.fill(digest_of(data), upstream.fetch)) == data
    assert upstream.fetches == 2
    assert store.lookup(digest_of(data)) is not None


async def test_a_blob_of_unknown_length_outgrowing_the_room_is_cut_then_passed_through(
    tmp_path: Path, watch: DiskWatch
) -> None:
    store = make_store(tmp_path, max_size=1000)
    held = await put(store, blob(500, 1))
    reader = store.open_read(held)
    assert reader is not None
    data = blob(700, 2)
    upstream = Upstream(data, announced=None, body=True, step=100)
    follower = await store.fill(digest_of(data), upstream.fetch)
    assert isinstance(follower, BlobFollower)
    assert await guard(follower.size()) is None  # streamed as it comes...
    with pytest.raises(NoRoom, match="no room"):  # ...and cut where the room ends
        await guard(follower.read_all())
    with pytest.raises(NoRoom):  # the client's retry passes through
        await store.fill(digest_of(data), upstream.fetch)
    assert upstream.fetches == 1
    assert watch.peak <= 1000
    reader.close()


@pytest.mark.parametrize("body", [False, True])
async def test_more_bytes_than_announced_are_never_written(
    tmp_path: Path, watch: DiskWatch, body: bool
) -> None:
    store = make_store(tmp_path, max_size=10_000)
    data = blob(1000, 1)
    upstream = Upstream(data + b"x" * 3000, announced=len(data), body=body, step=100)
    follower = await store.fill(digest_of(data), upstream.fetch)
    with pytest.raises(FillAborted) as raised:
        await guard(follower.read_all())
    assert not isinstance(raised.value, NoRoom)  # a failed upstream, not a full cache
    assert "more than the 1000 bytes it announced" in str(raised.value)
    assert watch.peak <= len(data)
    assert store.lookup(digest_of(data)) is None
    assert os.listdir(store.tmp_dir) == []
    assert store.usage().reserved == 0


async def test_a_running_fill_shows_its_reservation(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=1000)
    data = blob(400, 1)
    gate = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        await gate.wait()
        yield data

    async def fetch() -> Download:
        return Download(len(data), chunks(), _closed)

    follower = await store.fill(digest_of(data), fetch)
    assert isinstance(follower, BlobFollower)
    assert await guard(follower.size()) == 400  # announced once reserved
    usage = store.usage()
    assert (usage.bytes, usage.reserved, usage.in_flight) == (0, 400, 0)
    gate.set()
    assert await guard(follower.read_all()) == data
    await guard(store.commits_done())
    usage = store.usage()
    assert (usage.bytes, usage.reserved) == (400, 0)


# --- images ----------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return open_cache(tmp_path / "cache", max_size=1000, tag_ttl=300)


async def test_room_for_a_fill_is_made_image_by_image(cache: Cache, watch: DiskWatch) -> None:
    older = await cached_image(cache, "team/older", [layer("cfg-o", 10), layer("l-o")])
    newer = await cached_image(cache, "team/newer", [layer("cfg-n", 10), layer("l-n")])
    loose = layer("loose", 100)
    await put(cache.blobs, loose)  # 700 committed
    data = blob(450, 9)  # 1150 > 1000: 250 must go, as the loose blob and the older image
    result = await served(await cache.blobs.fill(digest_of(data), Upstream(data).fetch))
    assert result == data
    await cache.blobs.commits_done()
    assert await offered_whole(cache, newer) is True
    assert await offered_whole(cache, older) is None  # forgotten whole, never half
    assert cache.blobs.lookup(digest_of(loose)) is None
    assert watch.peak <= 1000
    assert cache.blobs.usage().bytes == bytes_on_disk(cache.blobs.root) <= 1000


async def test_no_room_when_a_pulled_image_is_in_use_forgets_no_image(
    cache: Cache, watch: DiskWatch
) -> None:
    kept = await cached_image(cache, "team/kept", [layer("cfg-k", 10), layer("l-k", 690)])
    reader = cache.blobs.open_read(digest_of(layer("l-k", 690)))  # being pulled now
    assert reader is not None
    data = blob(450, 9)
    result = await served(await cache.blobs.fill(digest_of(data), Upstream(data).fetch))
    assert isinstance(result, NoRoom)
    reader.close()
    assert await offered_whole(cache, kept) is True  # nothing forgotten for no room
    assert cache.blobs.lookup(digest_of(layer("l-k", 690))) is not None
    assert watch.peak <= 1000


async def first_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, room_wait: int
) -> tuple[DiskBlobStore, Digest, Digest]:
    """A store of 1000 bytes holding two blobs of 300, the first of which cannot be deleted
    once evicted (EPERM in the eviction's worker thread): (store, first, second)."""
    real_unlink = os.unlink
    store = make_store(tmp_path, max_size=1000, room_wait=room_wait)
    first = await put(store, blob(300, 1))
    second = await put(store, blob(300, 2))

    def refuse_first(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name.startswith(f"evicted-{first.hex}"):
            raise PermissionError(1, "Operation not permitted")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_first)
    return store, first, second


async def test_an_evicted_file_that_cannot_be_deleted_does_not_stop_eviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes stay counted, but nothing will free them: a fill needing room evicts
    another blob rather than waiting for them until it gives up."""
    store, first, second = await first_stuck(tmp_path, monkeypatch, room_wait=30)
    data = blob(600, 3)  # 400 free: first is evicted, and stuck; evicting second makes room
    writer = await store.fetch_or_join(digest_of(data))
    assert isinstance(writer, fill_module.BlobWriter)
    async with asyncio.timeout(10), writer:
        await writer.write(data)
        entry = await writer.commit(len(data))
    await store.settle()
    assert entry is not None and store.holds(digest_of(data))
    assert not store.holds(first) and not store.holds(second)
    usage = store.usage()
    assert (usage.bytes, usage.freeing) == (600, 300)  # the stuck file's bytes still count


async def test_evicted_files_that_cannot_be_deleted_stay_counted_and_are_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EPERM on an evicted file in tmp/: the other evicted files are still deleted, and the
    stuck one's bytes count against the cap until the next start clears tmp/ (it holds them)."""
    store, first, second = await first_stuck(tmp_path, monkeypatch, room_wait=0)
    caplog.set_level(logging.WARNING, logger="docxy")
    big = blob(700, 3)
    writer = await store.fetch_or_join(digest_of(big))
    assert isinstance(writer, fill_module.BlobWriter)
    async with writer:
        await writer.write(big)
        # 300 of the 600 evicted are still on disk: 700 do not fit, passed through uncached
        assert await writer.commit(len(big)) is None
    await store.settle()
    assert not store.holds(first) and not store.holds(second)
    left = sorted(path.name.split(".")[0] for path in store.tmp_dir.iterdir())
    assert left == [f"evicted-{first.hex}"]
    assert store.usage().freeing == 300
    said = [r.getMessage() for r in caplog.records if "cannot delete" in r.getMessage()]
    assert len(said) == 1 and "300 bytes" in said[0]


async def test_a_removed_file_a_slow_client_still_reads_does_not_stop_an_eviction(
    tmp_path: Path,
) -> None:
    """A fill given up keeps its temp file open for its followers until their clients have
    read the bytes it kept (minutes, for a slow one). A fill short of room counted those bytes
    as about to be freed and never evicted: it waited ``room_wait`` and passed its blob
    through, while an evictable blob stayed cached. It evicts once UNLINKED_GRACE is over."""
    store = make_store(tmp_path, max_size=1000, room_wait=5)
    evictable = await put(store, blob(500, 1))
    reader = store.open_read(evictable)  # pinned for now
    assert reader is not None
    given_up = blob(900, 2)
    slow = await store.fill(digest_of(given_up), Upstream(given_up, announced=None).fetch)
    assert isinstance(slow, BlobFollower)
    await guard(until_kept(slow))  # outgrew the room (the other blob pinned): given up
    reader.close()  # evictable now; the slow client's follower still holds the removed file

    wanted = blob(400, 3)
    follower = await store.fill(digest_of(wanted), Upstream(wanted).fetch)
    try:
        assert await guard(follower.read_all()) == wanted
    finally:
        follower.close()
        slow.close()
    assert not store.holds(evictable)
    await guard(store.commits_done())
    assert store.holds(digest_of(wanted))


async def until_kept(follower: BlobFollower) -> None:
    while follower.fill.kept is None:
        await asyncio.sleep(0.005)
