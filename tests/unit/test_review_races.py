"""Races of the pull-through cache beside a live mirror (review r2, s45): an eviction applied
while a put waits on drop_vanished's thread, a kill between the two unlinks of a corrupt
manifest's drop, and a tag written as the start's catalogue read is taken over."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import docxy.cache.blobs as blobs_mod
import docxy.cache.manifests as manifests_mod
from docxy.cache import BlobWriter, Cache, Digest, RepoKey, digest_of, files, open_cache
from docxy.cache.images import ImageKey
from docxy.cache.visibility import upstream_key
from docxy.tasks import spawn
from tests.unit.test_cachecli import HOST, Populated, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Killed(BaseException):
    """A SIGKILL, as far as the code under test can tell."""


def _paths(root: Path, digest: Digest) -> tuple[Path, Path, Path]:
    relpath = Path(upstream_key(HOST), digest.algorithm, digest.hex[:2], digest.hex)
    manifest = root / "manifests" / "by-digest" / relpath
    access = root / "access" / "by-digest" / relpath
    return manifest, manifest.with_name(manifest.name + ".json"), access


async def _blob(cache: Cache, content: bytes) -> Digest:
    digest = digest_of(content)
    writer = await cache.blobs.fetch_or_join(digest)
    assert isinstance(writer, BlobWriter)
    async with writer:
        await writer.write(content)
        assert await writer.commit(len(content)) is not None
    return digest


def _image(cfg: tuple[Digest, int], *layers: tuple[Digest, int]) -> bytes:
    def desc(d: Digest, n: int, media: str) -> dict[str, object]:
        return {"mediaType": media, "digest": str(d), "size": n}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(*cfg, "application/json"),
            "layers": [desc(d, n, "x/layer") for d, n in layers],
        }
    ).encode()


def test_an_eviction_keeps_the_blobs_of_a_manifest_being_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: an eviction's plan is re-checked as it is applied: "so is a blob an image cached
    meanwhile needs". A put of a manifest needing a cached blob no image needs yet (a layer
    kept from an image evicted while it was being read, a pull whose manifest the disk did not
    keep) awaits drop_vanished's thread before the manifest joins the catalogue: an eviction
    chunk applied in that hop deletes the blob, and the put then caches the image without
    it: offered, it fails half-way through a pull with the upstream down."""
    release = threading.Event()
    original = blobs_mod._vanished

    def slow_vanished(
        entries: list[blobs_mod.BlobEntry],
    ) -> list[blobs_mod.BlobEntry]:  # the worker thread's hop, held until the eviction ran
        assert release.wait(5)
        return original(entries)

    monkeypatch.setattr(blobs_mod, "_vanished", slow_vanished)

    async def run() -> None:
        cache = open_cache(tmp_path / "cache", max_size=1 << 20, tag_ttl=300)
        await cache.blobs.indexed()
        await cache.manifests.loaded()
        cfg_bytes, layer_bytes = b"cfg " * 50, b"layer " * 500
        cfg = await _blob(cache, cfg_bytes)
        layer = await _blob(cache, layer_bytes)
        content = _image((cfg, len(cfg_bytes)), (layer, len(layer_bytes)))
        repo = RepoKey(HOST, "library/app")
        put = spawn("put", cache.manifests.put(repo, content, OCI_MANIFEST, public=True))
        await asyncio.sleep(0.05)  # the put is in drop_vanished's thread now
        await cache.blobs._evict_to(0)  # an eviction for room, applied meanwhile
        release.set()
        stored = await put
        image_whole = cache.blobs.holds(cfg) and cache.blobs.holds(layer)
        on_disk = cache.blobs.path_of(layer).exists()
        offered = any(i.key.digest == stored.digest for i in cache.manifests.images())
        # Either the image is not offered (not kept), or its blobs stayed.
        assert not (stored.kept and offered) or (image_whole and on_disk), (
            stored.kept,
            offered,
            image_whole,
            on_disk,
        )

    asyncio.run(run())


@pytest.mark.parametrize("cut_at", [1, 2])
def test_records_outlive_a_corrupt_manifest_drop_cut_by_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_at: int
) -> None:
    """README: "a manifest cached again drops any records left of it, so a record never
    vouches for a repository after its manifest left the cache". _read_manifest dropped a
    corrupt manifest's .json, then its file, and left its repository records: killed
    between the two unlinks, the manifest file stayed without its record; the serving start
    counted it as listed (no leftover), and a put of the manifest in another repository found
    its file there and forgot no record: the old repository was vouched for again. The drop
    is killed here at its first, then its second file unlink."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, _, _ = _paths(pop.root, pop.busybox)
    good = manifest.read_bytes()
    manifest.write_bytes(good + b" ")  # corrupt on disk (a disk fault)
    busybox = RepoKey(HOST, "library/busybox")
    other = RepoKey(HOST, "someone/else")

    calls = []
    real = files.unlink_quietly

    def cut(path: Path) -> None:
        calls.append(path)
        if len(calls) == cut_at:
            raise Killed
        real(path)

    async def read_it() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        monkeypatch.setattr(manifests_mod, "unlink_quietly", cut)
        await cache.manifests.get(busybox, pop.busybox)

    with pytest.raises(Killed):
        asyncio.run(read_it())
    monkeypatch.setattr(manifests_mod, "unlink_quietly", real)

    async def restart() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        await asyncio.sleep(0.3)  # the start's leftover delete, in its thread
        assert await cache.manifests.get(busybox, pop.busybox) is None  # not cached
        stored = await cache.manifests.put(other, good, OCI_MANIFEST, public=True)
        assert stored.kept
        seen = cache.access.visibility(busybox, pop.busybox)
        assert seen is None, f"library/busybox vouched for again: {seen}"

    asyncio.run(restart())


def _file_without_record(tmp_path: Path) -> tuple[Populated, Path, Path]:
    """A cache whose busybox manifest file lost its .json record, its repository records
    left: what an earlier version's corrupt-manifest drop, killed halfway, left."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop.root, pop.busybox)
    meta.unlink()
    assert manifest.exists() and access.is_dir()
    return pop, manifest, access


def test_the_start_drops_a_manifest_file_left_without_its_record(tmp_path: Path) -> None:
    """Such a file is not cached (get misses it): the serving start takes it and its
    repository records for leftovers, and deletes them."""
    pop, manifest, access = _file_without_record(tmp_path)

    async def start() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        for _ in range(100):  # the leftover delete, in its thread
            if not manifest.exists() and not access.exists():
                break
            await asyncio.sleep(0.05)
        assert not manifest.exists(), "the manifest file without its record stayed"
        assert not access.exists(), "its repository records stayed"
        assert all(i.key.digest != pop.busybox for i in cache.manifests.images())

    asyncio.run(start())


def test_a_put_forgets_the_records_of_a_manifest_file_without_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the start's leftover delete (cut short, or not run yet), a put of the manifest
    in another repository takes the file for not cached, and forgets its old records."""
    pop, _, _ = _file_without_record(tmp_path)
    monkeypatch.setattr(manifests_mod.ManifestStore, "_drop_leftovers", lambda self, keys: None)
    busybox = RepoKey(HOST, "library/busybox")
    other = RepoKey(HOST, "someone/else")

    async def put() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        manifest, _, _ = _paths(pop.root, pop.busybox)
        stored = await cache.manifests.put(other, manifest.read_bytes(), OCI_MANIFEST, public=True)
        assert stored.kept
        seen = cache.access.visibility(busybox, pop.busybox)
        assert seen is None, f"library/busybox vouched for again: {seen}"

    asyncio.run(put())


def test_a_tag_written_as_the_start_read_ends_survives_the_eviction_that_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull refreshing tag alpine:3.20 (moved upstream to another image) while the start
    reads the catalogue journals its pointer until after its write. The catalogue is taken
    over meanwhile (by any request; the start's cap check) and an eviction (the cap check of a
    cap lowered since, a fill short of room) forgets the tag's old image: the tag record is
    its, as the map says, and its delete thread removes the record the pull has just written.
    The tag is gone from the disk (a miss, asked upstream; with the upstream down no pull),
    though the pull stored it a moment ago; the map still points it at the new image."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    alpine = RepoKey(HOST, "library/alpine")
    scan_go, write_go, written = threading.Event(), threading.Event(), threading.Event()
    real_scan = manifests_mod.ManifestStore._scan
    real_write = manifests_mod.ManifestStore._write_tag
    real_delete = manifests_mod.ManifestStore._delete

    def slow_scan(self: manifests_mod.ManifestStore) -> manifests_mod.Scanned:
        assert scan_go.wait(5)
        return real_scan(self)

    def slow_write(self: manifests_mod.ManifestStore, entry: manifests_mod.TagEntry) -> None:
        assert write_go.wait(5)
        real_write(self, entry)
        written.set()

    def late_delete(
        self: manifests_mod.ManifestStore,
        gone: Iterable[ImageKey],
        tags: Mapping[ImageKey, Iterable[Path]],
        deleted: list[ImageKey] | None = None,
    ) -> None:
        written.wait(2)  # the threads' order: the pull's write lands first
        real_delete(self, gone, tags, deleted)

    monkeypatch.setattr(manifests_mod.ManifestStore, "_scan", slow_scan)
    monkeypatch.setattr(manifests_mod.ManifestStore, "_write_tag", slow_write)
    monkeypatch.setattr(manifests_mod.ManifestStore, "_delete", late_delete)

    async def run() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        store = cache.manifests
        moved = spawn("set_tag", store.set_tag(alpine, "3.20", pop.busybox, public=True))
        await asyncio.sleep(0.05)  # in its write thread now
        scan_go.set()
        await store.loaded()
        old = next(i.key for i in store.images() if i.key.digest == pop.alpine)
        evicting = spawn("evict", store.evict_images([old]))
        await asyncio.sleep(0.05)
        write_go.set()
        await moved
        await evicting
        path = store._tag_path(alpine, "3.20")
        assert path.exists(), "the tag record the pull just wrote was deleted"
        resolved = await store.resolve_tag(alpine, "3.20")
        assert resolved.entry is not None and resolved.entry.digest == pop.busybox

    asyncio.run(run())


def test_a_tag_write_refused_while_the_start_reads_leaves_the_old_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer journaled before the write is put back, once the catalogue is read, when
    the disk refuses the write: the map says what the record on disk says (the old image)."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    alpine = RepoKey(HOST, "library/alpine")
    scan_go = threading.Event()
    real_scan = manifests_mod.ManifestStore._scan

    def slow_scan(self: manifests_mod.ManifestStore) -> manifests_mod.Scanned:
        assert scan_go.wait(5)
        return real_scan(self)

    def refused(self: manifests_mod.ManifestStore, entry: manifests_mod.TagEntry) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(manifests_mod.ManifestStore, "_scan", slow_scan)
    monkeypatch.setattr(manifests_mod.ManifestStore, "_write_tag", refused)

    async def run() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        store = cache.manifests
        await store.set_tag(alpine, "3.20", pop.busybox, public=True)
        scan_go.set()
        await store.loaded()
        path = store._tag_path(alpine, "3.20")
        old = next(i.key for i in store.images() if i.key.digest == pop.alpine)
        assert store._tag_files.get(path) == old
        resolved = await store.resolve_tag(alpine, "3.20")
        assert resolved.entry is not None and resolved.entry.digest == pop.alpine

    asyncio.run(run())
