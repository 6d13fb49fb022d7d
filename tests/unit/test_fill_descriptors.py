"""A fill's temp file descriptor: a background sync that gets no descriptor of its own, and
a descriptor the pump's thread still writes through while the loop discards the fill."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.fill import BlobFollower
from docxy.core.digests import digest_of
from tests.unit.test_cache_blobs import as_writer, blob, guard, make_store, read
from tests.unit.test_fill_hashing import Memory

MIB = 1 << 20


def no_descriptor_to_dup(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os.dup`` fails as with every descriptor taken (EMFILE); returns the fds it was asked."""
    asked: list[int] = []

    def dup(fd: int) -> int:
        asked.append(fd)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "dup", dup)
    return asked


@pytest.mark.parametrize("path", ["write", "pump"])
async def test_a_sync_behind_with_no_descriptor_left_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    monkeypatch.setattr(fill_module, "SYNC_BEHIND", MIB)
    asked = no_descriptor_to_dup(monkeypatch)
    store = make_store(tmp_path)
    data = blob(3 * MIB + 4321)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await store.fetch_or_join(digest)
    assert isinstance(follower, BlobFollower)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        async with writer:
            if path == "write":
                for start in range(0, len(data), MIB):
                    await writer.write(data[start : start + MIB])
            else:
                await guard(writer.pump(Memory(data)))
            assert await writer.commit(len(data)) is not None
    assert asked, "no background sync was tried"
    assert await guard(follower.read_all()) == data
    assert await read(store, digest) == data
    assert writer.fill.holders == 0  # a sync that never started holds nothing
    assert store.usage().in_flight == 0 and store.usage().reserved == 0
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
