"""A blob file cut short (or grown) while the mirror was stopped: a disk fault or an fsck, a
host write cache that dropped data on power loss, a half-restored volume. The index read at
start took each file's length as its blob's, so the length check at open passed, and every
pull got ``200`` and the wrong bytes, for ever. Now a blob whose file length is not the size a
cached manifest gives it is dropped at start (with the images needing it): a miss, fetched
again. Each fault test failed before its fix."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from docxy.cache import Cache, ImageKey, open_cache
from docxy.cache.blobs import DiskBlobStore, Walked
from docxy.cache.visibility import upstream_key
from tests.unit.test_cachecli import HOST, Populated, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def _changed(populated: Populated, name: str, change: str) -> Path:
    """Cut the file of blob ``name`` short, or grow it, as the disk would behind our back."""
    path = populated.blob_path(name)
    if change == "truncated":
        os.truncate(path, 100)
    else:
        with open(path, "ab") as f:
            f.write(b"more")
    return path


def _restart(root: Path) -> Cache:
    return open_cache(root, max_size=1 << 20, tag_ttl=300)


async def _as_a_pull_finds_it(cache: Cache) -> None:
    """What a blob pull waits for before it opens the blob (the repository's visibility)."""
    await cache.manifests.loaded()


@pytest.mark.parametrize("change", ["truncated", "extended"])
def test_a_blob_file_changed_while_stopped_is_a_miss_after_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    populated = asyncio.run(_populate(tmp_path / "cache"))
    path = _changed(populated, "alpine-l", change)
    digest = populated.blobs["alpine-l"]

    async def scenario() -> None:
        cache = _restart(populated.root)
        await cache.blobs.indexed()
        await _as_a_pull_finds_it(cache)
        assert cache.blobs.open_read(digest) is None, "served with the file's length"
        assert not path.exists()
        # The image needing it is no longer offered (its manifest fetched again), as when a
        # read of it breaks; the others stay.
        images = {image.key for image in cache.manifests.images()}
        assert ImageKey(upstream_key(HOST), populated.alpine) not in images
        assert ImageKey(upstream_key(HOST), populated.busybox) in images
        reader = cache.blobs.open_read(populated.blobs["busybox-l"])
        assert reader is not None
        reader.close()

    with caplog.at_level(logging.WARNING, logger="docxy.cache"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if str(digest) in r.getMessage()]
    assert said, caplog.text


def test_a_blob_found_on_disk_before_the_index_is_read_is_checked_too(tmp_path: Path) -> None:
    """A pull while the blob index is still being read finds the blob with one ``stat``: it
    is held to the manifests' size as well."""
    populated = asyncio.run(_populate(tmp_path / "cache"))
    _changed(populated, "alpine-l", "truncated")
    digest = populated.blobs["alpine-l"]
    release = threading.Event()
    real = DiskBlobStore._walk

    def slow_walk(store: DiskBlobStore, *, strict: bool = False) -> Walked:
        release.wait(10)
        return real(store, strict=strict)

    async def scenario() -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DiskBlobStore, "_walk", slow_walk)
            cache = _restart(populated.root)
        try:
            await _as_a_pull_finds_it(cache)
            assert not cache.blobs.index_complete
            assert cache.blobs.open_read(digest) is None, "served with the file's length"
        finally:
            release.set()
        await cache.blobs.indexed()
        assert cache.blobs.open_read(digest) is None
        assert digest not in {entry.digest for entry in cache.blobs.list_entries()}

    asyncio.run(scenario())


def test_an_intact_cache_keeps_every_blob_and_image_at_restart(tmp_path: Path) -> None:
    """(A guard, not a fault.) Nothing changed: nothing dropped; and a blob no cached manifest
    names is not checked (a pull of it alone has no size to hold it to)."""
    populated = asyncio.run(_populate(tmp_path / "cache"))

    async def scenario() -> None:
        cache = _restart(populated.root)
        await cache.blobs.indexed()
        await _as_a_pull_finds_it(cache)
        assert len(cache.blobs.list_entries()) == len(populated.blobs)
        assert len(cache.manifests.images()) == 6
        for digest in populated.blobs.values():
            reader = cache.blobs.open_read(digest)
            assert reader is not None
            reader.close()

    asyncio.run(scenario())
