"""A follower that keeps up with a pumped fill gets the pump's reads from memory, as read.

The pump's latest reads (``InFlight.recent``) go to a follower that is at their start as the
very objects the upstream body returned: no read back from the temp file, no copy. One that
fell behind reads the temp file up to them, then takes them too. The read that holds the last
byte still waits for the verified commit.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path

import pytest

from docxy.cache.errors import DigestMismatch, FillAborted
from docxy.cache.fill import (
    PUMP_DEPTH,
    RECENT,
    BlobFollower,
    BlobWriter,
    InFlight,
    RecentReads,
)
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.test_cache_blobs import GUARD, as_follower, as_writer, guard, make_store

READS = [bytes([n]) * 100_000 for n in range(RECENT + 4)]
DATA = b"".join(READS)


class Paced:
    """An upstream body of ``reads`` whose every read waits to be let go (:meth:`let_go`);
    remembers the objects it returned."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)
        self._go = threading.Semaphore(0)
        self.given: list[bytes] = []

    def let_go(self, reads: int = 1) -> None:
        self._go.release(reads)

    def read(self, size: int) -> bytes:
        if not self._go.acquire(timeout=GUARD):
            raise TimeoutError("the test never let this read go")
        if not self._reads:
            return b""
        data = self._reads.pop(0)
        self.given.append(data)
        return data

    def interrupt(self) -> None:
        self._go.release(len(self._reads) + 1)


async def pumped(writer: BlobWriter, body: Paced, size: int) -> None:
    async with writer:
        writer.announce(size)
        await writer.pump(body)
        await writer.commit(size)


async def read_keeping_up(follower: BlobFollower, body: Paced) -> list[bytes]:
    """Read the follower, letting the body read one more each time a chunk comes: never more
    than two reads are ahead of the follower (the one it waits on holds the last byte so far)."""
    got: list[bytes] = []
    body.let_go(2)
    async with follower:
        async for chunk in follower:
            got.append(chunk)
            body.let_go()
    return got


async def chunks_of(follower: BlobFollower) -> list[bytes]:
    return [chunk async for chunk in follower]


async def test_a_follower_that_keeps_up_gets_the_reads_themselves(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    follower = await as_follower(store, digest_of(DATA))
    body = Paced(READS)
    fill = spawn("fill", pumped(writer, body, len(DATA)))
    got = await guard(read_keeping_up(follower, body))
    await guard(fill)
    assert b"".join(got) == DATA
    assert len(got) == len(READS) and all(a is b for a, b in zip(got, body.given, strict=True))
    entry = store.lookup(digest_of(DATA))
    assert entry is not None and entry.path.read_bytes() == DATA


async def test_a_follower_behind_reads_the_file_up_to_the_recent_reads(tmp_path: Path) -> None:
    """Joined late: the temp file up to the first read still in memory, in one read, then the
    reads in memory, whole (the next read starts where they do: no copy of a part)."""
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    body = Paced(READS)
    body.let_go(len(READS))  # every read, not yet the end
    fill = spawn("fill", pumped(writer, body, len(DATA)))

    async def all_written() -> None:
        while writer.fill.written < len(DATA):
            await asyncio.sleep(0.01)

    await guard(all_written())
    follower = await as_follower(store, digest_of(DATA))  # joins once every read is in
    body.let_go()
    async with follower:
        got = await guard(chunks_of(follower))
    await guard(fill)
    assert b"".join(got) == DATA
    from_file = len(DATA) - RECENT * len(READS[0])
    assert [len(chunk) for chunk in got[:-RECENT]] == [from_file]
    assert all(a is b for a, b in zip(got[-RECENT:], body.given[-RECENT:], strict=True))


async def test_the_read_with_the_last_byte_waits_for_the_verdict(tmp_path: Path) -> None:
    """Bytes that are not the blob: a follower that kept up got every read but the last, then
    is cut; the last read, from memory as the others, never reaches it."""
    store = make_store(tmp_path)
    claimed = digest_of(b"another blob")
    writer = await as_writer(store, claimed)
    follower = await as_follower(store, claimed)
    body = Paced(READS)
    fill = spawn("fill", pumped(writer, body, len(DATA)))
    got: list[bytes] = []
    body.let_go(2)
    with pytest.raises(FillAborted, match="digest mismatch"):
        async with follower:
            async for chunk in follower:
                got.append(chunk)
                body.let_go()
    with pytest.raises(DigestMismatch):
        await asyncio.wait_for(fill, GUARD)
    assert len(got) == len(READS) - 1
    assert all(a is b for a, b in zip(got, READS[:-1], strict=True))


async def test_bytes_written_on_the_loop_let_the_reads_go(tmp_path: Path) -> None:
    """A rest written on the loop (a pump's download broke off and went on as chunks): the
    pump's reads are no longer the latest bytes and are let go; the follower reads the file."""
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    follower = await as_follower(store, digest_of(DATA))
    pumped_reads = RECENT + 1  # the first is no longer kept
    body = Paced(READS[:pumped_reads])
    body.let_go(pumped_reads + 1)
    async with writer:
        writer.announce(len(DATA))
        await guard(writer.pump(body))
        offsets = [n * 100_000 for n in range(pumped_reads)]
        assert [writer.fill.recent.at(at) for at in offsets] == [
            None,
            *((at, read) for at, read in zip(offsets[1:], READS[1:pumped_reads], strict=True)),
        ]
        await writer.write(b"".join(READS[pumped_reads:]))
        assert len(writer.fill.recent) == 0
        await writer.commit(len(DATA))
    async with follower:
        got = await guard(chunks_of(follower))
    assert b"".join(got) == DATA


async def test_a_follower_midway_into_a_recent_read_gets_the_rest_of_it(tmp_path: Path) -> None:
    """A follower whose last read of the temp file ended inside a read the pump keeps (it read
    up to the byte held back for the commit, before that read was kept) gets the rest of that
    read from memory, then the next read whole; the one holding the last byte waits."""
    path = tmp_path / "temp"
    first, second = b"a" * 100, b"b" * 100
    path.write_bytes(first + second)
    fill = InFlight(digest_of(first + second), path, written=200)
    fill.recent.add(0, first)
    fill.recent.add(100, second)
    closed: list[int] = []
    follower = BlobFollower(fill, os.open(path, os.O_RDONLY), lambda fd: closed.append(fd))
    try:
        assert await follower._next(40, 199) == first[40:]
        assert await follower._next(100, 200) is second  # the read itself, not a copy
        assert await follower._next(150, 199) is None  # holds the last byte: wait
    finally:
        follower.close()
    assert len(closed) == 1
    os.close(closed[0])


def full(keep: int = 2) -> RecentReads:
    """Kept reads of 100 bytes from 0 (none waits: nobody reads yet)."""
    recent = RecentReads(keep=keep)
    for n in range(keep):
        recent.add(n * 100, b"x" * 100, wait=0.01)
    assert recent.paced
    return recent


def waiting(recent: RecentReads, offset: int, wait: float) -> threading.Thread:
    """``recent.add`` of a read at ``offset`` in a thread of its own (a daemon: one that a
    broken wake-up leaves waiting does not hold the test run)."""
    adding = threading.Thread(target=lambda: recent.add(offset, b"y" * 100, wait=wait), daemon=True)
    adding.start()
    return adding


def test_a_read_is_let_go_once_the_leading_follower_has_taken_it() -> None:
    """The pump's next read would push out the oldest kept read (bytes 0-99): it waits until
    the fastest follower has taken all of it, then is kept."""
    recent = full()
    recent.took(reader=1, end=0)
    recent.took(reader=2, end=50)
    adding = waiting(recent, 200, wait=10 * GUARD)  # only a wake-up ends it in time
    adding.join(0.2)
    assert adding.is_alive() and recent.start() == 0
    recent.took(reader=1, end=100)  # the other follower has taken it
    adding.join(GUARD)
    assert not adding.is_alive() and recent.paced
    assert recent.start() == 100 and recent.at(250) == (200, b"y" * 100)


def test_a_follower_that_does_not_take_it_in_time_stops_pacing_the_fill() -> None:
    recent = full()
    recent.took(reader=1, end=0)
    recent.add(200, b"y" * 100, wait=0.05)
    assert not recent.paced and recent.start() == 100
    adding = waiting(recent, 300, wait=10 * GUARD)
    adding.join(GUARD)
    assert not adding.is_alive()  # no wait: pacing is over for this fill


@pytest.mark.parametrize("release", ["left", "unpaced"])
def test_a_follower_leaving_or_a_stopped_pump_ends_the_wait(release: str) -> None:
    recent = full()
    recent.took(reader=1, end=0)
    adding = waiting(recent, 200, wait=10 * GUARD)
    adding.join(0.1)
    assert adding.is_alive()
    if release == "left":
        recent.left(reader=1)
    else:
        recent.unpaced()
    adding.join(GUARD)
    assert not adding.is_alive() and recent.at(200) == (200, b"y" * 100)


async def test_a_follower_collected_unclosed_leaves_from_the_loop(tmp_path: Path) -> None:
    """The garbage collector may finalize a follower in a thread that holds its fill's lock
    (here: this one, inside it): leaving must not take that lock there, which would wait on
    itself for ever; it leaves from the loop instead, and the fill paces for nobody."""
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    follower = await as_follower(store, digest_of(DATA))
    recent = follower.fill.recent
    cycle: list[object] = [follower]
    cycle.append(cycle)  # collected only by the cycle collector
    del follower, cycle
    collected = threading.Thread(target=lambda: _collect_holding(recent), daemon=True)
    collected.start()
    collected.join(GUARD)
    assert not collected.is_alive(), "the finalizer waited on the lock its thread held"
    for _ in range(3):
        await asyncio.sleep(0)
    assert not recent._taken
    writer.abort("test over")


def _collect_holding(recent: RecentReads) -> None:
    with recent._moved:
        gc.collect()


async def test_the_pump_reads_no_further_ahead_of_its_follower_than_the_reads_it_keeps(
    tmp_path: Path,
) -> None:
    """A follower slower than the upstream: every read the pump makes comes when the follower
    has taken all the kept reads but the latest, so it gets each from memory, none from the
    temp file (which, written past the page cache, would be a read of the disk). The pump
    reads on only as far as the reads in its pipeline (hashed in turn) and those it keeps."""
    reads = [bytes([n]) * 10_000 for n in range(3 * (RECENT + PUMP_DEPTH))]
    data = b"".join(reads)
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(data))
    follower = await as_follower(store, digest_of(data))
    taken = [0]
    ahead: list[int] = []

    class Eager(Paced):
        def read(self, size: int) -> bytes:
            ahead.append(len(b"".join(self.given)) - taken[0])
            return super().read(size)

    body = Eager(reads)
    body.let_go(len(reads) + 1)  # the upstream sends as fast as asked
    got: list[bytes] = []

    async def slow() -> None:
        async with follower:
            async for chunk in follower:
                got.append(chunk)
                await asyncio.sleep(0.005)
                taken[0] += len(chunk)

    reading = spawn("follower", slow())
    await guard(pumped(writer, body, len(data)))
    await guard(reading)
    assert b"".join(got) == data
    assert all(a is b for a, b in zip(got, body.given, strict=True))  # every read from memory
    assert max(ahead) <= (RECENT + PUMP_DEPTH + 1) * len(reads[0])
