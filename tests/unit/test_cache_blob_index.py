"""The blob index is read in a worker thread at start: blobs are served meanwhile, what changes
is kept, and eviction and new fills' reservations wait for the whole index."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.held import Held, hold
from tests.unit.test_cache_blobs import blob, guard, make_store, put, read


@pytest.fixture
def held_walk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    """``DiskBlobStore._walk`` held until ``release`` is set (set at first)."""
    held = hold(monkeypatch, DiskBlobStore, "_walk")
    held.release.set()
    yield held
    held.release.set()


async def restarted(tmp_path: Path, held: Held) -> tuple[DiskBlobStore, list[bytes]]:
    """A store holding three 300-byte blobs, the first the least recently used, reopened with
    its index read held."""
    store = make_store(tmp_path, max_size=1000)
    data = [blob(300, i) for i in range(3)]
    for item in data:
        await put(store, item)
    await store.indexed()
    os.utime(store.path_of(store.list_entries()[0].digest), (1000, 1000))
    held.release.clear()
    return make_store(tmp_path, max_size=1000), data


async def test_blobs_are_served_while_the_index_is_read(tmp_path: Path, held_walk: Held) -> None:
    store, (first, second, third) = await restarted(tmp_path, held_walk)
    assert await read(store, digest_of(second)) == second  # one stat finds it
    assert store.usage().entries == 1  # what is known so far; never waits (/health)
    assert store.remove(digest_of(third))  # not indexed yet, removed all the same
    # A fill meanwhile reserves its room once the index is read: the cap counts every blob.
    storing = spawn("fourth", put(store, blob(300, 4)))
    held_walk.release.set()
    fourth = await guard(storing)
    await store.indexed()
    assert [e.digest for e in store.list_entries()] == [digest_of(first), digest_of(second), fourth]
    assert store.usage().bytes == 900
    assert held_walk.held == [True, True]
    assert threading.get_ident() not in held_walk.threads


async def test_eviction_waits_for_the_whole_index(tmp_path: Path, held_walk: Held) -> None:
    store, data = await restarted(tmp_path, held_walk)
    assert await read(store, digest_of(data[2])) == data[2]  # the only blob known early
    # 300 known + 800 more passes the cap: an eviction starts, and waits for the index.
    newcomer = spawn("newcomer", put(store, blob(800, 9)))
    held_walk.release.set()
    await guard(newcomer)
    await store.settle()
    # Planned over the whole index: down to 900 with the newcomer, so the two blobs the early
    # index did not know went too (planned over the early index, only the known one would have).
    assert [store.lookup(digest_of(d)) for d in data] == [None, None, None]
    assert store.usage().bytes == 800


async def test_a_blob_removed_while_the_index_is_read_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docxy cache rm --blobs`` (another process) may delete a blob between the walk listing
    its directory and the stat of it: the index leaves it out. It must not fail the whole
    read, which left every blob request of the server failing (500) until a restart."""
    store = make_store(tmp_path, max_size=1000)
    data = [blob(300, i) for i in range(3)]
    for item in data:
        await put(store, item)
    gone = store.path_of(digest_of(data[0]))
    walk = os.walk

    def walk_racing_a_removal(
        top: Path, onerror: Callable[[OSError], object] | None = None
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        for dirpath, dirs, files in walk(top, onerror=onerror):
            if gone.name in files:
                gone.unlink()  # listed, then removed before it is looked at
            yield dirpath, dirs, files

    monkeypatch.setattr(os, "walk", walk_racing_a_removal)
    again = make_store(tmp_path, max_size=1000)
    await again.indexed()
    assert again.lookup(digest_of(data[0])) is None
    assert await read(again, digest_of(data[1])) == data[1]
    assert again.usage().bytes == 600
