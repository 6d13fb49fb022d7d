"""The per-repository records in ``cache/access/`` live exactly as long as their manifest: gone
when it is evicted or its blobs are removed (by the mirror or ``docxy cache``), moved over from
the earlier layout, never piling up as images come and go."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from docxy.cache import AccessIndex, Cache, RepoKey, Visibility, open_cache
from docxy.cache.visibility import upstream_key
from docxy.cli.main import main
from docxy.core.digests import Digest, digest_of
from tests.unit.test_cache_eviction import REGISTRY, cached_image, layer, manifest

CAP = 1000


def recorded(cache: Cache) -> set[Digest]:
    return {digest for _, digest, _ in cache.access.markers()}


def cached_manifests(cache: Cache) -> set[Digest]:
    return {image.key.digest for image in cache.manifests.images()}


def manifest_of(*layers: bytes) -> Digest:
    return digest_of(manifest(list(layers)))


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)


async def test_an_evicted_image_takes_its_records_along(cache: Cache) -> None:
    old = [layer("cfg-old", 10), layer("l-old")]
    await cached_image(cache, "team/old", old)
    await cached_image(cache, "team/mid", [layer("cfg-mid", 10), layer("l-mid")])
    await cached_image(cache, "team/new", [layer("cfg-new", 10), layer("l-new")])
    assert manifest_of(*old) in recorded(cache)
    await cached_image(cache, "team/next", [layer("cfg-next", 10), layer("l-next")])
    assert manifest_of(*old) not in cached_manifests(cache)  # evicted...
    assert manifest_of(*old) not in recorded(cache)  # ...and so are its records
    assert recorded(cache) == cached_manifests(cache)


async def test_records_stay_bounded_as_images_come_and_go(cache: Cache) -> None:
    for i in range(12):  # room for three at a time
        await cached_image(cache, f"team/app{i}", [layer(f"cfg-{i}", 10), layer(f"l-{i}")])
        await cached_image(cache, "team/mirror-of-app", [layer(f"cfg-{i}", 10), layer(f"l-{i}")])
    await cache.blobs.settle()
    assert len(cached_manifests(cache)) <= 3
    assert recorded(cache) == cached_manifests(cache)
    markers = [path for _, _, path in cache.access.markers()]
    assert len(markers) == 2 * len(cached_manifests(cache))  # two repositories each


async def test_a_blob_removed_by_hand_takes_the_records_along(cache: Cache) -> None:
    layers = [layer("cfg", 10), layer("only")]
    await cached_image(cache, "team/app", layers)
    assert cache.blobs.remove(digest_of(layers[1]))
    assert recorded(cache) == set()


@pytest.mark.usefixtures("clean_docxy_env")
def test_docxy_cache_rm_blobs_takes_the_records_along(tmp_path: Path) -> None:
    gone = [layer("cfg-gone", 10), layer("l-gone")]
    kept = [layer("cfg-kept", 10), layer("l-kept")]

    async def populate() -> None:
        cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
        await cached_image(cache, "team/gone", gone)
        await cached_image(cache, "team/kept", kept)

    asyncio.run(populate())
    access = AccessIndex(tmp_path / "cache" / "access")
    args = ["--cache-dir", str(tmp_path / "cache"), "--upstream", f"https://{REGISTRY}"]
    assert main(["cache", "rm", f"{REGISTRY}/team/gone", "--blobs", *args]) == 0
    assert {digest for _, digest, _ in access.markers()} == {manifest_of(*kept)}
    assert main(["cache", "gc", "--set", "cache.max_size=100", *args]) == 0
    assert list(access.markers()) == []  # gc evicted the last image, whole, with its records


def old_layout_record(root: Path, repo: RepoKey, digest: Digest, suffix: str) -> None:
    directory = root / repo.hashed()
    (directory / digest.algorithm).mkdir(parents=True, exist_ok=True)
    (directory / digest.algorithm / f"{digest.hex}.{suffix}").write_bytes(b"")
    (directory / "repo.json").write_text(json.dumps({"upstream": repo.upstream, "repo": repo.repo}))


async def test_records_of_the_earlier_layout_are_moved(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    repo = await cached_image(cache, "team/app", layers)
    cached = manifest_of(*layers)
    for _, _, path in list(cache.access.markers()):
        path.unlink()  # as an earlier version would have left it:
    access = tmp_path / "cache" / "access"
    private = RepoKey(REGISTRY, "team/private")
    old_layout_record(access, repo, cached, "public")
    old_layout_record(access, private, cached, "private")
    old_layout_record(access, repo, digest_of(b"long evicted"), "public")

    cache = open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)  # the upgrade
    assert cache.access.visibility(repo, cached) == Visibility(repo, public=True)
    assert cache.access.visibility(private, cached) == Visibility(private, public=False)
    assert recorded(cache) == {cached}  # the record of a manifest no longer cached is dropped
    assert sorted(p.name for p in access.iterdir()) == ["by-digest"]
    assert sorted(r.repo for r in cache.access.repositories()) == ["team/app", "team/private"]


def test_forget_digest_is_per_upstream(tmp_path: Path) -> None:
    index = AccessIndex(tmp_path)
    digest = digest_of(b"manifest")
    hub, ghcr = RepoKey("hub.test", "a/b"), RepoKey("ghcr.test", "a/b")
    index.record(hub, digest, public=True)
    index.record(ghcr, digest, public=False)
    index.forget_digest(upstream_key("hub.test"), digest)
    assert index.visibility(hub, digest) is None
    assert index.visibility(ghcr, digest) == Visibility(ghcr, public=False)


async def test_blob_visibility_is_answered_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    cache = open_cache(root, max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 10), layer("l")]
    public = await cached_image(cache, "team/app", layers)
    private = RepoKey(REGISTRY, "team/private")
    await cache.manifests.put(private, manifest(layers), "application/json", public=False)
    cache = open_cache(root, max_size=CAP, tag_ttl=300)  # a restart: read back from disk
    await cache.manifests.loaded()

    def no_disk(*_: object) -> None:
        raise AssertionError("blob_visibility read the disk")

    monkeypatch.setattr(AccessIndex, "visibility", no_disk)
    blob = digest_of(layers[1])
    assert cache.manifests.blob_visibility(public, blob) == Visibility(public, public=True)
    assert cache.manifests.blob_visibility(private, blob) == Visibility(private, public=False)
    assert cache.manifests.blob_visibility(RepoKey(REGISTRY, "team/other"), blob) is None
    other = RepoKey(REGISTRY, "team/later")
    monkeypatch.undo()
    await cache.manifests.put(other, manifest(layers), "application/json", public=True)
    monkeypatch.setattr(AccessIndex, "visibility", no_disk)
    assert cache.manifests.blob_visibility(other, blob) == Visibility(other, public=True)
