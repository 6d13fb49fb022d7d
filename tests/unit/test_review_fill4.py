"""Faults of the blob fill path a fourth review suspected (``docxy.cache.fill``: the pump's
pacing, its hashing thread, a fill the cache gave up): each test makes the race happen on
purpose and shows what a client of the mirror, or its operator, would see."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.directwrite import DirectWriter
from docxy.cache.errors import FillAborted, VerifyError
from docxy.cache.fill import RECENT, BlobFollower, BlobWriter, Download, InFlight, RecentReads
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.held import hold
from tests.unit.test_cache_blobs import GUARD, as_follower, as_writer, guard, make_store
from tests.unit.test_review_fill3 import _rest_of

PIECE = 10_000


class Reads:
    """An upstream body of ``count`` reads of :data:`PIECE` bytes, read with blocking calls;
    ``read_n`` is set once the ``n``-th read is made."""

    def __init__(self, count: int, n: int = 0) -> None:
        self.data = os.urandom(count * PIECE)
        self.pos, self.made, self.n = 0, 0, n
        self.read_n = threading.Event()

    def read(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + min(size, PIECE)]
        self.pos += len(chunk)
        self.made += 1
        if self.made == self.n:
            self.read_n.set()
        return chunk

    def interrupt(self) -> None:
        pass


def on_interrupt(monkeypatch: pytest.MonkeyPatch, writer: BlobWriter) -> asyncio.Event:
    """Set once ``writer``'s pump is interrupted (a cancel or an abort waits for its threads)."""
    interrupted = asyncio.Event()
    interrupt = writer._interrupt_pump

    def interrupting(pumped: Any) -> None:
        interrupt(pumped)
        interrupted.set()

    monkeypatch.setattr(writer, "_interrupt_pump", interrupting)
    return interrupted


async def test_a_follower_given_a_collected_ones_id_still_paces_the_pump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower collected unclosed (a client gone before its body began) leaves the pump's
    pacing later, from the loop. CPython gives a freed object's id to the next object of its
    size: here the next follower (forced, as every follower has id 1 here; unforced, 18 of 20
    followers made one after the other got their predecessor's). By ``id``, the late leaving
    took the new follower out of the pacing: the pump no longer waited for it, pushed the read
    it was about to take out of memory, and it read that back from the temp file (written past
    the page cache: a read of the disk) instead of getting the read itself."""
    monkeypatch.setattr(fill_module, "id", lambda _: 1, raising=False)
    reads = [bytes([n]) * 1000 for n in range(RECENT + 1)]
    path = tmp_path / "temp"
    path.write_bytes(b"".join(reads))
    fill = InFlight(digest_of(b"".join(reads)), path)

    def follow() -> BlobFollower:
        return BlobFollower(fill, os.open(path, os.O_RDONLY), os.close)

    dropped = follow()
    del dropped  # collected now: its leaving is a call on the loop, to come
    follower = follow()
    await asyncio.sleep(0)  # the loop makes that call
    for n, read in enumerate(reads[:RECENT]):  # what the pump's writing thread does
        fill.recent.add(n * 1000, read)
    fill.written = RECENT * 1000
    # The next read pushes out the first: not before the follower has taken it.
    adding = threading.Thread(
        target=lambda: fill.recent.add(RECENT * 1000, reads[-1], wait=10 * GUARD), daemon=True
    )
    adding.start()
    adding.join(0.2)
    chunks = cast(AsyncGenerator[bytes], aiter(follower))  # its _chunks()
    try:
        first = await guard(anext(chunks))
    finally:
        await chunks.aclose()
    adding.join(GUARD)
    assert not adding.is_alive()
    assert first is reads[0]  # the pump's read itself, from memory: not read back


class _FailsSecond:
    """A hasher whose second update fails once ``go`` is set (the first one is done)."""

    def __init__(self, go: threading.Event) -> None:
        self.go, self.updates = go, 0

    def update(self, data: object) -> None:
        self.updates += 1
        if self.updates == 2:
            self.go.wait(GUARD)
            raise MemoryError("no room to hash")

    def copy(self) -> _FailsSecond:  # the pump marks a copy before each read it hashes
        return _FailsSecond(self.go)


async def test_a_failing_hash_ends_the_pacing_of_its_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hashing thread failed while the writing thread waited for a slow client to take the
    oldest kept read: the fill is lost, but its pacing went on, and the fill failed (its
    clients cut, its WARNING) only when that wait ran out (``PACE_WAIT``, 2 s; made long here).
    The reading thread made the read that waits before the hash failed: only the first was
    hashed by then, and ``PUMP_DEPTH`` reads go before the first is hashed."""
    add = RecentReads.add

    def long_wait(self: RecentReads, offset: int, data: bytes, wait: float = 0) -> None:
        add(self, offset, data, 10 * GUARD)

    monkeypatch.setattr(RecentReads, "add", long_wait)
    body = Reads(2 * RECENT, n=RECENT + 1)  # the read that pushes out the first kept one
    store = make_store(tmp_path)
    digest = digest_of(body.data)
    writer = await as_writer(store, digest)
    slow = await as_follower(store, digest)  # a client that takes nothing yet
    writer._hash = _FailsSecond(body.read_n)  # type: ignore[assignment]
    async with writer:
        writer.announce(len(body.data))
        with pytest.raises(FillAborted, match="no room to hash"):
            await guard(writer.pump(body))
    slow.close()


class _HoldsAfterUpdate:
    """A hasher that, after each update, waits for :attr:`release` (``entered``: one waits)."""

    def __init__(self, digest: Any) -> None:
        self.real: Any = hashlib.new(digest.algorithm)
        self.entered, self.release = threading.Event(), threading.Event()

    def update(self, data: bytes) -> None:
        self.real.update(data)
        self.entered.set()
        self.release.wait(GUARD)

    def copy(self) -> Any:
        return self.real.copy()

    def hexdigest(self) -> str:
        return str(self.real.hexdigest())


async def test_a_second_cancel_hands_followers_no_hash_of_more_than_the_kept_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill of unknown length found no room (the blob outgrew the cache) while its writing
    thread still had a read to write: kept, the bytes written until then (none). Its task was
    cancelled twice (a shutdown) while it waited for its threads: the hash handed to the
    followers was taken then, with the hashing thread running behind, and held the read
    written after the give-up. A follower went on from it and found the blob wrong: a client
    that would have got it whole was cut."""
    body = Reads(2)
    digest = digest_of(body.data)
    store = make_store(tmp_path, max_size=PIECE + PIECE // 2)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    follower.rest = _rest_of(body.data)
    hasher = _HoldsAfterUpdate(digest)
    writer._hash = hasher  # type: ignore[assignment]
    written = hold(monkeypatch, DirectWriter, "write")

    async def pump() -> None:
        async with writer:
            writer.announce(None)
            await writer.pump(body)

    task = spawn("fill", pump())
    while writer.fill.kept is None:  # the second read found no room
        await guard(writer.fill.changed())
    assert writer.fill.kept == 0
    assert await asyncio.to_thread(written.entered.wait, GUARD)  # the first read not written yet
    interrupted = on_interrupt(monkeypatch, writer)
    task.cancel()
    await guard(interrupted.wait())  # the pump waits for its threads now
    written.release.set()
    assert await asyncio.to_thread(hasher.entered.wait, GUARD)  # the first read hashed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guard(task)
    hasher.release.set()
    assert await guard(follower.read_all()) == body.data


async def test_a_failed_last_write_does_not_hide_a_download_that_is_not_the_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk failed at the commit's write of the last bytes (the fill was given up: its
    clients got the blob from the upstream), and the bytes then failed the verification: the
    source's owner was told (the shared store marks its object bad) but nothing said so, as
    the fill had ended already: a fill that fails says so in one WARNING, with what was made
    of it."""
    caplog.set_level(logging.INFO, logger="docxy")
    good = os.urandom(100_000)
    corrupt = bytes([good[0] ^ 1]) + good[1:]
    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(0))
    store = DiskBlobStore.open(tmp_path, 1 << 30)  # its write buffer: the commit writes it all
    told: list[VerifyError] = []
    closed = asyncio.Event()

    def mismatch(exc: VerifyError) -> str:
        told.append(exc)
        return "the source is marked bad"

    async def chunks() -> AsyncIterator[bytes]:
        yield corrupt

    async def close() -> None:
        closed.set()

    async def fetch() -> Download:
        return Download(len(good), chunks(), close, mismatch=mismatch, origin="shared")

    follower = await store.fill(digest_of(good), fetch)
    assert isinstance(follower, BlobFollower)
    follower.rest = _rest_of(good)  # the upstream's
    assert await guard(follower.read_all()) == good
    await guard(closed.wait())
    assert len(told) == 1
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "digest mismatch" in r.getMessage()
    ]
    assert len(said) == 1 and "from shared" in said[0] and "marked bad" in said[0]
    assert store.lookup(digest_of(good)) is None
