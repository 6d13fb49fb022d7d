"""Eviction at scale: high and low water marks, planning in a worker thread, and what the plan
meets when it is applied (images pulled and blobs needed since it was made).

The image-aware rules themselves are tested in ``test_cache_images.py``; these tests check that
they still hold when the plan is made off the event loop, over a snapshot.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Cache, RepoKey, TagState, open_cache
from docxy.cache import blobs as blobs_module
from docxy.cache import manifests as manifests_module
from docxy.cache.blobs import LOW_WATER_GAP, BlobEntry, low_water
from docxy.cache.files import unlink_quietly
from docxy.cache.images import Image, ImageKey, needs, plan_eviction
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit import big_catalogue
from tests.unit.test_cache_blobs import GUARD, blob, disk_bytes, make_store, put

REGISTRY = "registry.test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


# --- high and low water ----------------------------------------------------------------------


def test_low_water_is_ninety_percent_at_most_eight_gib_below() -> None:
    assert low_water(1000) == 900
    assert low_water(20 * 1024**3) == 18 * 1024**3
    assert low_water(1024**4) == 1024**4 - LOW_WATER_GAP


async def test_passing_the_cap_evicts_down_to_the_low_water_mark(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_size=1000)
    digests = [await put(store, blob(100, i)) for i in range(10)]  # exactly full
    assert store.plans == 0
    await put(store, blob(100, 10))  # 1100 > 1000: down to 900, so two blobs go
    assert [store.lookup(d) for d in digests[:2]] == [None, None]
    assert store.usage().bytes == 900 == disk_bytes(store)
    plans = store.plans
    await put(store, blob(100, 11))  # 1000: under the cap again, nothing planned
    assert store.plans == plans
    assert all(store.lookup(d) is not None for d in digests[2:])
    assert store.usage().bytes == 1000


# --- planning in a worker thread ---------------------------------------------------------------


@dataclass
class BlockedPlanner:
    """``plan_eviction`` as the blob store calls it, held until :attr:`release` is set."""

    planning: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    threads: list[int] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)  # False: the guard ran out

    def __call__(self, *args: Any) -> Any:
        self.threads.append(threading.get_ident())
        self.planning.set()
        self.held.append(self.release.wait(GUARD))
        return plan_eviction(*args)

    async def wait_planning(self) -> None:
        assert await asyncio.to_thread(self.planning.wait, GUARD), "no plan was made"


@pytest.fixture
def planner(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockedPlanner]:
    blocked = BlockedPlanner()
    monkeypatch.setattr(blobs_module, "plan_eviction", blocked)
    yield blocked
    blocked.release.set()


async def test_the_plan_is_made_off_the_event_loop(tmp_path: Path, planner: BlockedPlanner) -> None:
    store = make_store(tmp_path, max_size=100)
    old_data = blob(60, 1)
    old = await put(store, old_data)
    newcomer = spawn("newcomer", put(store, blob(60, 2)))  # needs room: a plan is made
    await planner.wait_planning()
    # The plan is still being made; the loop goes on serving the cache meanwhile.
    reader = store.open_read(old)
    assert reader is not None
    assert await reader.read_all() == old_data
    assert not newcomer.done()
    planner.release.set()
    await asyncio.wait_for(newcomer, GUARD)
    assert planner.threads and threading.get_ident() not in planner.threads
    assert planner.held == [True]
    assert store.lookup(old) is None


# --- what the plan meets when it is applied ----------------------------------------------------


async def cached_image(cache: Cache, repo: str, layers: list[bytes]) -> RepoKey:
    """A pull through the mirror: manifest and tag first, then the blobs it needs."""
    key = RepoKey(REGISTRY, repo)
    body = manifest(layers)
    stored = await cache.manifests.put(key, body, OCI_MANIFEST, public=True)
    await cache.manifests.set_tag(key, "latest", stored.digest, public=True)
    for data in layers:
        if cache.blobs.lookup(digest_of(data)) is None:
            await put(cache.blobs, data)
    return key


def manifest(layers: list[bytes]) -> bytes:
    descriptors = [{"digest": str(digest_of(data)), "size": len(data)} for data in layers]
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptors[0]}
    doc["layers"] = descriptors[1:]
    return json.dumps(doc).encode()


async def offered_whole(cache: Cache, repo: RepoKey, tag: str = "latest") -> bool | None:
    """None if the tag is no longer offered; else whether every blob it needs is cached."""
    found = await cache.manifests.resolve_tag(repo, tag)
    if found.state is TagState.MISSING:
        return None
    assert found.manifest is not None
    blobs, _ = needs(found.manifest.content)
    return all(cache.blobs.lookup(b) is not None for b in blobs)


def layer(name: str, size: int = 290) -> bytes:
    return (name.encode() * size)[:size]


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return open_cache(tmp_path / "cache", max_size=1000, tag_ttl=300)


async def test_an_image_pulled_while_the_plan_is_made_is_kept(
    cache: Cache, planner: BlockedPlanner
) -> None:
    first = await cached_image(cache, "team/first", [layer("cfg-1", 10), layer("l-1")])
    second = await cached_image(cache, "team/second", [layer("cfg-2", 10), layer("l-2")])
    third = await cached_image(cache, "team/third", [layer("cfg-3", 10), layer("l-3")])
    fourth_layers = [layer("cfg-4", 10), layer("l-4")]
    newcomer = spawn("newcomer", cached_image(cache, "team/fourth", fourth_layers))
    await planner.wait_planning()  # the plan made now forgets "first", the least recent
    assert await offered_whole(cache, first) is True  # ...which a client pulls meanwhile
    planner.release.set()
    fourth = await asyncio.wait_for(newcomer, GUARD)
    states = {r.repo: await offered_whole(cache, r) for r in (first, second, third, fourth)}
    assert states == {"team/first": True, "team/second": None, "team/third": True,
                      "team/fourth": True}  # fmt: skip
    assert planner.held == [True, True]  # planned again, once


async def test_a_blob_an_image_needs_since_the_plan_was_made_is_kept(
    cache: Cache, planner: BlockedPlanner
) -> None:
    loose = layer("loose", 300)  # a blob no image needs, the least recently used
    await put(cache.blobs, loose)
    kept = await cached_image(cache, "team/kept", [layer("cfg-k", 10), layer("l-k")])
    newcomer = spawn("newcomer", put(cache.blobs, layer("other", 500)))
    await planner.wait_planning()  # this plan deletes the loose blob...
    # ...which an image pulled meanwhile turns out to need.
    late = RepoKey(REGISTRY, "team/late")
    body = manifest([layer("cfg-k", 10), loose])
    stored = await cache.manifests.put(late, body, OCI_MANIFEST, public=True)
    await cache.manifests.set_tag(late, "latest", stored.digest, public=True)
    planner.release.set()
    await asyncio.wait_for(newcomer, GUARD)
    assert await offered_whole(cache, late) is True
    assert await offered_whole(cache, kept) is None  # the next plan took the older image
    assert cache.blobs.usage().bytes == 300 + 10 + 500
    assert planner.held == [True, True]


async def test_forgetting_a_child_manifest_forgets_the_index_above_it(cache: Cache) -> None:
    child = await cached_image(cache, "team/multi", [layer("cfg", 10), layer("amd64")])
    child_tag = await cache.manifests.resolve_tag(child, "latest")
    assert child_tag.manifest is not None
    platform = {"mediaType": OCI_MANIFEST, "digest": str(child_tag.manifest.digest), "size": 1}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [platform]}
    stored = await cache.manifests.put(child, json.dumps(index).encode(), OCI_INDEX, public=True)
    await cache.manifests.set_tag(child, "multi", stored.digest, public=True)
    upstream = next(iter(cache.manifests.images())).key.upstream
    cache.manifests.forget_images([ImageKey(upstream, child_tag.manifest.digest)])
    assert await offered_whole(cache, child, "multi") is None  # never an index missing a child
    assert await offered_whole(cache, child) is None


def refuse_deleting(monkeypatch: pytest.MonkeyPatch, cache: Cache, repo: RepoKey) -> None:
    """The disk refuses to delete the manifest file that ``repo``'s tag points at (another
    owner's, say); every other file goes."""
    entry = next(t for t in cache.manifests.list_tags() if t.repo == repo)
    kept = cache.manifests._content_path(repo.upstream, entry.digest)
    unlink = unlink_quietly

    def refusing(path: Path) -> None:
        if path == kept:
            raise OSError(errno.EACCES, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(manifests_module, "unlink_quietly", refusing)


async def test_a_manifest_the_disk_keeps_is_left_out_of_later_evictions(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every later plan picked the image whose manifest the disk refused to delete first, so
    every later eviction stopped at it: the cache passed every new blob through, uncached."""
    old = await cached_image(cache, "team/old", [layer("cfg-old", 10), layer("l-old")])
    for n in range(2):
        await cached_image(cache, f"team/img{n}", [layer(f"cfg-{n}", 10), layer(f"l-{n}")])
    loose = await put(cache.blobs, layer("loose", 50))  # no image needs it
    refuse_deleting(monkeypatch, cache, old)
    caplog.set_level(logging.WARNING, logger="docxy")
    for n in range(2, 5):  # 300 bytes each: an eviction for each
        layers = [layer(f"cfg-{n}", 10), layer(f"l-{n}")]
        pulled = await cached_image(cache, f"team/img{n}", layers)
        await cache.blobs.settle()
        assert await offered_whole(cache, pulled) is True  # cached, not passed through
    assert await offered_whole(cache, old) is True  # its files are all there, its blobs too
    assert cache.blobs.lookup(loose) is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "eviction stopped" in said[0], said
    assert cache.blobs.usage().bytes <= 1000


async def test_a_manifest_the_disk_kept_is_tried_again_later(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest the disk refused to delete was left out of every eviction until the mirror
    restarted, even once the operator had mended the file: the least recently pulled image
    stayed cached for good. It is left out for ``REFUSED_RETRY`` seconds, then evicted as any."""
    old = await cached_image(cache, "team/old", [layer("cfg-old", 10), layer("l-old")])
    for n in range(2):
        await cached_image(cache, f"team/img{n}", [layer(f"cfg-{n}", 10), layer(f"l-{n}")])
    old_key = key_of(cache, old)
    now = [time.time()]
    monkeypatch.setattr(cache.manifests, "_clock", lambda: now[0])
    refuse_deleting(monkeypatch, cache, old)
    caplog.set_level(logging.WARNING, logger="docxy")

    async def pull(n: int) -> set[ImageKey]:
        await cached_image(cache, f"team/img{n}", [layer(f"cfg-{n}", 10), layer(f"l-{n}")])
        await cache.blobs.settle()
        return {image.key for image in cache.manifests.images()}

    assert old_key in await pull(2)  # the disk refused: kept, and said once
    assert len(caplog.records) == 1
    monkeypatch.setattr(manifests_module, "unlink_quietly", unlink_quietly)  # mended
    now[0] += manifests_module.REFUSED_RETRY - 1
    assert old_key in await pull(3)  # still left out: another image went
    now[0] += 2
    assert old_key not in await pull(4)  # tried again: the least recently pulled goes
    assert not cache.manifests._content_path(old.upstream, old_key.digest).exists()
    assert len(caplog.records) == 1


async def test_a_refused_eviction_deletes_no_tag_of_an_image_it_keeps(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tag records of every image of the eviction went first: those the refusal then kept
    were offered by digest, their tags gone (and put back in the map, pointing at nothing)."""
    repos = [
        await cached_image(cache, f"team/img{n}", [layer(f"cfg-{n}", 10), layer(f"l-{n}")])
        for n in range(3)
    ]
    refuse_deleting(monkeypatch, cache, repos[0])
    keys = [key_of(cache, repo) for repo in repos[:2]]
    with pytest.raises(OSError):
        await cache.manifests.evict_images(keys)
    offered = {image.key for image in cache.manifests.images()}
    assert keys[0] in offered  # the disk kept it: offered again
    for repo, key in zip(repos, [*keys, key_of(cache, repos[2])], strict=True):
        found = await cache.manifests.resolve_tag(repo, "latest")
        assert (found.state is not TagState.MISSING) == (key in offered), repo
        assert (await offered_whole(cache, repo) is True) == (key in offered), repo


def key_of(cache: Cache, repo: RepoKey) -> ImageKey:
    """The image ``repo``'s tag ``latest`` points at (its record read from disk)."""
    entry = next(t for t in cache.manifests.list_tags() if t.repo == repo and t.tag == "latest")
    upstream = next(iter(cache.manifests.images())).key.upstream
    return ImageKey(upstream, entry.digest)


async def test_an_image_pulled_while_the_last_plan_is_made_is_kept(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client pulls each image the plan forgets while it is made, three times: the third
    plan was applied as made, evicting the image just pulled (its client may be fetching its
    layers). It is now left out of that plan, with its blobs; the next eviction takes another."""
    plans: list[tuple[threading.Event, threading.Event]] = []

    def blocked(*args: Any) -> Any:
        entered, release = threading.Event(), threading.Event()
        plans.append((entered, release))
        entered.set()
        if len(plans) <= 3:
            release.wait(GUARD)
        return plan_eviction(*args)

    monkeypatch.setattr(blobs_module, "plan_eviction", blocked)
    repos = [
        await cached_image(cache, f"team/{name}", [layer(f"cfg-{name}", 10), layer(f"l-{name}")])
        for name in "abc"
    ]
    newcomer = spawn(
        "newcomer", cached_image(cache, "team/new", [layer("cfg-n", 10), layer("l-n")])
    )
    for made, repo in enumerate(repos, 1):  # plan 1 forgets a, plan 2 b, plan 3 c
        while len(plans) < made:
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(plans[-1][0].wait, GUARD)
        assert await offered_whole(cache, repo) is True  # pulled meanwhile
        plans[-1][1].set()
    await asyncio.wait_for(newcomer, GUARD)  # its layer cached, not passed through
    await cache.blobs.settle()
    # The next plan took the least recently pulled: a, and the newcomer's manifest, pulled
    # before the three.
    assert [await offered_whole(cache, repo) for repo in repos] == [None, True, True]
    assert len(plans) == 4
    assert cache.blobs.usage().bytes <= 1000


def test_a_moved_index_is_left_out_of_the_last_plan_with_its_platforms_and_their_blobs() -> None:
    """An index pulled while the last plan was made keeps its platform manifests (it would
    point at forgotten ones) and their blobs; the rest of the plan is applied."""
    up = "upstream"
    entries = [BlobEntry(digest_of(layer(n)), Path(n), 290, 0.0) for n in ("a", "b", "o")]
    platforms = [
        Image(ImageKey(up, digest_of(name.encode())), 0.0, frozenset([entry.digest]))
        for name, entry in zip("ab", entries, strict=False)
    ]
    children = frozenset(platform.key.digest for platform in platforms)
    index = Image(ImageKey(up, digest_of(b"i")), 0.0, children=children)
    other = Image(ImageKey(up, digest_of(b"o")), 0.0, frozenset([entries[2].digest]))
    images = [*platforms, index, other]
    plan = plan_eviction(entries, images, 870, lambda _: False)
    assert set(plan.images) == {image.key for image in images}
    kept = blobs_module._without(plan, images, {index.key})
    assert kept.images == (other.key,)
    assert kept.blobs == (entries[2],) and kept.freed == 290


# --- a large catalogue -------------------------------------------------------------------------


def family_missing(plan_images: set[ImageKey], catalogue: big_catalogue.Catalogue) -> bool:
    """Whether a kept index points at a forgotten child."""
    for image in catalogue.images:
        if image.key in plan_images:
            continue
        if any(ImageKey(image.key.upstream, c) in plan_images for c in image.children):
            return True
    return False


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_a_large_catalogue_is_planned_image_by_image(share: float) -> None:
    catalogue = big_catalogue.make(blobs=5_000, images=500, seed=7)
    pinned = {entry.digest for entry in catalogue.blobs[::97]}
    need = int(catalogue.total * share)
    plan = plan_eviction(catalogue.blobs, catalogue.images, need, pinned.__contains__)
    gone = {entry.digest for entry in plan.blobs}
    forgotten = set(plan.images)
    kept = [image for image in catalogue.images if image.key not in forgotten]
    assert plan.freed >= need
    assert not gone & pinned
    assert all(not image.blobs & gone for image in kept)
    assert not family_missing(forgotten, catalogue)
    newest_forgotten = max(
        (i.last_pulled for i in catalogue.images if i.key in forgotten and not i.children),
        default=0.0,
    )
    oldest_kept = min(i.last_pulled for i in kept if not i.children)
    if not any(i.children for i in catalogue.images if i.key in forgotten):
        assert newest_forgotten <= oldest_kept  # least recently pulled first


def test_the_big_catalogue_helper_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert big_catalogue.main(["2000", "200"]) == 0
    assert "2000 blobs, 220 images and indexes" in capsys.readouterr().out
