"""ManifestStore: manifests by digest, tags with a TTL, per upstream, on disk across restarts."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import manifests as manifests_module
from docxy.cache.errors import DigestMismatch
from docxy.cache.manifests import (
    ORPHAN_AGE,
    ManifestStore,
    TagEntry,
    TagResolution,
    TagState,
    referenced_digests,
)
from docxy.cache.visibility import AccessIndex, RepoKey, Visibility, upstream_key
from docxy.config import load_config
from docxy.core.digests import digest_of
from docxy.http.app import open_store as open_store_of
from docxy.tasks import spawn

HUB = "registry-1.docker.io"
ALPINE = RepoKey(HUB, "library/alpine")
OTHER = RepoKey(HUB, "library/busybox")
MIRROR_ALPINE = RepoKey("mirror.example", "library/alpine")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def manifest_bytes(n: int) -> bytes:
    layer = {"mediaType": "x", "digest": str(digest_of(b"layer%d" % n)), "size": 6}
    config = {"mediaType": "c", "digest": str(digest_of(b"config%d" % n)), "size": 7}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    return json.dumps(doc).encode()


def open_store(root: Path, clock: Clock) -> ManifestStore:
    return ManifestStore.open(
        root / "manifests", AccessIndex(root / "access"), tag_ttl=TTL, clock=clock
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ManifestStore:
    return open_store(tmp_path, clock)


async def test_put_get_round_trip(store: ManifestStore) -> None:
    content = manifest_bytes(1)
    stored = await store.put(ALPINE, content, OCI_MANIFEST, public=True)
    assert stored.digest == digest_of(content)
    got = await store.get(ALPINE, stored.digest)
    assert got is not None
    assert (got.content, got.media_type) == (content, OCI_MANIFEST)
    assert got.visibility is not None and got.visibility.public


async def test_put_rejects_wrong_digest(store: ManifestStore) -> None:
    content = manifest_bytes(1)
    claimed = digest_of(b"something else")
    with pytest.raises(DigestMismatch):
        await store.put(ALPINE, content, OCI_MANIFEST, public=True, digest=claimed)
    assert await store.get(ALPINE, claimed) is None
    assert await store.get(ALPINE, digest_of(content)) is None


async def test_upstreams_never_mix(store: ManifestStore) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "3.20", stored.digest, public=True)
    assert await store.get(MIRROR_ALPINE, stored.digest) is None
    assert (await store.resolve_tag(MIRROR_ALPINE, "3.20")).state is TagState.MISSING


async def test_visibility_is_per_repository(store: ManifestStore) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=False)
    in_alpine = await store.get(ALPINE, stored.digest)
    in_other = await store.get(OTHER, stored.digest)
    assert in_alpine is not None and in_alpine.visibility is not None
    assert not in_alpine.visibility.public
    assert in_other is not None and in_other.visibility is None  # bytes cached, never seen there


async def test_tag_fresh_then_stale_then_revalidated(store: ManifestStore, clock: Clock) -> None:
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.MISSING
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    entry = await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    assert entry.fetched_at == clock.now

    fresh = await store.resolve_tag(ALPINE, "latest")
    assert fresh.state is TagState.FRESH
    assert fresh.manifest is not None and fresh.manifest.content == manifest_bytes(1)
    assert fresh.visibility is not None and fresh.visibility.public

    clock.now += TTL - 1
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.FRESH
    clock.now += 1
    stale = await store.resolve_tag(ALPINE, "latest")
    assert stale.state is TagState.STALE
    assert stale.manifest == fresh.manifest  # still servable if the upstream is down

    # An upstream HEAD confirmed the digest: fresh again for another TTL, no GET needed.
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.FRESH


async def test_tag_moves_to_new_digest(store: ManifestStore) -> None:
    first = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    second = await store.put(ALPINE, manifest_bytes(2), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", first.digest, public=True)
    await store.set_tag(ALPINE, "latest", second.digest, public=True)
    resolved = await store.resolve_tag(ALPINE, "latest")
    assert resolved.entry is not None and resolved.entry.digest == second.digest
    assert await store.get(ALPINE, first.digest) is not None  # by digest: immutable, kept


async def test_clock_going_backwards_is_stale(store: ManifestStore, clock: Clock) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    clock.now -= 10
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.STALE


async def test_tag_without_its_manifest_is_missing(store: ManifestStore) -> None:
    await store.set_tag(ALPINE, "latest", digest_of(b"never stored"), public=True)
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.MISSING


async def test_public_tag_not_downgraded_by_private_confirmation(store: ManifestStore) -> None:
    first = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", first.digest, public=True)
    await store.set_tag(ALPINE, "latest", first.digest, public=False)
    resolved = await store.resolve_tag(ALPINE, "latest")
    assert resolved.visibility is not None and resolved.visibility.public
    # A different digest seen only with a client's credentials is private.
    second = await store.put(ALPINE, manifest_bytes(2), OCI_MANIFEST, public=False)
    await store.set_tag(ALPINE, "latest", second.digest, public=False)
    resolved = await store.resolve_tag(ALPINE, "latest")
    assert resolved.visibility is not None and not resolved.visibility.public


async def test_forget_and_list_tags(store: ManifestStore, clock: Clock) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "a", stored.digest, public=True)
    clock.now += 1
    await store.set_tag(OTHER, "b", stored.digest, public=False)
    assert [(e.repo, e.tag) for e in store.list_tags()] == [(ALPINE, "a"), (OTHER, "b")]
    assert await store.forget_tag(ALPINE, "a")
    assert not await store.forget_tag(ALPINE, "a")
    assert (await store.resolve_tag(ALPINE, "a")).state is TagState.MISSING
    assert [e.tag for e in store.list_tags()] == ["b"]


async def test_survives_restart(tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path, clock)
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=False)
    await store.set_tag(ALPINE, "latest", stored.digest, public=False)
    leftover = store.root / "tmp" / "crashed-write.123"
    leftover.write_bytes(b"{half")

    reopened = open_store(tmp_path, clock)
    assert not leftover.exists()
    resolved = await reopened.resolve_tag(ALPINE, "latest")
    assert resolved.state is TagState.FRESH
    assert resolved.manifest is not None and resolved.manifest.content == manifest_bytes(1)
    assert resolved.visibility is not None and not resolved.visibility.public


async def test_corrupt_manifest_on_disk_is_never_served(store: ManifestStore) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    files = [p for p in (store.root / "by-digest").rglob("*") if p.is_file()]
    content_file = next(p for p in files if p.suffix != ".json")
    content_file.write_bytes(manifest_bytes(2))  # bit rot, or a torn write by another tool

    assert await store.get(ALPINE, stored.digest) is None
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.MISSING
    assert not content_file.exists()


@pytest.mark.parametrize("errno_", [errno.EMFILE, errno.ENOMEM, errno.EIO])
async def test_a_manifest_that_cannot_be_read_now_is_a_miss_and_kept(
    store: ManifestStore, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    files = sorted(p for p in (store.root / "by-digest").rglob("*") if p.is_file())
    read_bytes = Path.read_bytes

    def failing(path: Path) -> bytes:
        if path in files:
            raise OSError(errno_, os.strerror(errno_))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    assert await store.get(ALPINE, stored.digest) is None
    monkeypatch.setattr(Path, "read_bytes", read_bytes)

    assert sorted(p for p in (store.root / "by-digest").rglob("*") if p.is_file()) == files
    again = await store.get(ALPINE, stored.digest)
    assert again is not None and again.content == manifest_bytes(1)
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.FRESH


async def test_content_without_metadata_is_missing(store: ManifestStore) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    meta = next(p for p in (store.root / "by-digest").rglob("*.json"))
    os.unlink(meta)  # killed between writing the content and its metadata
    assert await store.get(ALPINE, stored.digest) is None


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"digest": "sha256:zz"}'])
async def test_corrupt_tag_record_is_missing(store: ManifestStore, garbage: bytes) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    (tag_file,) = (store.root / "tags").glob("*.json")
    tag_file.write_bytes(garbage)
    assert (await store.resolve_tag(ALPINE, "latest")).state is TagState.MISSING
    assert store.list_tags() == []


async def test_tag_record_of_another_key_is_not_used(store: ManifestStore) -> None:
    stored = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "latest", stored.digest, public=True)
    (alpine_file,) = (store.root / "tags").glob("*.json")
    await store.set_tag(OTHER, "latest", stored.digest, public=True)
    other_file = next(p for p in (store.root / "tags").glob("*.json") if p != alpine_file)
    other_file.write_bytes(alpine_file.read_bytes())  # as if two keys hashed alike
    assert (await store.resolve_tag(OTHER, "latest")).state is TagState.MISSING


def test_referenced_digests() -> None:
    layer = digest_of(b"layer1")
    config = digest_of(b"config1")
    assert referenced_digests(manifest_bytes(1)) == [config, layer]
    child = digest_of(b"child")
    index = {"manifests": [{"digest": str(child)}, {"digest": "bogus"}, {"digest": str(child)}]}
    assert referenced_digests(json.dumps(index).encode()) == [child]
    assert referenced_digests(b"not json") == []
    assert referenced_digests(b"[1, 2]") == []
    assert referenced_digests(b'{"layers": "nope", "config": 3}') == []
    # a field no cached manifest type has is not what the image is made of
    stray = json.loads(manifest_bytes(1)) | {"blobs": [{"digest": str(child)}]}
    assert referenced_digests(json.dumps(stray).encode()) == [config, layer]


# --- an upstream keyed by an earlier spelling (a written default port, before docxy.core.hosts)


GHCR_OLD = RepoKey("ghcr.io:443", "org/app")  # Upstream.host of https://ghcr.io:443 until 29ab523
GHCR = RepoKey("ghcr.io", "org/app")  # ...and since


#: A registry URL as written in the settings → the cache's key of it until 29ab523 (its
#: netloc as written), now ``ghcr.io`` for each.
WRITTEN = {
    "https://ghcr.io:443": "ghcr.io:443",
    "https://GHCR.io": "GHCR.io",
    "https://GHCR.io:443/": "GHCR.io:443",
}


@pytest.mark.parametrize(("url", "earlier"), WRITTEN.items())
async def test_an_upgrade_finds_what_was_cached_under_the_url_as_written(
    tmp_path: Path, clock: Clock, url: str, earlier: str
) -> None:
    """The registry written ``https://ghcr.io:443`` (or ``https://GHCR.io``): its manifests
    and tags were keyed by ``ghcr.io:443`` (``GHCR.io``), now by ``ghcr.io``, and were all
    fetched once more after the upgrade. Capitals are not in the settings' URL any longer
    (lower-cased when read): the cache's own records name them. Before, a registry written
    in capitals was not moved (its tags MISSING)."""
    clock.now = time.time()  # the mirror's store keeps the real clock
    old = open_store(tmp_path, clock)
    content = manifest_bytes(1)
    key = RepoKey(earlier, GHCR.repo)
    stored = await old.put(key, content, OCI_MANIFEST, public=True)
    await old.set_tag(key, "v1", stored.digest, public=True)
    await old.loaded()
    config = load_config({"upstream.registry": url, "cache.dir": str(tmp_path)}, environ={})
    new = open_store_of(config).manifests  # the mirror's: given the upstreams' URLs
    resolved = await new.resolve_tag(GHCR, "v1")
    assert resolved.state is TagState.FRESH
    assert resolved.manifest is not None and resolved.manifest.content == content
    assert resolved.visibility == Visibility(GHCR, public=True)  # served to anonymous clients
    got = await new.get(GHCR, stored.digest)
    assert got is not None and got.visibility == Visibility(GHCR, public=True)
    await new.loaded()
    assert [image.key.upstream for image in new.images()] == [upstream_key("ghcr.io")]
    assert await new.resolve_tag(key, "v1") == TagResolution(TagState.MISSING)
    assert [e.repo for e in new.list_tags()] == [GHCR]


async def test_a_tag_fetched_again_since_the_upgrade_is_kept(tmp_path: Path, clock: Clock) -> None:
    """A mirror that ran after the upgrade without the move: what it fetched is the newer."""
    store = open_store(tmp_path, clock)
    first, second = manifest_bytes(1), manifest_bytes(2)
    old = await store.put(GHCR_OLD, first, OCI_MANIFEST, public=True)
    await store.set_tag(GHCR_OLD, "v1", old.digest, public=True)
    clock.now += 10
    again = await store.put(GHCR, second, OCI_MANIFEST, public=True)
    await store.set_tag(GHCR, "v1", again.digest, public=True)
    await store.put(GHCR, first, OCI_MANIFEST, public=False)  # already there, privately
    await store.loaded()
    moved = ManifestStore.open(
        tmp_path / "manifests",
        AccessIndex(tmp_path / "access"),
        tag_ttl=TTL,
        clock=clock,
        registries=["https://ghcr.io"],
    )
    resolved = await moved.resolve_tag(GHCR, "v1")
    assert resolved.manifest is not None and resolved.manifest.content == second
    kept = await moved.get(GHCR, old.digest)
    assert kept is not None and kept.visibility == Visibility(GHCR, public=True)
    assert not (tmp_path / "manifests" / "by-digest" / upstream_key("ghcr.io:443")).exists()


# --- tag records noted for a manifest that never came --------------------------------------


def tag_names(store: ManifestStore) -> list[str]:
    return sorted(entry.tag for entry in store.list_tags())


async def test_a_tag_noted_for_a_manifest_never_cached_is_deleted_once_an_hour_old(
    store: ManifestStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A HEAD notes ``noted``; its GET by digest never comes (the client had the image). The
    tag of a cached manifest stays however old it is."""
    cached = await store.put(ALPINE, manifest_bytes(1), OCI_MANIFEST, public=True)
    await store.set_tag(ALPINE, "kept", cached.digest, public=True)
    await store.set_tag(ALPINE, "noted", digest_of(b"never stored"), public=True)
    clock.now += ORPHAN_AGE - 1
    await store.set_tag(OTHER, "young", digest_of(b"never stored either"), public=True)
    assert await store.sweep_tags() == 0
    assert tag_names(store) == ["kept", "noted", "young"]
    clock.now += 1
    caplog.set_level(logging.INFO, logger="docxy")
    assert await store.sweep_tags() == 1
    assert tag_names(store) == ["kept", "young"]
    said = [r.getMessage() for r in caplog.records if "tag record" in r.getMessage()]
    assert said == ["cache: deleted 1 tag record(s) older than 3600 s whose manifest is not cached"]
    assert (await store.resolve_tag(ALPINE, "kept")).manifest == await store.get(
        ALPINE, cached.digest
    )
    # Noted again by the next HEAD: a new record, deleted in its turn.
    await store.set_tag(ALPINE, "noted", digest_of(b"never stored"), public=True)
    assert tag_names(store) == ["kept", "noted", "young"]


async def test_noting_a_tag_an_hour_after_the_last_look_deletes_the_old_notes(
    tmp_path: Path, clock: Clock
) -> None:
    """No call from outside: writing a tag record starts the look, in the background, at most
    once an hour (the first an hour after the start, a restart's too)."""
    store = open_store(tmp_path, clock)
    await store.set_tag(ALPINE, "early", digest_of(b"never stored"), public=True)
    clock.now += ORPHAN_AGE / 2
    await store.set_tag(ALPINE, "halfway", digest_of(b"nor this"), public=True)
    await sweeps_done()
    assert tag_names(store) == ["early", "halfway"]  # no look yet
    clock.now += ORPHAN_AGE / 2
    await store.set_tag(OTHER, "hour", digest_of(b"nor that"), public=True)
    await sweeps_done()
    assert tag_names(store) == ["halfway", "hour"]  # "early" was an hour old
    clock.now += ORPHAN_AGE / 2 + 1  # "halfway" is an hour old, the last look was not
    await store.set_tag(OTHER, "later", digest_of(b"nor these"), public=True)
    await sweeps_done()
    assert tag_names(store) == ["halfway", "hour", "later"]
    store = open_store(tmp_path, clock)  # restarted: its first look an hour from now
    await store.set_tag(OTHER, "restarted", digest_of(b"nor those"), public=True)
    await sweeps_done()
    assert tag_names(store) == ["halfway", "hour", "later", "restarted"]
    clock.now += ORPHAN_AGE
    await store.set_tag(OTHER, "last", digest_of(b"nor any"), public=True)
    await sweeps_done()
    assert tag_names(store) == ["last"]


async def sweeps_done() -> None:
    """Wait for the looks (and their deletes) that writing a tag record started."""
    sweeping = [t for t in asyncio.all_tasks() if t.get_name().startswith("cache: ")]
    await asyncio.gather(*sweeping)


async def test_a_note_written_while_the_sweep_reads_the_records_is_kept(
    store: ManifestStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep found ``noted`` old, in its thread; meanwhile the next HEAD noted it again
    (or its manifest came, for ``got``): neither is deleted."""
    await store.set_tag(ALPINE, "noted", digest_of(b"never stored"), public=True)
    await store.set_tag(ALPINE, "got", digest_of(manifest_bytes(3)), public=True)
    clock.now += ORPHAN_AGE
    reading, go = threading.Event(), threading.Event()
    real = manifests_module._written_before

    def held(paths: Any, cutoff: float) -> list[Path]:
        found = real(paths, cutoff)
        reading.set()
        go.wait(10)
        return found

    monkeypatch.setattr(manifests_module, "_written_before", held)
    sweeping = spawn("sweep", store.sweep_tags())
    assert await asyncio.to_thread(reading.wait, 10)
    await store.set_tag(ALPINE, "noted", digest_of(b"never stored"), public=True)
    await store.put(ALPINE, manifest_bytes(3), OCI_MANIFEST, public=True)
    go.set()
    assert await sweeping == 0
    assert tag_names(store) == ["got", "noted"]
    assert (await store.resolve_tag(ALPINE, "got")).manifest is not None  # stale, not gone


async def test_a_note_being_written_when_the_sweep_starts_is_kept(
    store: ManifestStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next HEAD notes ``noted`` again, on a slow disk: its write is under way when the
    sweep starts and done while the sweep reads the old record. The new one stays."""
    digest = digest_of(b"never stored")
    await store.set_tag(ALPINE, "noted", digest, public=True)
    clock.now += ORPHAN_AGE
    writing, write_go, read_go = threading.Event(), threading.Event(), threading.Event()
    real_write, real_read = store._write_tag, manifests_module._written_before

    def slow_write(entry: TagEntry) -> None:
        writing.set()
        write_go.wait(10)
        real_write(entry)

    def held_read(paths: Any, cutoff: float) -> list[Path]:
        found = real_read(paths, cutoff)  # the old record, still there
        write_go.set()
        read_go.wait(10)  # until the note is written
        return found

    monkeypatch.setattr(store, "_write_tag", slow_write)
    monkeypatch.setattr(manifests_module, "_written_before", held_read)
    noting = spawn("note", store.set_tag(ALPINE, "noted", digest, public=True))
    assert await asyncio.to_thread(writing.wait, 10)
    sweeping = spawn("sweep", store.sweep_tags())
    assert (await noting).fetched_at == clock.now
    read_go.set()
    assert await sweeping == 0
    assert tag_names(store) == ["noted"]
