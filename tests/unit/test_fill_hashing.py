"""A fill's hashing thread failing ends the fill with the reason, never a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from docxy.cache.errors import FillAborted
from docxy.core.digests import digest_of
from tests.unit.test_cache_blobs import GUARD, as_writer, make_store

DATA = bytes(range(256)) * 8192  # 2 MiB: several reads of the pump's buffers


class Memory:
    """A body read with blocking calls, from memory, in small reads."""

    def __init__(self, data: bytes, step: int = 256 * 1024) -> None:
        self._data, self._pos, self._step = data, 0, step

    def read(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + min(self._step, size)]
        self._pos += len(chunk)
        return chunk

    def interrupt(self) -> None:
        pass


class Broken:
    def update(self, data: object) -> None:
        raise MemoryError("no room to hash")

    def copy(self) -> Broken:  # the pump marks a copy before each read it hashes
        return Broken()


async def test_the_pump_hashes_everything_it_read(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    async with writer:
        await asyncio.wait_for(writer.pump(Memory(DATA)), GUARD)
        assert await writer.commit(len(DATA)) is not None
    entry = store.lookup(digest_of(DATA))
    assert entry is not None and entry.path.read_bytes() == DATA


async def test_a_failing_hash_aborts_the_fill_instead_of_hanging(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(DATA))
    writer._hash = Broken()  # type: ignore[assignment]  # the thread's hasher fails
    async with writer:
        with pytest.raises(FillAborted, match="no room to hash"):
            await asyncio.wait_for(writer.pump(Memory(DATA)), GUARD)
    assert store.lookup(digest_of(DATA)) is None
