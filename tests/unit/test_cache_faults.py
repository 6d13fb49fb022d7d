"""Faults of the cache path a review found: each test shows what a user of the mirror would see.

Real files under tmp_path. A race is staged, never waited for: the file system call that loses
it is wrapped so the other side's move happens exactly between the two steps.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache import blobs as blobs_module
from docxy.cache import files, open_cache, open_for_admin
from docxy.cache import fill as fill_module
from docxy.cache import manifests as manifests_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FillAborted
from docxy.cache.fill import BlobFollower, BlobWriter
from docxy.cache.images import ImageKey
from docxy.cache.manifests import ManifestStore
from docxy.cache.visibility import AccessIndex, RepoKey
from docxy.core.digests import Digest, digest_of
from docxy.core.names import Kind, Reference
from docxy.edge.fills import FillPermits
from docxy.pull.blobs import BlobService
from docxy.pull.outcome import BlobContent, PassThrough, Pull, Reason, Served, Source
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit import fakes
from tests.unit.test_cache_blobs import put, read
from tests.unit.turns import until

GUARD = 10.0  # seconds before a would-be hang becomes a test failure
REGISTRY = Upstream("https://registry.test")
BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = digest_of(BLOB)
PULL = Pull(REGISTRY, "team/app", Reference("team/app", Kind.BLOB, digest=DIGEST))
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def make_store(root: Path, max_size: int = 1 << 30) -> DiskBlobStore:
    return DiskBlobStore.open(root, max_size, write_buffer=0)


class HeldBody(httpx.AsyncByteStream):
    """A blob body that starts flowing once ``flowing`` is set."""

    def __init__(self, data: bytes, flowing: asyncio.Event) -> None:
        self.data, self.flowing = data, flowing

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.flowing.wait()
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]


class Registry:
    """An open registry (no auth) whose every repository holds BLOB; blob bodies are held
    until ``flowing`` is set."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.blob_gets = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        length = {"Content-Length": str(len(BLOB))}
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        if request.method == "HEAD":
            return httpx.Response(200, headers=length)
        self.blob_gets += 1
        return httpx.Response(200, headers=length, stream=HeldBody(BLOB, self.flowing))


def blob_service(
    store: DiskBlobStore,
    registry: Registry,
    permits: FillPermits,
    shared: SharedTier | None = None,
) -> BlobService:
    client = UpstreamClient(httpx.AsyncClient(transport=httpx.MockTransport(registry)))
    return BlobService(store, MirrorTokens(client), permits=permits, shared=shared)


def running(permits: FillPermits) -> int:
    """Fill permits (concurrency slots) held now."""
    return sum(permits.running.values())


# --- clear_tmp: a temp file that goes between the listing and its stat ------------------------


def test_clear_tmp_skips_a_temp_file_that_vanished_after_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docxy cache gc` beside a live mirror: a fill commits (its temp file is renamed away)
    after the listing and before the age check; the gc goes on and removes the old ones."""
    store = DiskBlobStore(tmp_path, 1 << 30)  # as `docxy cache gc` opens it: no index thread
    store.tmp_dir.mkdir(parents=True)
    old, committing = store.tmp_dir / "sha256-old.1", store.tmp_dir / "sha256-new.2"
    old.write_bytes(b"o")
    committing.write_bytes(b"n")
    os.utime(old, (0, 0))
    listed = os.scandir

    def scandir_then_commit(path: Path) -> Iterator[os.DirEntry[str]]:
        entries = list(listed(path))
        if Path(path) == store.tmp_dir:
            committing.unlink()  # the live mirror's commit, between the listing and the stat
        return iter(entries)

    monkeypatch.setattr(os, "scandir", scandir_then_commit)
    assert store.clear_tmp(older_than=3600) == 1
    assert not old.exists()


def test_a_directory_in_tmp_is_left_alone_and_does_not_stop_the_store_opening(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory someone made in the cache's tmp/ (no fill makes one): the start-up's
    clean-up tried to unlink it, and the store, so the mirror, did not open (IsADirectoryError);
    `docxy cache gc` stopped the same way. It is said and kept; the temp files go."""
    (tmp_path / "tmp" / "by-hand").mkdir(parents=True)
    (tmp_path / "tmp" / "by-hand" / "note").write_text("kept")
    (tmp_path / "tmp" / "sha256-dead.1").write_bytes(b"x")
    store = DiskBlobStore.open(tmp_path, 1 << 30)
    assert (tmp_path / "tmp" / "by-hand" / "note").read_text() == "kept"
    assert not (tmp_path / "tmp" / "sha256-dead.1").exists()
    assert any("by-hand is a directory" in r.getMessage() for r in caplog.records)
    assert store.clear_tmp() == 0


# --- a follower that cannot open the fill's temp file ----------------------------------------


async def test_no_descriptor_left_for_the_follower_passes_through_and_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE when the first client opens the temp file to follow its own fill: the client is
    passed through (not a 500), nothing is fetched for the cache, and the fill's slot is free
    again: slots do not leak until a restart."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    service = blob_service(store, registry, permits)
    real_open = os.open

    def no_descriptors_to_read(path: str | Path, flags: int, *args: int) -> int:
        if Path(path).parent == store.tmp_dir and not flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_descriptors_to_read)
    outcome = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(outcome, PassThrough), outcome
    assert outcome.reason is Reason.CACHE_UNWRITABLE
    assert "Too many open files" in outcome.detail
    assert running(permits) == 0  # the slot count is back where it started
    assert (registry.blob_gets, store.fills_open, os.listdir(store.tmp_dir)) == (0, 0, [])


async def test_a_temp_file_removed_under_a_slow_fill_passes_a_new_client_through(
    tmp_path: Path,
) -> None:
    """`docxy cache gc` removes temp files older than an hour, a slow fill's among them: a
    client joining that fill is passed through (not a 500); the first client still gets its
    bytes, and the fill's slot is free again once it ends."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    service = blob_service(store, registry, permits)
    first = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(first, Served) and isinstance(first.content, BlobContent)
    stream = first.content.stream
    assert stream is not None
    (temp,) = store.tmp_dir.iterdir()
    os.utime(temp, (0, 0))  # an hour old and more
    assert DiskBlobStore(tmp_path, 1 << 30).clear_tmp(older_than=3600) == 1  # `docxy cache gc`

    second = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(second, PassThrough), second
    assert second.reason is Reason.CACHE_UNWRITABLE
    registry.flowing.set()
    assert await asyncio.wait_for(stream.read_all(), GUARD) == BLOB
    await until(lambda: running(permits) == 0 and store.fills_open == 0)
    assert registry.blob_gets == 1


# --- a manifest the disk refused ---------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = digest_of(b"a layer")
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "c", "digest": str(digest_of(b"a config")), "size": 8},
        "layers": [{"mediaType": "l", "digest": str(LAYER), "size": 7}],
    }
).encode()
ALPINE = RepoKey("registry-1.docker.io", "library/alpine")


async def open_manifests(root: Path) -> ManifestStore:
    store = ManifestStore.open(root / "manifests", AccessIndex(root / "access"), tag_ttl=300)
    await store.loaded()
    return store


def refusing_write(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The ``nth`` file write of the manifest store fails as on a full disk."""
    real = files.write_atomic
    calls = 0

    def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, sync: bool = True) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data, tmp_dir, sync=sync)

    monkeypatch.setattr(manifests_module, "write_atomic", write_atomic)


@pytest.mark.parametrize("nth", [1, 2], ids=["first write", "second write"])
async def test_a_manifest_the_disk_refused_is_not_an_image_of_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """The pull goes on uncached; the catalogue (what eviction keeps whole, and what a restart
    or `docxy cache gc` reads from disk) holds no image the cache cannot serve."""
    store = await open_manifests(tmp_path)
    refusing_write(monkeypatch, nth)
    served = await store.put(ALPINE, MANIFEST, OCI_MANIFEST, public=True)
    assert served.content == MANIFEST  # the client still gets it
    assert not served.kept  # and is told so (Cache-Status: stored=?0)
    assert await store.get(ALPINE, served.digest) is None  # not cached...
    assert store.images() == [] and not store.needed(LAYER)  # ...so no image of the cache
    monkeypatch.undo()
    assert (await open_manifests(tmp_path)).images() == []  # nor after a restart


async def test_a_cached_manifest_stays_an_image_when_storing_it_again_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_manifests(tmp_path)
    stored = await store.put(ALPINE, MANIFEST, OCI_MANIFEST, public=True)
    refusing_write(monkeypatch, 1)
    assert (await store.put(ALPINE, MANIFEST, OCI_MANIFEST, public=True)).kept  # cached before
    assert [image.key.digest for image in store.images()] == [stored.digest]
    cached = await store.get(ALPINE, stored.digest)
    assert cached is not None and cached.content == MANIFEST


# --- the shared tier ---------------------------------------------------------------------------


class ObjectBucket:
    """An S3-compatible bucket that holds ``data`` under every key asked for (its answers carry
    ``x-amz-request-id``, as every S3 store's do: without it a 200 for every key is a web
    server's, not a store's)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.gets += 1
            return fakes.reply(200, self.data, S3_ANSWER, length=True)
        return fakes.reply(404 if request.method == "HEAD" else 200, headers=S3_ANSWER)


S3_ANSWER = {"x-amz-request-id": "fake"}


def shared_tier(store: DiskBlobStore, bucket: ObjectBucket) -> SharedTier:
    where = Bucket("http://bucket.test", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    http = httpx.AsyncClient(transport=httpx.MockTransport(bucket))
    return SharedTier(ObjectStore(where, http), store, 1)


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def write_all(fd: int, chunks: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fill_module, "write_all", write_all)


async def test_a_good_object_the_local_disk_could_not_keep_is_not_marked_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local disk was full under a fill from the bucket: the object is not to blame
    (its client gets the blob from the upstream instead). Once the disk has room again, the
    blob still comes from the bucket."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits()
    registry.flowing.set()
    bucket = ObjectBucket(BLOB)
    tier = shared_tier(store, bucket)
    service = blob_service(store, registry, permits, tier)
    disk_full(monkeypatch)
    first = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(first, Served) and isinstance(first.content, BlobContent)
    assert first.content.stream is not None
    assert await asyncio.wait_for(first.content.stream.read_all(), GUARD) == BLOB
    await until(lambda: running(permits) == 0)  # the fill and its download are over
    assert tier.counts.corrupt == 0 and registry.blob_gets == 1  # the rest, from byte 0

    monkeypatch.undo()
    store.write_failed_at = None  # the disk has room again
    again = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(again, Served) and again.source is Source.SHARED
    assert isinstance(again.content, BlobContent) and again.content.stream is not None
    assert await asyncio.wait_for(again.content.stream.read_all(), GUARD) == BLOB
    assert (bucket.gets, registry.blob_gets, tier.counts.corrupt) == (2, 1, 0)


async def test_an_object_with_the_wrong_bytes_is_marked_corrupt(tmp_path: Path) -> None:
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits()
    tier = shared_tier(store, ObjectBucket(BLOB[:-1] + b"!"))
    service = blob_service(store, registry, permits, tier)
    first = await asyncio.wait_for(service.get(PULL), GUARD)
    assert isinstance(first, Served) and isinstance(first.content, BlobContent)
    assert first.content.stream is not None
    with pytest.raises(FillAborted, match="digest mismatch: expected .*, got "):
        await asyncio.wait_for(first.content.stream.read_all(), GUARD)
    await until(lambda: running(permits) == 0)
    assert tier.counts.corrupt == 1


async def test_a_client_joining_a_bucket_fill_through_another_service_is_told_shared(
    tmp_path: Path,
) -> None:
    """Two services over one store (as two upstreams sharing the cache would be): a client of
    the second joins the fill the first started from the bucket; its bytes came from the bucket
    too, so it is not `cache=miss`: the first is `cache=shared`, the second `cache=joined` (the
    bucket sent the bytes once)."""
    store, registry = make_store(tmp_path), Registry()
    tier = shared_tier(store, ObjectBucket(BLOB))
    one, other = (blob_service(store, registry, FillPermits(), tier) for _ in range(2))
    first, second = await asyncio.wait_for(asyncio.gather(one.get(PULL), other.get(PULL)), GUARD)
    assert store.followers_joined == 1  # the second joined the first's fill
    for outcome in (first, second):
        assert isinstance(outcome, Served) and isinstance(outcome.content, BlobContent)
        assert outcome.content.stream is not None
        assert await asyncio.wait_for(outcome.content.stream.read_all(), GUARD) == BLOB
    assert isinstance(first, Served) and isinstance(second, Served)
    assert (first.source, second.source) == (Source.SHARED, Source.JOINED)
    assert registry.blob_gets == 0


# --- an aborted fill's temp file is freed off the event loop --------------------------------


class Freeing:
    """Records the thread of each call that frees a temp file's blocks: an unlink while no
    descriptor holds the file, or the close of the last descriptor of a file already unlinked
    (on ext4, seconds for a file of many GiB: never on the event loop)."""

    def __init__(self, tmp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_dir = str(tmp_dir)
        self.threads: list[int] = []
        self.done = threading.Event()
        self._close, self._unlink = os.close, os.unlink
        monkeypatch.setattr(os, "close", self.close)
        monkeypatch.setattr(os, "unlink", self.unlink)

    def close(self, fd: int) -> None:
        try:
            target: str | None = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = None
        self._close(fd)
        if target is not None and target.startswith(self.tmp_dir + "/"):
            if target.endswith(" (deleted)") and not self._holders(target):
                self._freed()

    def unlink(self, path: str | Path, *args: Any, **kwargs: Any) -> None:
        self._unlink(path, *args, **kwargs)
        if str(Path(path).parent) == self.tmp_dir and not self._holders(f"{path} (deleted)"):
            self._freed()

    def _holders(self, target: str) -> int:
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                held += os.readlink(f"/proc/self/fd/{fd}") == target
            except OSError:
                continue
        return held

    def _freed(self) -> None:
        self.threads.append(threading.get_ident())
        self.done.set()


@pytest.mark.parametrize("followed", [False, True], ids=["alone", "with a follower"])
async def test_an_aborted_fill_frees_its_temp_file_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, followed: bool
) -> None:
    store = make_store(tmp_path)
    writer = await store.fetch_or_join(DIGEST)
    assert isinstance(writer, BlobWriter)
    follower = await store.fetch_or_join(DIGEST) if followed else None
    await writer.write(BLOB[: len(BLOB) // 2])
    freeing = Freeing(store.tmp_dir, monkeypatch)
    async with writer:
        writer.abort("the upstream broke off")
    if follower is not None:
        assert isinstance(follower, BlobFollower)
        with pytest.raises(FillAborted):
            await asyncio.wait_for(follower.read_all(), GUARD)
    assert os.listdir(store.tmp_dir) == []  # the name is gone at once
    assert await asyncio.to_thread(freeing.done.wait, GUARD), "the temp file was never freed"
    assert freeing.threads and threading.get_ident() not in freeing.threads
    assert store.usage().reserved == 0


async def test_a_cache_hit_on_a_read_only_cache_disk_is_served_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache disk the kernel remounted read-only (ext4 ``errors=remount-ro``), or a blob file
    owned by another user (``utime`` to a given time needs its owner): noting when the blob
    was last used fails with EROFS or EPERM. The cached blob must still be served, as a cached
    manifest is; it was a 500 for every hit (the OSError escaped ``lookup``)."""
    store = make_store(tmp_path)
    digest = await put(store, BLOB)
    fakes.utime_read_only(monkeypatch, tmp_path / "blobs")
    entry = store.lookup(digest)
    assert entry is not None and entry.size == len(BLOB)
    assert await read(store, digest) == BLOB
    assert [e.digest for e in store.list_entries()] == [digest]  # still cached


class Killed(Exception):
    """The process dies here (a stop, the OOM killer, a power cut)."""


async def test_an_eviction_cut_short_never_leaves_an_index_without_its_platform_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgotten images' files are deleted one by one (seconds for many on a slow disk). Cut
    short, an index whose platform manifest was deleted before it was read back at the next
    start and offered again: a pull pinned to its digest, with the upstream down, failed half
    way. Indexes go first, so what a cut leaves is whole."""
    root = tmp_path / "manifests"
    store = ManifestStore.open(root, AccessIndex(tmp_path / "access"), tag_ttl=300)
    repo = RepoKey("registry.test", "team/app")
    pairs: list[tuple[Digest, Digest]] = []
    for n in range(12):
        child = json.dumps({"schemaVersion": 2, "layers": [], "n": n}).encode()
        platform = await store.put(repo, child, OCI_MANIFEST, public=True)
        entry = {"mediaType": OCI_MANIFEST, "digest": str(platform.digest), "size": len(child)}
        index = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
        above = await store.put(repo, index, OCI_INDEX, public=True)
        pairs.append((above.digest, platform.digest))
    await store.loaded()
    real_unlink = files.unlink_quietly
    deleted: list[Path] = []

    def unlink_then_die(path: Path) -> None:
        real_unlink(path)
        if path.is_relative_to(root / "by-digest") and path.suffix != ".json":
            deleted.append(path)
            if len(deleted) == len(pairs):  # half the manifests deleted
                raise Killed

    monkeypatch.setattr(manifests_module, "unlink_quietly", unlink_then_die)
    upstream = store.images()[0].key.upstream
    with pytest.raises(Killed):
        store.forget_images([ImageKey(upstream, platform) for _, platform in pairs])
    monkeypatch.setattr(manifests_module, "unlink_quietly", real_unlink)

    again = ManifestStore.open(root, AccessIndex(tmp_path / "access"), tag_ttl=300)  # restart
    await again.loaded()
    for of_index, of_child in pairs:
        if await again.get(repo, of_index) is not None:
            assert await again.get(repo, of_child) is not None, "an index without its child"


async def test_a_blob_removal_cut_short_never_leaves_an_image_without_its_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docxy cache rm --blobs`` removes a blob with :meth:`DiskBlobStore.remove`, which
    also forgets the images that need it (their tag, manifest, index). Killed after any of
    those deletions, what the next start reads back is whole: no manifest offered (or tag
    pointing at one) whose blob is gone. Before, the blob's file went first: killed right
    after it, the image stayed cached without it, and a pull with the upstream down failed
    half way."""
    repo = RepoKey("registry.test", "team/app")
    layer, config = b"layer" * 1000, b"{}"
    steps = 0
    while True:
        steps += 1
        directory = tmp_path / str(steps)
        cache = open_cache(directory, max_size=1 << 30, tag_ttl=300)
        for blob in (config, layer):
            await put(cache.blobs, blob)
        image = manifest_of(config, layer)
        child = await cache.manifests.put(repo, image, OCI_MANIFEST, public=True)
        entry = {"mediaType": OCI_MANIFEST, "digest": str(child.digest), "size": len(image)}
        index = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
        above = await cache.manifests.put(repo, index, OCI_INDEX, public=True)
        await cache.manifests.set_tag(repo, "1", above.digest, public=True)
        await cache.manifests.loaded()
        await cache.blobs.indexed()
        killed = dying_at(steps, monkeypatch)
        try:
            assert cache.blobs.remove(digest_of(layer))
        except Killed:
            pass
        monkeypatch.undo()

        again = open_for_admin(directory, max_size=1 << 30, tag_ttl=300)  # the next start
        for kept in again.manifests.images():
            assert all(again.blobs.lookup(d) for d in kept.blobs), f"after {steps} steps"
        found = await again.manifests.resolve_tag(repo, "1")
        if found.manifest is not None:
            assert await again.manifests.get(repo, child.digest) is not None, "index, no child"
        if not killed():
            break
    assert steps > 3  # the tag, the index, the manifest and the blob: a cut between each


def manifest_of(config: bytes, *layers: bytes) -> bytes:
    def descriptor(blob: bytes) -> dict[str, object]:
        return {"mediaType": "x", "digest": str(digest_of(blob)), "size": len(blob)}

    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(config)}
    return json.dumps(document | {"layers": [descriptor(b) for b in layers]}).encode()


def dying_at(step: int, monkeypatch: pytest.MonkeyPatch) -> Callable[[], bool]:
    """The process killed (:class:`Killed`) instead of the ``step``-th file deletion of the
    cache's blobs, tags and manifests; returns whether it was."""
    done = 0

    def wrap(real: Callable[[Path], object]) -> Callable[[Path], object]:
        def delete(path: Path) -> object:
            nonlocal done
            done += 1
            if done == step:
                raise Killed
            return real(path)

        return delete

    monkeypatch.setattr(blobs_module, "_unlink", wrap(blobs_module._unlink))
    monkeypatch.setattr(manifests_module, "unlink_quietly", wrap(files.unlink_quietly))
    return lambda: done >= step
