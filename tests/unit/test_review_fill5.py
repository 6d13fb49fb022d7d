"""Faults of the blob fill path a fifth review suspected (``docxy.cache.fill``: the pump that
hashes each read beside its write, and the hash a fill given up hands its followers): each
test makes the race happen on purpose and shows what a client of the mirror would see."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import fill as fill_module
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.test_cache_blobs import GUARD, as_follower, as_writer, guard, make_store
from tests.unit.test_fill_parallel_hash import Counting
from tests.unit.test_review_fill3 import _rest_of
from tests.unit.test_review_fill4 import PIECE, Reads, on_interrupt


class HeldPast(Counting):
    """A real hasher that says when it has taken in ``until`` bytes; every update past them,
    once done, holds the hashing thread until :attr:`release`."""

    def __init__(self, algorithm: str, until: int) -> None:
        super().__init__(algorithm, until)
        self.release = threading.Event()

    def update(self, data: bytes) -> None:
        super().update(data)
        if self.taken > self.until:
            self.release.wait(GUARD)


async def test_a_write_failing_after_a_second_cancel_hands_followers_no_hash_run_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump's first write waits for the disk while its hashing thread, which no longer
    waits for the writes, has hashed that read already, and the next (held there). The
    fill's task is cancelled twice (a shutdown): the pump returns while its threads still run,
    and the task's clean-up awaits (a download closed) before it leaves the writer. Meanwhile
    the write fails (a full disk): the fill is given up with nothing kept, and its hash was
    handed to the followers then, with the hashing thread still running: the hash of two
    reads, taken for the hash of no bytes. A follower went on from it with the whole blob
    from the upstream and found it wrong: a client that would have got the blob whole was
    cut. The hash is handed on once the threads are done, of no bytes (the mark at 0)."""
    body = Reads(3)
    digest = digest_of(body.data)
    store = make_store(tmp_path)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    follower.rest = _rest_of(body.data)
    hasher = HeldPast(digest.algorithm, PIECE)  # the second read is hashed, the thread held
    writer._hash = hasher  # type: ignore[assignment]
    entered, fail = threading.Event(), threading.Event()

    def first_fails(fd: int, chunks: list[Any]) -> None:
        entered.set()
        fail.wait(GUARD)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fill_module, "write_all", first_fails)
    interrupted = on_interrupt(monkeypatch, writer)

    async def given_up() -> None:
        while writer.fill.kept is None:
            await writer.fill.changed()

    async def fill() -> None:
        async with writer:
            writer.announce(len(body.data))
            try:
                await writer.pump(body)
            finally:  # the task's clean-up awaits: the loop runs on meanwhile
                fail.set()
                await guard(given_up())

    task = spawn("fill", fill())
    assert await asyncio.to_thread(entered.wait, GUARD)  # the first write waits for the disk
    assert await asyncio.to_thread(hasher.reached.wait, GUARD)  # its read hashed already
    task.cancel()
    await guard(interrupted.wait())  # the pump waits for its threads now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guard(task)
    assert writer.fill.kept == 0
    try:
        assert await guard(follower.read_all()) == body.data
        kept_hash = writer.fill.kept_hash
        assert kept_hash is None or kept_hash.hexdigest() == hashlib.sha256(b"").hexdigest()
    finally:
        hasher.release.set()
    for _ in range(int(GUARD / 0.01)):  # once the threads are done, it is handed on
        if writer.fill.kept_hash is not None:
            break
        await asyncio.sleep(0.01)
    kept_hash = writer.fill.kept_hash
    assert kept_hash is not None and kept_hash.hexdigest() == hashlib.sha256(b"").hexdigest()
