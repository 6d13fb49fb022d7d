"""Two set_tags of one tag, one refused by the disk (review s45 r5): the tag pointer in memory
ended where the refused pull's own read said (the record before another pull's write landed,
or another refused write's), not where the record on disk points; evicting that image then
deleted the record of a cached one (the tag MISSING). Now the last write of it to end sets
the pointer as the disk says."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import docxy.cache.manifests as manifests_mod
from docxy.cache import RepoKey, open_cache
from docxy.tasks import spawn
from tests.unit.test_cachecli import HOST, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def test_refused_tag_write_beside_a_kept_one_during_the_start_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    alpine = RepoKey(HOST, "library/alpine")
    scan_go, c_go = threading.Event(), threading.Event()
    real_scan = manifests_mod.ManifestStore._scan
    real_write = manifests_mod.ManifestStore._write_tag

    def slow_scan(
        self: manifests_mod.ManifestStore,
    ) -> manifests_mod.Scanned:  # the start's read of a large cache
        assert scan_go.wait(5)
        return real_scan(self)

    def write(self: manifests_mod.ManifestStore, entry: manifests_mod.TagEntry) -> None:
        if entry.digest == pop.busybox:
            raise OSError(28, "No space left on device")
        assert c_go.wait(5)
        real_write(self, entry)

    monkeypatch.setattr(manifests_mod.ManifestStore, "_scan", slow_scan)
    monkeypatch.setattr(manifests_mod.ManifestStore, "_write_tag", write)

    async def run() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        store = cache.manifests
        # pull 1: alpine:3.20 moved upstream to `hello`; its write is slow
        first = spawn("set_tag C", store.set_tag(alpine, "3.20", pop.hello, public=True))
        await asyncio.sleep(0.05)
        # pull 2, a moment later, sees it at busybox; the disk refuses its write
        await store.set_tag(alpine, "3.20", pop.busybox, public=True)
        c_go.set()
        await first
        scan_go.set()
        await store.loaded()
        path = store._tag_path(alpine, "3.20")
        on_disk = await store.resolve_tag(alpine, "3.20")
        assert on_disk.entry is not None and on_disk.entry.digest == pop.hello
        mapped = store._tag_files.get(path)
        # the map should say what the record says
        old = next(i.key for i in store.images() if i.key.digest == pop.alpine)
        await store.evict_images([old])  # the tag's former image evicted
        after = await store.resolve_tag(alpine, "3.20")
        assert mapped is not None and mapped.digest == pop.hello, (
            f"map points {mapped.digest if mapped else None}, record says hello; after evicting "
            f"alpine the tag record is {'gone' if not path.exists() else 'kept'}: {after.state}"
        )

    asyncio.run(run())


def test_two_refused_tag_writes_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogue in memory: set_tag to B, then set_tag to C, both refused (ENOSPC), B's
    first: the later one's _point_back restores the pointer it found (B), not the record's (A).
    (Same logic before b9157a6: pre-existing.)"""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    alpine = RepoKey(HOST, "library/alpine")
    b_go, c_go = threading.Event(), threading.Event()

    def write(self: manifests_mod.ManifestStore, entry: manifests_mod.TagEntry) -> None:
        assert (b_go if entry.digest == pop.busybox else c_go).wait(5)
        raise OSError(28, "No space left on device")

    async def run() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        store = cache.manifests
        await store.loaded()
        monkeypatch.setattr(manifests_mod.ManifestStore, "_write_tag", write)
        to_b = spawn("to B", store.set_tag(alpine, "3.20", pop.busybox, public=True))
        await asyncio.sleep(0.05)
        to_c = spawn("to C", store.set_tag(alpine, "3.20", pop.hello, public=True))
        await asyncio.sleep(0.05)
        b_go.set()
        await to_b
        c_go.set()
        await to_c
        path = store._tag_path(alpine, "3.20")
        mapped = store._tag_files.get(path)
        bb = next(i.key for i in store.images() if i.key.digest == pop.busybox)
        await store.evict_images([bb])  # busybox evicted: the tag never pointed at it on disk
        after = await store.resolve_tag(alpine, "3.20")
        assert mapped is not None and mapped.digest == pop.alpine, (
            f"map points {mapped.digest if mapped else None} (busybox={pop.busybox}), record "
            f"says alpine; after evicting busybox alpine:3.20 is {after.state}"
        )

    asyncio.run(run())
