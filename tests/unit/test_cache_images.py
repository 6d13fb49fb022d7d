"""Image-aware eviction: the pure planner (``plan_eviction``), and the cache store applying it.

The store tests use ``open_cache`` as the mirror does: a tag whose image is evicted is forgotten
with it, so a cached tag never leads to missing blobs (with the upstream down, a pull then fails
at its first step instead of half-way through).
"""

from __future__ import annotations

import errno
import json
import logging
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache import Cache, RepoKey, TagState, open_cache
from docxy.cache import manifests as manifests_module
from docxy.cache.blobs import BlobEntry
from docxy.cache.images import Image, ImageKey, dependents, needs, plan_eviction
from docxy.config import load_config
from docxy.core.digests import Digest, digest_of
from docxy.http.app import create_app
from tests.unit.fakes import Body, reply
from tests.unit.test_cache_blobs import put
from tests.unit.test_cache_eviction import REGISTRY, cached_image, manifest, offered_whole
from tests.unit.test_pull_blobs import committed

UP = "u" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def d(name: str) -> Digest:
    return digest_of(name.encode())


def entry(name: str, size: int = 10, used: float = 0.0) -> BlobEntry:
    return BlobEntry(d(name), Path("/nowhere") / name, size, used)


def image(name: str, pulled: float, blobs: str = "", children: str = "") -> Image:
    return Image(
        ImageKey(UP, d(name)),
        pulled,
        frozenset(d(b) for b in blobs.split()),
        frozenset(d(c) for c in children.split()),
    )


def names(plan_items: object) -> list[str]:
    known = {d(n): n for n in "a b c x y z L1 L2 L3 shared orphan1 orphan2 I C1 C2 A B".split()}
    out = []
    for item in plan_items:  # type: ignore[attr-defined]
        out.append(known[item.digest])
    return out


def never(_: Digest) -> bool:
    return False


# --- the planner ---------------------------------------------------------------------------------


def test_orphans_go_first_least_recently_used_first() -> None:
    blobs = [entry("orphan1"), entry("a"), entry("orphan2")]
    plan = plan_eviction(blobs, [image("A", 1, "a")], 15, never)
    assert names(plan.blobs) == ["orphan1", "orphan2"]
    assert plan.images == ()
    assert plan.freed == 20


def test_then_whole_images_least_recently_pulled_first_keeping_shared_blobs() -> None:
    blobs = [entry("shared"), entry("L1"), entry("L2")]  # the shared layer is the least recent
    images = [image("B", 2, "shared L2"), image("A", 1, "shared L1")]
    plan = plan_eviction(blobs, images, 10, never)
    assert names(plan.images) == ["A"]
    assert names(plan.blobs) == ["L1"]  # not the shared layer: B still needs it
    plan = plan_eviction(blobs, images, 25, never)
    assert names(plan.images) == ["A", "B"]
    assert sorted(names(plan.blobs)) == ["L1", "L2", "shared"]


def test_an_image_with_nothing_left_to_free_is_kept() -> None:
    blobs = [entry("L1"), entry("L2")]
    images = [image("A", 1, "L1"), image("B", 2, "L2")]
    plan = plan_eviction(blobs, images, 15, lambda digest: digest == d("L2"))
    assert names(plan.images) == ["A"]  # B's only blob is being read: forgetting B frees nothing
    assert names(plan.blobs) == ["L1"]
    assert plan.freed == 10


def test_pinned_blobs_stay() -> None:
    plan = plan_eviction([entry("orphan1")], [], 5, lambda digest: True)
    assert (plan.blobs, plan.images, plan.freed) == ((), (), 0)


def test_an_index_goes_with_its_children_and_a_child_with_its_index() -> None:
    blobs = [entry("L1"), entry("L2"), entry("L3")]
    images = [
        image("I", 5, children="C1 C2"),
        image("C1", 6, "L1"),
        image("C2", 1, "L2"),  # pulled long ago, but its index was pulled recently
        image("A", 3, "L3"),
    ]
    plan = plan_eviction(blobs, images, 5, never)
    assert names(plan.images) == ["A"]  # the index family counts as pulled at 6
    plan = plan_eviction(blobs, images, 15, never)
    assert sorted(names(plan.images)) == ["A", "C1", "C2", "I"]


@pytest.mark.parametrize("seed", range(40))
def test_no_kept_image_needs_an_evicted_blob(seed: int) -> None:
    """Whatever the catalogue, the plan deletes only blobs that no image it keeps needs (the
    store relies on this: it does not re-check the kept images blob by blob)."""
    rng = random.Random(seed)
    blob_names = [f"b{i}" for i in range(12)]
    blobs = [entry(n, size=rng.randint(1, 30)) for n in blob_names]
    images = [
        image(f"m{i}", rng.random(), " ".join(rng.sample(blob_names, rng.randint(0, 4))))
        for i in range(8)
    ]
    indexes = [
        image(f"i{i}", rng.random(), children=" ".join(f"m{rng.randrange(8)}" for _ in range(2)))
        for i in range(2)
    ]
    pinned = {d(n) for n in rng.sample(blob_names, 2)}
    plan = plan_eviction(blobs, images + indexes, rng.randint(1, 200), pinned.__contains__)
    gone = {b.digest for b in plan.blobs}
    kept = [i for i in images + indexes if i.key not in set(plan.images)]
    assert not gone & pinned
    assert all(not (i.blobs & gone) for i in kept)
    assert plan.freed == sum(b.size for b in plan.blobs)


def test_dependents_of_a_blob_include_the_indexes_above() -> None:
    images = [image("I", 5, children="C1 C2"), image("C1", 6, "L1"), image("C2", 6, "L2")]
    assert sorted(names(dependents(d("L1"), images))) == ["C1", "I"]
    assert dependents(d("x"), images) == []


def test_needs_reads_configs_layers_and_children() -> None:
    manifest = {
        "config": {"digest": str(d("x"))},
        "layers": [{"digest": str(d("y"))}, {"digest": "bogus"}, "junk"],
    }
    assert needs(json.dumps(manifest).encode()) == (frozenset({d("x"), d("y")}), frozenset())
    index = {"manifests": [{"digest": str(d("z"))}]}
    assert needs(json.dumps(index).encode()) == (frozenset(), frozenset({d("z")}))
    assert needs(b"not json") == (frozenset(), frozenset())


def test_needs_leaves_out_what_no_registry_checked_on_push() -> None:
    """A foreign layer (``urls``) and a ``blobs`` list: a manifest would pair them with its
    repository unchecked. An index's child with ``urls`` is still its child (eviction keeps
    an index from outliving its platforms)."""
    foreign = {"digest": str(d("f")), "urls": ["https://cdn.example/f"]}
    manifest = {
        "config": {"digest": str(d("x"))},
        "layers": [{"digest": str(d("y"))}, foreign],
        "blobs": [{"digest": str(d("b"))}],
    }
    assert needs(json.dumps(manifest).encode()) == (frozenset({d("x"), d("y")}), frozenset())
    index = {"manifests": [{"digest": str(d("z")), "urls": ["https://cdn.example/z"]}]}
    assert needs(json.dumps(index).encode()) == (frozenset(), frozenset({d("z")}))


# --- the cache store ---------------------------------------------------------------------------

MiB = 1024 * 1024
CAP = 4 * MiB  # room for two 1 MiB images and a 2 MiB one, less their configs


def layer(name: str, size: int = MiB) -> bytes:
    return (name.encode() * size)[:size]


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return open_cache(tmp_path / "cache", max_size=CAP, tag_ttl=300)


async def test_a_cached_tag_always_has_all_its_blobs_under_eviction(cache: Cache) -> None:
    old = await cached_image(cache, "team/old", [layer("cfg-old", 1024), layer("old-layer")])
    new = await cached_image(cache, "team/new", [layer("cfg-new", 1024), layer("new-layer")])
    # A third image that needs room: the least recently pulled image must go, whole.
    third = await cached_image(
        cache, "team/third", [layer("cfg-3", 1024), layer("big-1"), layer("big-2")]
    )
    states = {r.repo: await offered_whole(cache, r) for r in (old, new, third)}
    assert states == {"team/old": None, "team/new": True, "team/third": True}
    assert cache.blobs.usage().bytes <= CAP


async def test_the_least_recently_pulled_image_goes_first(cache: Cache) -> None:
    first = await cached_image(cache, "team/first", [layer("cfg-1", 1024), layer("l-1")])
    second = await cached_image(cache, "team/second", [layer("cfg-2", 1024), layer("l-2")])
    assert await offered_whole(cache, first)  # pulled again: now the second is the older
    await cached_image(cache, "team/third", [layer("cfg-3", 1024), layer("l-3"), layer("l-3b")])
    assert await offered_whole(cache, first) is True
    assert await offered_whole(cache, second) is None


async def test_a_layer_shared_with_a_kept_image_is_kept(cache: Cache) -> None:
    shared = layer("shared-base", 2 * MiB)
    old = await cached_image(cache, "team/old", [layer("cfg-old", 1024), shared, layer("o")])
    new = await cached_image(cache, "team/new", [layer("cfg-new", 1024), shared])
    await cached_image(cache, "team/more", [layer("cfg-m", 1024), layer("m-1")])
    assert await offered_whole(cache, old) is None
    assert await offered_whole(cache, new) is True
    assert cache.blobs.lookup(digest_of(shared)) is not None


async def test_a_blob_removed_by_hand_takes_its_images_out_of_the_cache(cache: Cache) -> None:
    gone = layer("removed")
    repo = await cached_image(cache, "team/app", [layer("cfg", 1024), gone])
    assert await offered_whole(cache, repo) is True
    assert cache.blobs.remove(digest_of(gone))
    assert await offered_whole(cache, repo) is None


async def test_a_blob_gone_behind_our_back_takes_its_images_out_of_the_cache(
    cache: Cache,
) -> None:
    """Its file deleted by something else, found gone at the next use: the image that needs
    it is no longer offered (with the upstream down, a pull fails at its first step)."""
    gone = layer("removed")
    repo = await cached_image(cache, "team/app", [layer("cfg", 1024), gone])
    entry = cache.blobs.lookup(digest_of(gone))
    assert entry is not None
    entry.path.unlink()
    assert cache.blobs.lookup(digest_of(gone)) is None
    assert await offered_whole(cache, repo) is None


async def test_an_image_pulled_again_after_a_cache_rm_beside_the_mirror_is_kept_whole(
    tmp_path: Path,
) -> None:
    """``docxy cache rm --blobs`` (another process, its own view of the cache) removed an
    image and its layer; the next pull stores the manifest again, then finds the layer gone
    and fetches it: the image is cached whole, not its blobs without its manifest."""
    root = tmp_path / "cache"
    mirror = open_cache(root, max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 1024), layer("removed")]
    repo = await cached_image(mirror, "team/app", layers)
    assert await offered_whole(mirror, repo) is True
    command = open_cache(root, max_size=CAP, tag_ttl=300)
    assert command.blobs.remove(digest_of(layers[1]))  # its images go with it, on disk
    assert (await mirror.manifests.resolve_tag(repo, "latest")).state is TagState.MISSING
    await cached_image(mirror, "team/app", layers)  # the pull: manifest first, then blobs
    assert await offered_whole(mirror, repo) is True
    restarted = open_cache(root, max_size=CAP, tag_ttl=300)
    assert await offered_whole(restarted, repo) is True


async def test_a_multi_arch_image_pulled_again_after_a_cache_rm_is_kept_whole(
    tmp_path: Path,
) -> None:
    """As below, for an index: a pull stores the index (and its tag) first, then its
    platform's manifest, then the blobs. The index's store drops the removed layer (its
    platform's), so the platform's does not forget the index just stored (before: the tag
    was gone after the pull)."""
    root = tmp_path / "cache"
    mirror = open_cache(root, max_size=CAP, tag_ttl=300)
    layers = [layer("cfg", 1024), layer("removed")]
    repo = await cached_index(mirror, "team/app", layers)
    assert await offered_whole(mirror, repo) is True
    command = open_cache(root, max_size=CAP, tag_ttl=300)
    assert command.blobs.remove(digest_of(layers[1]))
    await cached_index(mirror, "team/app", layers)
    assert (await mirror.manifests.resolve_tag(repo, "latest")).state is TagState.FRESH
    restarted = open_cache(root, max_size=CAP, tag_ttl=300)
    assert (await restarted.manifests.resolve_tag(repo, "latest")).state is TagState.FRESH


async def cached_index(cache: Cache, repo: str, layers: list[bytes]) -> RepoKey:
    """A pull of a one-platform image through the mirror: index and tag, the platform's
    manifest, then the blobs."""
    key = RepoKey(REGISTRY, repo)
    platform = manifest(layers)
    child = {"mediaType": OCI_MANIFEST, "digest": str(digest_of(platform)), "size": len(platform)}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]})
    stored = await cache.manifests.put(key, index.encode(), OCI_INDEX, public=True)
    await cache.manifests.set_tag(key, "latest", stored.digest, public=True)
    await cache.manifests.put(key, platform, OCI_MANIFEST, public=True)
    for data in layers:
        if cache.blobs.lookup(digest_of(data)) is None:
            await put(cache.blobs, data)
    return key


async def test_a_new_image_on_a_layer_removed_beside_the_mirror_is_cached_whole(
    tmp_path: Path,
) -> None:
    """The layer went with another image (``docxy cache rm --blobs`` in another process): a
    first pull of an image on the same layer stores its manifest, fetches the layer, and is
    cached whole (before, the layer found gone took the new manifest along)."""
    root = tmp_path / "cache"
    mirror = open_cache(root, max_size=CAP, tag_ttl=300)
    base = layer("base")
    await cached_image(mirror, "team/old", [layer("cfg-old", 1024), base])
    command = open_cache(root, max_size=CAP, tag_ttl=300)
    assert command.blobs.remove(digest_of(base))
    new = await cached_image(mirror, "team/new", [layer("cfg-new", 1024), base])
    assert await offered_whole(mirror, new) is True


async def test_an_image_stored_again_still_goes_when_its_layer_goes_later(cache: Cache) -> None:
    """A second tag of a cached image stores its manifest again, and its client asks for no
    layer (it has them): a layer deleted by hand after that still takes the image out."""
    gone = layer("removed")
    layers = [layer("cfg", 1024), gone]
    repo = await cached_image(cache, "team/app", layers)
    stored = await cache.manifests.put(repo, manifest(layers), OCI_MANIFEST, public=True)
    await cache.manifests.set_tag(repo, "v1", stored.digest, public=True)
    cache.blobs.path_of(digest_of(gone)).unlink()  # not used since the second tag came
    assert cache.blobs.lookup(digest_of(gone)) is None
    assert await offered_whole(cache, repo, "v1") is None


def refused(path: Any) -> None:
    raise OSError(errno.EROFS, "Read-only file system", str(path))


async def test_an_eviction_whose_manifests_the_disk_keeps_keeps_their_blobs(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The manifests' folder refuses deletes (another owner's), the blobs' does not: the
    eviction stops before any blob of those images goes (they would be back at the next
    start without it), in one WARNING line (it was a crashed task's traceback, and once the
    blobs deleted)."""
    layers = [layer("cfg", 1024), layer("only")]
    await cached_image(cache, "team/app", layers)
    monkeypatch.setattr(manifests_module, "unlink_quietly", refused)
    caplog.set_level(logging.INFO, logger="docxy")
    cache.blobs.max_size = 1024  # everything must go
    for _ in range(2):  # the next eviction too: the images are offered again, as on disk
        cache.blobs._start_eviction()
        await cache.blobs.settle()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m.split(":")[0:2] for m in said] == [["cache", " eviction stopped"]], said
    assert all(cache.blobs.path_of(digest_of(data)).is_file() for data in layers)
    assert await offered_whole(cache, RepoKey(REGISTRY, "team/app")) is True


async def test_a_blob_found_gone_on_a_disk_that_keeps_its_manifests_is_a_miss_not_an_error(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gone = layer("removed")
    repo = await cached_image(cache, "team/app", [layer("cfg", 1024), gone])
    cache.blobs.path_of(digest_of(gone)).unlink()
    monkeypatch.setattr(manifests_module, "unlink_quietly", refused)
    caplog.set_level(logging.WARNING, logger="docxy")
    assert cache.blobs.lookup(digest_of(gone)) is None  # raised: the request's 500
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cannot delete the manifests that need it" in said[0], said
    assert await offered_whole(cache, repo) is None


async def test_the_catalogue_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = open_cache(root, max_size=CAP, tag_ttl=300)
    old = await cached_image(cache, "team/old", [layer("cfg-old", 1024), layer("old-layer")])
    new = await cached_image(cache, "team/new", [layer("cfg-new", 1024), layer("new-layer")])
    cache = open_cache(root, max_size=CAP, tag_ttl=300)  # a restart: read back from disk
    await cached_image(cache, "team/third", [layer("cfg-3", 1024), layer("l-3"), layer("l-3b")])
    assert await offered_whole(cache, old) is None
    assert await offered_whole(cache, new) is True


# --- through the mirror: with the upstream down, a pull never fails half-way ----------------


class Registry:
    """An upstream without auth holding a few single-platform images; ``down`` answers 503."""

    def __init__(self) -> None:
        self.down = False
        self.files: dict[str, tuple[bytes, str]] = {}

    def add(self, repo: str, layers: list[bytes]) -> None:
        for data in layers:
            self.files[f"/v2/{repo}/blobs/{digest_of(data)}"] = (data, "application/octet-stream")
        body = manifest(layers)
        self.files[f"/v2/{repo}/manifests/latest"] = (body, OCI_MANIFEST)
        self.files[f"/v2/{repo}/manifests/{digest_of(body)}"] = (body, OCI_MANIFEST)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return reply(503, b'{"errors": [{"code": "UNAVAILABLE"}]}')
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        found = self.files.get(request.url.path)
        if found is None:
            return reply(404, b'{"errors": [{"code": "NOT_FOUND"}]}')
        body, media_type = found
        headers = {"Content-Type": media_type, "Docker-Content-Digest": str(digest_of(body))}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return httpx.Response(200, headers=headers, stream=Body())
        return reply(200, body, headers, length=True)


async def pull(client: Any, repo: str) -> list[int]:
    """Status of the manifest GET, then of every blob GET it leads to (none if it failed)."""
    accept = {"Accept": OCI_MANIFEST}
    manifest = await client.get(f"/v2/{repo}/manifests/latest", headers=accept)
    statuses = [manifest.status_code]
    if manifest.status_code == 200:
        doc = json.loads(await manifest.get_data())
        for descriptor in [doc["config"], *doc["layers"]]:
            blob = await client.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
            await blob.get_data()
            statuses.append(blob.status_code)
    return statuses


async def test_with_the_upstream_down_an_evicted_image_fails_at_its_first_step(
    tmp_path: Path,
) -> None:
    registry = Registry()
    for name in ("one", "two", "three"):
        registry.add(
            f"team/{name}", [layer(f"cfg-{name}", 1024), layer(f"layer-{name}", 3 * MiB // 2)]
        )
    overrides = {
        "upstream.registry": "https://registry.test",
        "server.public_url": "https://mirror.test",
        "cache.dir": str(tmp_path / "cache"),
        "cache.max_size": str(CAP),
    }
    config = load_config(overrides, environ={})
    app = create_app(config, probe=False, transport=httpx.MockTransport(registry))
    async with app.test_app():
        client = app.test_client()
        for name in ("one", "two", "three"):  # room for two: "one" is evicted
            assert await pull(client, f"team/{name}") == [200, 200, 200]
            await committed(app)  # the blobs' commits, and the evictions they lead to
        registry.down = True
        evicted = await pull(client, "team/one")
        assert evicted[0] >= 500 and len(evicted) == 1, f"a pull failed half-way: {evicted}"
        assert await pull(client, "team/three") == [200, 200, 200]  # still whole, from cache
