"""/health's cache report, /metrics and /status.json count every byte the cap counts, removed
files not freed yet too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from docxy.cache import digest_of
from docxy.cache.fill import BlobFollower, BlobWriter
from docxy.http.health import health_report
from docxy.observe.metrics import make_registry
from tests.unit.test_observe_metrics import make_state, scrape

GUARD = 10.0


async def test_health_shows_the_bytes_of_an_aborted_fill_not_freed_yet(tmp_path: Path) -> None:
    state = make_state(tmp_path, max_size="2K")
    assert state.cache is not None
    store = state.cache.blobs
    data = b"x" * 1500
    writer = await store.fetch_or_join(digest_of(data))
    assert isinstance(writer, BlobWriter)
    follower = await store.fetch_or_join(writer.digest)  # a client still reading the fill
    assert isinstance(follower, BlobFollower)
    async with writer:
        await writer.write(data)
        await writer.flush()
        writer.abort("the upstream broke off")

    cache = health_report(state)["cache"]
    assert isinstance(cache, dict)
    # Nothing committed or reserved, yet a fill of 600 bytes finds no room: the operator sees why.
    assert (cache["bytes"], cache["reserved_bytes"], cache["max_size"]) == (0, 0, 2048)
    assert cache["freeing_bytes"] == 1500
    registry = make_registry(state)
    assert scrape(registry)["docxy_cache_freeing_bytes"] == 1500

    freed = store._room_freed
    follower.close()  # its client is cut: the last descriptor goes, the blocks are freed
    await asyncio.wait_for(freed.wait(), GUARD)
    cache = health_report(state)["cache"]
    assert isinstance(cache, dict)
    assert cache["freeing_bytes"] == 0
    assert scrape(registry)["docxy_cache_freeing_bytes"] == 0
