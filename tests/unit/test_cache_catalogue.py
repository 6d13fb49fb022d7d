"""The manifest catalogue is read in a worker thread at start: a large cache does not hold up the
first answers, tags are served meanwhile, and nothing that changes during the read is lost."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Cache, ImageKey, ManifestStore, RepoKey, TagState, open_cache
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.held import Held, hold
from tests.unit.test_cache_blobs import GUARD, put
from tests.unit.test_cache_eviction import cached_image, layer, manifest, offered_whole

CAP = 1000
OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def held_scan(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    """``ManifestStore._scan`` held until ``release`` is set."""
    held = hold(monkeypatch, ManifestStore, "_scan")
    yield held
    held.release.set()


async def populated(root: Path) -> Cache:
    cache = open_cache(root, max_size=CAP, tag_ttl=300)
    await cached_image(cache, "team/old", [layer("cfg-old", 10), layer("l-old")])
    await cached_image(cache, "team/new", [layer("cfg-new", 10), layer("l-new")])
    await cache.manifests.loaded()
    return cache


def key_of(cache: Cache, layers: list[bytes]) -> ImageKey:
    upstream = next(iter(cache.manifests.images())).key.upstream
    return ImageKey(upstream, digest_of(manifest(layers)))


async def test_tags_are_served_while_the_catalogue_is_read(tmp_path: Path, held_scan: Held) -> None:
    root = tmp_path / "cache"
    held_scan.release.set()
    before = await populated(root)
    old, new = (tag.repo for tag in before.manifests.list_tags())
    held_scan.release.clear()

    cache = open_cache(root, max_size=CAP, tag_ttl=300)  # a restart; the read is held
    assert held_scan.held == [True]  # only the first start's read has finished
    for repo in (old, new):
        found = await cache.manifests.resolve_tag(repo, "latest")
        assert found.state is TagState.FRESH and found.manifest is not None
    third_layers = [layer("cfg-3", 10), layer("l-3")]
    third = await cached_image(cache, "team/third", third_layers)  # noted, replayed later
    held_scan.release.set()
    await cache.manifests.loaded()

    assert held_scan.held == [True, True]
    assert threading.get_ident() not in held_scan.threads
    assert {image.key for image in cache.manifests.images()} >= {key_of(cache, third_layers)}
    assert len(cache.manifests.images()) == 3
    cache.manifests.forget_images([key_of(cache, third_layers)])  # its tag was noted too
    assert await offered_whole(cache, third) is None
    assert await offered_whole(cache, old) is True


async def test_eviction_waits_for_the_catalogue(tmp_path: Path, held_scan: Held) -> None:
    root = tmp_path / "cache"
    held_scan.release.set()
    before = await populated(root)
    old, new = (tag.repo for tag in before.manifests.list_tags())
    held_scan.release.clear()
    cache = open_cache(root, max_size=CAP, tag_ttl=300)
    # 600 cached + 500 more passes the cap; the eviction must wait for the catalogue, or it
    # would take every blob for one no image needs.
    newcomer = spawn("newcomer", put(cache.blobs, layer("big", 500)))
    held_scan.release.set()
    await cache.manifests.loaded()
    await newcomer
    await cache.blobs.settle()
    assert await offered_whole(cache, old) is None  # the least recently pulled, whole
    assert await offered_whole(cache, new) is True
    assert cache.blobs.usage().bytes <= CAP
    assert held_scan.held == [True, True]


# --- reads and writes racing an eviction -------------------------------------------------------


async def test_a_manifest_evicted_while_it_is_read_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/app", layers)
    await cache.manifests.loaded()
    read_done, go_on = threading.Event(), threading.Event()
    read = cache.manifests._read_manifest

    def slow_read(*args: Any) -> Any:
        found = read(*args)
        read_done.set()
        go_on.wait(GUARD)
        return found

    monkeypatch.setattr(cache.manifests, "_read_manifest", slow_read)
    reading = spawn("reading", cache.manifests.get(repo, digest_of(manifest(layers))))
    assert await asyncio.to_thread(read_done.wait, GUARD)
    cache.manifests.forget_images([key_of(cache, layers)])  # an eviction, meanwhile
    go_on.set()
    assert await reading is None
    assert cache.manifests.images() == []


async def test_a_manifest_being_stored_already_keeps_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    await cache.manifests.loaded()
    layers = [layer("cfg", 10), layer("l")]
    for data in layers:
        await put(cache.blobs, data)
    assert not cache.manifests.needed(digest_of(layers[1]))
    writing = hold(monkeypatch, ManifestStore, "_write_manifest")
    repo = RepoKey("registry.test", "team/app")
    storing = spawn("storing", cache.manifests.put(repo, manifest(layers), OCI, public=True))
    assert await asyncio.to_thread(writing.entered.wait, GUARD)
    assert cache.manifests.needed(digest_of(layers[1]))  # an eviction now would keep it
    writing.release.set()
    await storing


async def test_an_evicted_image_is_not_offered_while_its_files_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/app", layers)
    await cache.manifests.loaded()
    deleting = hold(monkeypatch, ManifestStore, "_delete")
    evicting = spawn("evicting", cache.manifests.evict_images([key_of(cache, layers)]))
    assert await asyncio.to_thread(deleting.entered.wait, GUARD)  # the files are still there...
    assert (await cache.manifests.resolve_tag(repo, "latest")).state is TagState.MISSING
    assert await cache.manifests.get(repo, digest_of(manifest(layers))) is None
    deleting.release.set()
    await evicting
    assert not list((tmp_path / "cache" / "manifests" / "tags").iterdir())
    assert list(cache.access.markers()) == []


async def test_a_manifest_pulled_again_while_its_eviction_deletes_its_files_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eviction deletes its files in a worker thread; a pull that stores the same manifest
    and tag meanwhile (the blobs are still cached) waits for that delete, so its files are not
    deleted under it: the catalogue offered an image whose manifest and tag were gone."""
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/app", layers)
    await cache.manifests.loaded()
    deleting = hold(monkeypatch, ManifestStore, "_delete")
    evicting = spawn("evicting", cache.manifests.evict_images([key_of(cache, layers)]))
    assert await asyncio.to_thread(deleting.entered.wait, GUARD)
    pulling = spawn("pulling again", cached_image(cache, "team/app", layers))
    await asyncio.sleep(0.2)  # the pull's writes, had they not waited, are done by now
    deleting.release.set()
    await asyncio.wait_for(evicting, GUARD)
    await asyncio.wait_for(pulling, GUARD)
    found = await cache.manifests.resolve_tag(repo, "latest")
    assert found.state is TagState.FRESH and found.manifest is not None
    assert await offered_whole(cache, repo) is True
    # The pull's record that the repository holds it: not forgotten by the delete either.
    assert cache.access.visibility(repo, digest_of(manifest(layers))) is not None


async def test_an_image_pulled_again_during_its_eviction_keeps_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race through a fill that needs room: the eviction forgets the oldest image and
    deletes its manifest's files; a client pulls that image's manifest and tag again meanwhile.
    The eviction, which looks at the catalogue before it deletes blobs, must see the image back
    and keep its blobs (it dropped them while the pull waited to store the manifest: an image
    offered with its layers gone)."""
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    oldest = [layer("cfg-1", 10), layer("l-1")]
    repo = await cached_image(cache, "team/first", oldest)
    await cached_image(cache, "team/second", [layer("cfg-2", 10), layer("l-2")])
    await cached_image(cache, "team/third", [layer("cfg-3", 10), layer("l-3")])
    await cache.manifests.loaded()
    deleting = hold(monkeypatch, ManifestStore, "_delete")
    filling = spawn("a fill that needs room", put(cache.blobs, layer("new", 300)))
    assert await asyncio.to_thread(deleting.entered.wait, GUARD)

    async def pull_manifest_and_tag() -> None:  # the blobs are still cached: not fetched
        stored = await cache.manifests.put(repo, manifest(oldest), OCI, public=True)
        await cache.manifests.set_tag(repo, "latest", stored.digest, public=True)

    pulling = spawn("pulling again", pull_manifest_and_tag())
    await asyncio.sleep(0.1)
    deleting.release.set()
    await asyncio.wait_for(pulling, GUARD)
    await asyncio.wait_for(filling, GUARD)
    await cache.blobs.settle()
    assert await offered_whole(cache, repo) is True


async def test_a_tag_moved_while_its_old_image_is_evicted_keeps_its_new_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``latest`` moves from A to B; an eviction of A starts while the new record is being
    written: it took the record (the map still said A) and deleted it once written, so the
    cached B was no longer found by its tag."""
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    old = [layer("cfg-a", 10), layer("l-a")]
    repo = await cached_image(cache, "team/app", old)  # latest -> A
    await cache.manifests.loaded()
    new = [layer("cfg-b", 10), layer("l-b")]
    stored = await cache.manifests.put(repo, manifest(new), OCI, public=True)
    for data in new:
        await put(cache.blobs, data)
    writing = hold(monkeypatch, ManifestStore, "_write_tag")
    deleting = hold(monkeypatch, ManifestStore, "_delete")
    tagging = spawn("tagging", cache.manifests.set_tag(repo, "latest", stored.digest, public=True))
    assert await asyncio.to_thread(writing.entered.wait, GUARD)
    evicting = spawn("evicting", cache.manifests.evict_images([key_of(cache, old)]))
    assert await asyncio.to_thread(deleting.entered.wait, GUARD)
    writing.release.set()
    await asyncio.wait_for(tagging, GUARD)
    deleting.release.set()
    await asyncio.wait_for(evicting, GUARD)
    found = await cache.manifests.resolve_tag(repo, "latest")
    assert found.state is TagState.FRESH
    assert found.entry is not None and found.entry.digest == stored.digest


async def test_a_tag_whose_record_cannot_be_written_still_points_at_its_old_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map is pointed before the write: a disk that refuses it puts the old one back, so
    an eviction of the old image still deletes the record, which names it."""
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    old = [layer("cfg-a", 10), layer("l-a")]
    repo = await cached_image(cache, "team/app", old)
    await cache.manifests.loaded()
    new = [layer("cfg-b", 10), layer("l-b")]
    stored = await cache.manifests.put(repo, manifest(new), OCI, public=True)

    def refuse(self: ManifestStore, entry: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ManifestStore, "_write_tag", refuse)
    await cache.manifests.set_tag(repo, "latest", stored.digest, public=True)
    record = cache.manifests._tag_path(repo, "latest")
    assert record.exists()
    await cache.manifests.evict_images([key_of(cache, old)])
    assert not record.exists()


async def test_a_tag_write_refused_while_the_catalogue_is_read_leaves_its_record_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_scan: Held
) -> None:
    """While the catalogue is read at start the map is not whole: the pointer put back after
    a refused write was None, so the record (still naming A) left the map, and an eviction
    of A left it behind, naming a manifest that is gone."""
    root = tmp_path / "cache"
    held_scan.release.set()
    first = open_cache(root, max_size=CAP, tag_ttl=300)
    old = [layer("cfg-a", 10), layer("l-a")]
    repo = await cached_image(first, "team/app", old)  # latest -> A
    stored = await first.manifests.put(repo, manifest([layer("cfg-b", 10)]), OCI, public=True)
    await first.manifests.loaded()
    held_scan.release.clear()
    cache = open_cache(root, max_size=CAP, tag_ttl=300)  # a restart: the read is held

    def refuse(self: ManifestStore, entry: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ManifestStore, "_write_tag", refuse)
    await cache.manifests.set_tag(repo, "latest", stored.digest, public=True)
    held_scan.release.set()
    await cache.manifests.loaded()
    record = cache.manifests._tag_path(repo, "latest")
    assert record.exists()
    await cache.manifests.evict_images([key_of(cache, old)])
    assert not record.exists()


async def test_an_index_evicted_while_its_files_are_written_is_deleted_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull stores a new index naming a cached platform manifest, which an eviction forgets
    (with every index above it, this one among them) while the index's files are written: the
    delete found none of them yet, so the index stayed on disk out of the catalogue, and after
    a restart its tag was offered fresh while its platform manifest and layers were gone."""
    root = tmp_path / "cache"
    cache = open_cache(root, max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/multi", layers)
    await cache.manifests.loaded()
    platform = {"mediaType": OCI, "digest": str(digest_of(manifest(layers))), "size": 1}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [platform]})
    writing = hold(monkeypatch, ManifestStore, "_write_manifest")
    storing = spawn("storing", cache.manifests.put(repo, index.encode(), OCI_INDEX, public=True))
    assert await asyncio.to_thread(writing.entered.wait, GUARD)
    await cache.manifests.evict_images([key_of(cache, layers)])  # the platform, and the index
    for data in layers:  # ...then the eviction deletes their blobs
        assert cache.blobs.remove(digest_of(data))
    writing.release.set()
    stored = await asyncio.wait_for(storing, GUARD)
    await cache.manifests.set_tag(repo, "multi", stored.digest, public=True)
    index_file = cache.manifests._content_path(repo.upstream, stored.digest)
    assert not index_file.exists()
    assert cache.manifests.images() == []
    again = open_cache(root, max_size=CAP, tag_ttl=300)  # a restart
    await again.manifests.loaded()
    assert again.manifests.images() == []
    assert (await again.manifests.resolve_tag(repo, "multi")).state is TagState.MISSING
