"""A fill's pump hashes each read while the same read is written, not after (``docxy.cache.fill``):
the hash no longer waits for the disk, and a fill given up after a failed write still hands its
followers the hash of just the bytes written, though the hashing thread had gone past them."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.directwrite import DirectWriter
from docxy.cache.fill import PUMP_DEPTH
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.held import hold
from tests.unit.test_cache_blobs import GUARD, as_follower, as_writer, guard, make_store
from tests.unit.test_review_fill3 import _rest_of
from tests.unit.test_review_fill4 import PIECE, Reads

#: How long a test waits for what the pump should do at once (short: on a pump that hashes
#: only what was written, the wait runs out and the test fails).
SOON = 3.0


class Counting:
    """A real hasher that says when it has taken in ``until`` bytes."""

    def __init__(self, algorithm: str, until: int) -> None:
        self.real: Any = hashlib.new(algorithm)
        self.taken, self.until = 0, until
        self.reached = threading.Event()

    def update(self, data: bytes) -> None:
        self.real.update(data)
        self.taken += len(data)
        if self.taken >= self.until:
            self.reached.set()

    def copy(self) -> Any:
        return self.real.copy()

    def hexdigest(self) -> str:
        return str(self.real.hexdigest())


def third_write_fails(monkeypatch: pytest.MonkeyPatch, first: Callable[[], object]) -> None:
    """The fill's third write fails (a full disk), once ``first`` has returned."""
    real_write_all = fill_module.write_all
    writes = 0

    def third_fails(fd: int, chunks: list[bytes]) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            first()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, chunks)

    monkeypatch.setattr(fill_module, "write_all", third_fails)


async def test_a_read_is_hashed_while_its_write_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = Reads(3)
    digest = digest_of(body.data)
    store = make_store(tmp_path)
    writer = await as_writer(store, digest)
    hasher = Counting(digest.algorithm, PIECE)
    writer._hash = hasher  # type: ignore[assignment]
    written = hold(monkeypatch, DirectWriter, "write")  # the disk does not answer yet
    async with writer:
        writer.announce(len(body.data))
        pumping = spawn("pump", writer.pump(body))
        assert await asyncio.to_thread(written.entered.wait, GUARD)
        assert await asyncio.to_thread(hasher.reached.wait, SOON)  # hashed, not yet written
        assert writer.fill.written == 0
        written.release.set()
        await guard(pumping)
        assert await writer.commit(len(body.data)) is not None
    entry = store.lookup(digest)
    assert entry is not None and entry.path.read_bytes() == body.data


@pytest.mark.parametrize("reads", [5, 3 * PUMP_DEPTH])
async def test_a_fill_given_up_hands_on_the_hash_of_the_bytes_written_not_of_all_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: int
) -> None:
    """The third write fails (a full disk) once the hashing thread has taken in every read it
    could: all five, or the most the pipeline lets through (``PUMP_DEPTH`` past the two
    written). The fill keeps two reads; its followers get a copy of the hash of just those
    (marked on the way), not a re-read of the temp file, and the blob is whole."""
    body = Reads(reads)
    digest = digest_of(body.data)
    store = make_store(tmp_path)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    follower.rest = _rest_of(body.data)
    hasher = Counting(digest.algorithm, min(reads, 2 + PUMP_DEPTH) * PIECE)
    writer._hash = hasher  # type: ignore[assignment]
    third_write_fails(monkeypatch, lambda: hasher.reached.wait(SOON))  # hash ahead of disk
    reread = hold(monkeypatch, fill_module.BlobFollower, "_hashed")  # must not be needed
    async with writer:
        writer.announce(len(body.data))
        await guard(writer.pump(body))
    assert hasher.reached.is_set() and writer.fill.kept == 2 * PIECE
    kept_hash = writer.fill.kept_hash
    assert kept_hash is not None
    assert kept_hash.hexdigest() == hashlib.sha256(body.data[: 2 * PIECE]).hexdigest()
    reread.release.set()
    assert await guard(follower.read_all()) == body.data
    assert not reread.entered.is_set()


async def test_a_failed_write_stops_the_reads_without_one_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third write fails while the reading thread waits for a slot, ``PUMP_DEPTH`` reads
    past the two written: the slot the failed write lets go is not taken for one more read of
    the upstream (nobody would get it). Before, the reading thread had passed its check for a
    failure before it waited, and read once more (a race CI met: ``test_direct_fill``'s
    bound on the bytes read)."""
    body = Reads(3 * PUMP_DEPTH, n=2 + PUMP_DEPTH)
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(body.data))

    def reads_done() -> None:
        assert body.read_n.wait(SOON)  # the reading thread has read all it may
        time.sleep(0.2)  # and waits for a slot now

    third_write_fails(monkeypatch, reads_done)
    async with writer:
        writer.announce(len(body.data))
        await guard(writer.pump(body))
    assert writer.fill.kept == 2 * PIECE
    assert body.made == 2 + PUMP_DEPTH
