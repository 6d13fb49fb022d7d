"""Review of the manifest store and eviction (third pass): a manifest evicted while it was
written is said not kept, why; reading the refused deletes writes nothing; an index stored
while a plan was made is never evicted by it; a refused delete of a blob's images puts back
what it did not delete."""

from __future__ import annotations

import asyncio
import errno
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Cache, ImageKey, ManifestStore, RepoKey, TagState, open_cache
from docxy.cache import blobs as blobs_module
from docxy.cache import manifests as manifests_module
from docxy.cache.files import unlink_quietly
from docxy.cache.images import plan_eviction
from docxy.core.digests import Digest, digest_of
from docxy.tasks import spawn
from tests.unit.held import hold
from tests.unit.test_cache_blobs import GUARD
from tests.unit.test_cache_eviction import cached_image, layer, manifest, offered_whole
from tests.unit.test_cachecli import _populate, run

CAP = 1000
OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)


def key_of(cache: Cache, repo: RepoKey, tag: str = "latest") -> ImageKey:
    entry = next(t for t in cache.manifests.list_tags() if t.repo == repo and t.tag == tag)
    upstream = next(iter(cache.manifests.images())).key.upstream
    return ImageKey(upstream, entry.digest)


def index_of(*children: Digest) -> bytes:
    platforms = [{"mediaType": OCI, "digest": str(child), "size": 1} for child in children]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": platforms}).encode()


def refuse(monkeypatch: pytest.MonkeyPatch, *kept: Path) -> None:
    """The disk refuses to delete the files ``kept`` (another owner's); every other goes."""
    unlink = unlink_quietly

    def refusing(path: Path) -> None:
        if path in kept:
            raise OSError(errno.EACCES, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(manifests_module, "unlink_quietly", refusing)


# --- 1. a manifest evicted while it was written is not kept, and says why ---------------------


async def test_a_manifest_evicted_while_written_is_not_kept_and_says_evicted(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put deleted such a manifest once written (581b509) but said it kept it: the response's
    Cache-Status and the access log said stored, and ``docxy warm`` counted it warmed."""
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/multi", layers)
    await cache.manifests.loaded()
    platform = key_of(cache, repo)
    writing = hold(monkeypatch, ManifestStore, "_write_manifest")
    storing = spawn(
        "storing", cache.manifests.put(repo, index_of(platform.digest), OCI_INDEX, public=True)
    )
    assert await asyncio.to_thread(writing.entered.wait, GUARD)
    await cache.manifests.evict_images([platform])  # the platform, and the index above it
    writing.release.set()
    stored = await asyncio.wait_for(storing, GUARD)
    assert not cache.manifests._content_path(repo.upstream, stored.digest).exists()
    assert stored.kept is False
    assert stored.not_kept is manifests_module.NotKept.EVICTED  # not the disk's fault


async def test_a_manifest_the_disk_refused_is_not_kept_as_unwritable(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ManifestStore, "_write_manifest", refused)
    stored = await cache.manifests.put(
        RepoKey("registry.test", "a/b"), manifest([b"c"]), OCI, public=True
    )
    assert stored.kept is False and stored.not_kept is manifests_module.NotKept.UNWRITABLE


async def test_a_manifest_stored_is_kept(cache: Cache) -> None:
    stored = await cache.manifests.put(
        RepoKey("registry.test", "a/b"), manifest([b"c"]), OCI, public=True
    )
    assert stored.kept is True and stored.not_kept is None


# --- 2. refused deletes: reading them writes nothing, and they expire --------------------------


async def test_refused_deletes_expire_after_refused_retry_and_reading_them_changes_nothing(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused delete leaves its image out of evictions for ``REFUSED_RETRY`` seconds (a
    clock set back ends it too); reading them prunes nothing, recording one prunes those
    expired."""
    repos = [
        await cached_image(cache, f"team/img{n}", [layer(f"cfg-{n}", 10), layer(f"l-{n}", 90)])
        for n in range(2)
    ]
    now = [time.time()]
    monkeypatch.setattr(cache.manifests, "_clock", lambda: now[0])
    keys = [key_of(cache, repo) for repo in repos]
    refuse(monkeypatch, *(cache.manifests._key_path(key) for key in keys))
    with pytest.raises(OSError):
        await cache.manifests.evict_images([keys[0]])
    assert cache.manifests.undeletable() == {keys[0]}
    now[0] += manifests_module.REFUSED_RETRY - 1
    assert cache.manifests.undeletable() == {keys[0]}
    recorded = dict(cache.manifests._undeletable)
    now[0] += 2
    assert cache.manifests.undeletable() == set()  # expired: tried again by the next eviction
    assert cache.manifests._undeletable == recorded  # ...and reading it wrote nothing
    now[0] -= 10 * manifests_module.REFUSED_RETRY  # a clock set back: expired too
    assert cache.manifests.undeletable() == set()
    assert cache.manifests._undeletable == recorded
    now[0] += 10 * manifests_module.REFUSED_RETRY
    with pytest.raises(OSError):  # another refusal: the expired note goes
        await cache.manifests.evict_images([keys[1]])
    assert cache.manifests.undeletable() == {keys[1]}
    assert cache.manifests._undeletable == {keys[1]: now[0]}


# --- 3. an index stored while the plan was made is never evicted by it ------------------------


@pytest.mark.parametrize("attempts", [1, blobs_module.PLAN_ATTEMPTS])
async def test_an_index_stored_while_the_plan_is_made_is_not_evicted_by_it(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, attempts: int
) -> None:
    """The plan forgets the least recently pulled platform manifest; a pull meanwhile stores a
    new index above it (its client fetches the platform manifest next). The index was not in
    the plan's snapshot, so nothing counted it pulled meanwhile: forgetting the platform took
    it along, and its client's next request found neither."""
    monkeypatch.setattr(blobs_module, "PLAN_ATTEMPTS", attempts)
    planning, release = threading.Event(), threading.Event()
    plans: list[bool] = []

    def blocked(*args: Any) -> Any:
        plans.append(True)
        planning.set()
        release.wait(GUARD)
        return plan_eviction(*args)

    monkeypatch.setattr(blobs_module, "plan_eviction", blocked)
    old = await cached_image(cache, "team/old", [layer("cfg-o", 10), layer("l-o")])
    mid = await cached_image(cache, "team/mid", [layer("cfg-m", 10), layer("l-m")])
    await cached_image(cache, "team/new", [layer("cfg-n", 10), layer("l-n")])
    await cache.manifests.loaded()
    platform = key_of(cache, old)
    evicting = spawn("evicting", cache.blobs._evict_to(600))  # one image must go
    assert await asyncio.to_thread(planning.wait, GUARD)
    index = await cache.manifests.put(old, index_of(platform.digest), OCI_INDEX, public=True)
    await cache.manifests.set_tag(old, "multi", index.digest, public=True)
    release.set()
    await asyncio.wait_for(evicting, GUARD)
    assert await offered_whole(cache, old, "multi") is True  # the index, its platform, blobs
    assert await offered_whole(cache, old) is True
    if attempts > 1:  # planned again, with the index: the next least recent went
        assert await offered_whole(cache, mid) is None
        assert len(plans) == 2


# --- 4. a refused delete of the images a blob's going takes ------------------------------------


async def test_a_refused_forget_offers_again_what_it_did_not_delete(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forget_images (through ``blob_gone`` from ``remove``: ``docxy cache rm --blobs``, ``gc
    --verify``) took every image out of the catalogue first, then raised at the manifest the
    disk refused to delete: those it had not deleted stayed on disk but out of the catalogue,
    their tags unmapped, so an eviction let go of their blobs (and the next start offered them
    without). A blob already gone (found vanished) still puts none back: never an image
    without its blobs (test_cache_images)."""
    layers = [layer("cfg", 10), layer("shared", 90)]
    repo = await cached_image(cache, "team/multi", layers)
    platform = key_of(cache, repo)
    stored = await cache.manifests.put(repo, index_of(platform.digest), OCI_INDEX, public=True)
    await cache.manifests.set_tag(repo, "multi", stored.digest, public=True)
    refuse(monkeypatch, cache.manifests._key_path(platform))
    with pytest.raises(OSError):  # the callers' to report: one WARNING, one line of the CLI
        cache.manifests.forget_images([platform])
    offered = {image.key for image in cache.manifests.images()}
    assert offered == {platform}  # the index went (first), the platform's files stayed
    assert cache.manifests.needed(digest_of(layers[1]))  # so eviction keeps its blobs
    assert (await cache.manifests.resolve_tag(repo, "latest")).state is not TagState.MISSING
    assert cache.manifests._tags_of.get(platform)  # its tag mapped again
    assert (await cache.manifests.resolve_tag(repo, "multi")).state is TagState.MISSING
    assert cache.manifests.undeletable() == {platform}  # left out of the next evictions


async def test_a_blob_whose_images_the_disk_keeps_is_not_removed(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``remove`` (``docxy cache rm --blobs``, ``gc --verify``) forgets the images needing the
    blob before deleting it: a refusal keeps the blob, its image offered whole, and says so."""
    layers = [layer("cfg", 10), layer("l", 90)]
    repo = await cached_image(cache, "team/app", layers)
    refuse(monkeypatch, cache.manifests._key_path(key_of(cache, repo)))
    with pytest.raises(OSError):
        cache.blobs.remove(digest_of(layers[1]))
    assert cache.blobs.lookup(digest_of(layers[1])) is not None
    assert await offered_whole(cache, repo) is True


@pytest.mark.usefixtures("clean_docxy_env")
def test_rm_blobs_of_an_image_whose_manifest_the_disk_keeps_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docxy cache rm --blobs``: removing a blob forgets the images needing it first; the
    disk refusing the manifest's delete keeps that blob, and the command says so in one line
    (exit 1), no traceback."""
    cache = asyncio.run(_populate(tmp_path / "cache"))
    unlink = unlink_quietly

    def refusing(path: Path) -> None:
        if path.name == cache.busybox.hex:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(manifests_module, "unlink_quietly", refusing)
    code, _, err = run(capsys, cache, "rm", "docker.io/library/busybox:1", "--blobs")
    assert code == 1
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.rstrip().endswith(f"{cache.busybox.hex} Permission denied"), err
    assert cache.blob_path("busybox-cfg").exists() and cache.blob_path("busybox-l").exists()
