"""Review s45 r6: c801021's read back of a refused tag write set the pointer if no write of the
tag was in flight once the record was read. A write of that tag that started and ended while
the read was in flight (the read saw the record before that write's rename) was not seen: the
pointer went back to the old image while the record named the new one; evicting the old image
then deleted the new image's tag record (the tag MISSING). Now a write begun during the read
back leaves the pointer to its own end."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import docxy.cache.manifests as manifests_mod
from docxy.cache import ImageKey, RepoKey, open_cache
from docxy.tasks import spawn
from tests.unit.test_cachecli import HOST, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def test_write_landing_during_the_refused_writes_disk_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    alpine = RepoKey(HOST, "library/alpine")
    read_done, go = threading.Event(), threading.Event()
    real_write = manifests_mod.ManifestStore._write_tag
    real_key = manifests_mod.ManifestStore._tag_record_key

    def write(self: manifests_mod.ManifestStore, entry: manifests_mod.TagEntry) -> None:
        # the first write (busybox) refused: ENOSPC
        if entry.digest == pop.busybox:
            raise OSError(28, "No space left on device")
        real_write(self, entry)

    def slow_key(self: manifests_mod.ManifestStore, path: Path) -> ImageKey | None:
        # the record read (old), its thread then slow to hand it back
        key = real_key(self, path)
        read_done.set()
        assert go.wait(5)
        return key

    async def run() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        store = cache.manifests
        await store.loaded()
        monkeypatch.setattr(manifests_mod.ManifestStore, "_write_tag", write)
        monkeypatch.setattr(manifests_mod.ManifestStore, "_tag_record_key", slow_key, raising=False)
        first = spawn("to busybox", store.set_tag(alpine, "3.20", pop.busybox, public=True))
        await asyncio.to_thread(read_done.wait, 1)
        # another pull of alpine:3.20 (now hello upstream), its write kept, starts and ends
        await store.set_tag(alpine, "3.20", pop.hello, public=True)
        go.set()
        await first
        path = store._tag_path(alpine, "3.20")
        on_disk = await store.resolve_tag(alpine, "3.20")
        assert on_disk.entry is not None and on_disk.entry.digest == pop.hello
        mapped = store._tag_files.get(path)
        old = next(i.key for i in store.images() if i.key.digest == pop.alpine)
        await store.evict_images([old])
        after = await store.resolve_tag(alpine, "3.20")
        assert mapped is not None and mapped.digest == pop.hello, (
            f"map points {mapped.digest if mapped else None} (alpine={pop.alpine}), record says "
            f"hello; after evicting alpine, alpine:3.20 is {after.state}"
        )

    asyncio.run(run())
