"""Faults of the blob fill path a fourth review suspected (``docxy.cache.fill``: the pump's
pacing, its hashing thread, a fill the cache gave up): each test makes the race happen on
purpose and shows what a client of the mirror, or its operator, would see."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.fill import RECENT, BlobFollower, InFlight
from docxy.core.digests import digest_of
from tests.unit.test_cache_blobs import GUARD, guard


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
