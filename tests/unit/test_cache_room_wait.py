"""A download short of room waits for it ``cache.room_wait`` seconds at most, on its own: never
behind another download that waits for bytes a stalled client holds (an aborted fill's temp
file its follower has not closed), and it passes through uncached once its wait is over."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import NoRoom
from docxy.cache.fill import BlobFollower, BlobWriter
from docxy.config import load_config
from docxy.core.digests import digest_of
from docxy.core.errors import ConfigError
from docxy.http.app import open_store
from docxy.tasks import spawn
from tests.unit.test_cache_blobs import blob, guard, put
from tests.unit.test_cache_cap import Upstream, all_freed, bytes_on_disk, served
from tests.unit.turns import until

CAP = 1000


def make_store(root: Path, room_wait: float) -> DiskBlobStore:
    return DiskBlobStore.open(root, CAP, write_buffer=0, room_wait=room_wait)


async def stalled_client(store: DiskBlobStore, size: int) -> BlobFollower:
    """A fill of ``size`` bytes aborted while a follower (whose client stalled) holds its
    removed temp file: its bytes count against the cap until the follower is closed."""
    data = blob(size, 99)
    writer = await store.fetch_or_join(digest_of(data))
    assert isinstance(writer, BlobWriter)
    follower = await store.fetch_or_join(digest_of(data))
    assert isinstance(follower, BlobFollower)
    await writer.write(data)
    writer.abort("the upstream broke off")
    assert store.usage().freeing == size
    return follower


async def test_a_fill_short_of_room_is_not_held_up_behind_one_waiting_for_a_stalled_client(
    tmp_path: Path,
) -> None:
    """600 bytes cached, 100 held by a stalled client: 300 free of 1000. A fill of 350 waits
    for the held bytes (which would do); a fill of 450 arriving next evicts the cached blob,
    which makes room for both: both are cached while the client still stalls, long before
    the first one's wait (60 s here) would have ended."""
    store = make_store(tmp_path, room_wait=60.0)
    old = await put(store, blob(600, 1))
    stalled = await stalled_client(store, 100)
    first, second = blob(350, 2), blob(450, 3)
    stream = await store.fill(digest_of(first), Upstream(first).fetch)
    reading_first = spawn("first", served(stream))
    await until(lambda: 350 in store._waiting)  # waiting for the stalled client's bytes
    stream = await store.fill(digest_of(second), Upstream(second).fetch)
    assert await guard(served(stream)) == second
    assert await guard(reading_first) == first
    await guard(store.commits_done())
    assert store.holds(digest_of(first)) and store.holds(digest_of(second))
    assert not store.holds(old)
    assert store.usage().freeing == 100  # the client still stalls
    stalled.close()
    await all_freed(store)
    assert bytes_on_disk(tmp_path) == store.usage().bytes == 800


async def test_a_fill_that_gets_no_room_in_the_room_wait_passes_through(tmp_path: Path) -> None:
    """Fills that only the stalled client's bytes would make room for wait ``room_wait``
    each, then pass through uncached, however many wait: each one's wait is its own."""
    store = make_store(tmp_path, room_wait=0.05)
    reader_of = await put(store, blob(600, 1))
    reader = store.open_read(reader_of)  # being read: it cannot be evicted
    assert reader is not None
    stalled = await stalled_client(store, 300)
    datas = [blob(250, 10 + i) for i in range(3)]  # 100 free: each needs the held bytes
    streams = [await store.fill(digest_of(d), Upstream(d).fetch) for d in datas]
    for stream in streams:
        result = await guard(served(stream))
        assert isinstance(result, NoRoom), result
        assert "no room" in str(result)
    assert store.usage().freeing == 300  # the client still stalls: they passed through
    assert store._waiting == []
    stalled.close()
    reader.close()
    await all_freed(store)


def test_the_room_wait_is_a_setting(tmp_path: Path) -> None:
    """``cache.room_wait`` (``DOCXY_CACHE_ROOM_WAIT``) is the store's wait; 30 s unless set,
    and a wait of no time or less is refused at start-up, naming the setting."""
    base = {"upstream.registry": "http://127.0.0.1:9", "cache.dir": str(tmp_path)}
    assert open_store(load_config(base, environ={})).blobs.room_wait == 30.0
    config = load_config(base, environ={"DOCXY_CACHE_ROOM_WAIT": "2.5"})
    assert open_store(config).blobs.room_wait == 2.5
    with pytest.raises(ConfigError, match="cache.room_wait"):
        load_config(base | {"cache.room_wait": "0"}, environ={})
