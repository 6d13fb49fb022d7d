"""Faults a review found in the full-disk eviction and the start-up length check (7a17651,
57006fc): an ENOSPC while the blob index was still read at start wiped the cache; one for a
blob as large as the cache did too; the WARNING of a cap over the disk made tests depend on the
host's disk; a verified blob was dropped for a cached manifest's wrong descriptor size; a HEAD
right after start answered the length of a blob the check was dropping; a failed start-up read
left "Future exception was never retrieved"; the over-the-cap WARNING mixed two figures."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache import Cache, RepoKey, digest_of, open_cache
from docxy.cache import blobs as blobs_module
from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore, Walked, file_system_size
from docxy.cache.fill import BlobWriter
from docxy.cache.manifests import ManifestStore
from docxy.cache.pairings import BlobPairings
from docxy.core.names import Kind, Reference
from docxy.pull.blobs import BlobService
from docxy.pull.outcome import Pull, Served
from docxy.tasks import spawn
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit import fakes
from tests.unit.test_cache_blobs import as_writer, blob, guard, make_store, put
from tests.unit.test_cachecli import HOST, OCI_MANIFEST, _descriptor
from tests.unit.test_review_cache6 import SIZE, full_store

pytestmark = pytest.mark.asyncio


def slow_walk(release: threading.Event) -> Any:
    real = DiskBlobStore._walk

    def walk(store: DiskBlobStore, *, strict: bool = False) -> Walked:
        release.wait(10)
        return real(store, strict=strict)

    return walk


# --- 1, 2: a full-disk eviction takes a tenth of the cache at most --------------------------


async def test_enospc_while_the_index_is_read_evicts_a_tenth_not_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_store(tmp_path)
    digests = [await put(first, blob(SIZE, i)) for i in range(20)]
    release = threading.Event()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DiskBlobStore, "_walk", slow_walk(release))
        store = make_store(tmp_path)  # a restart: the index is read in a thread
    try:
        assert store.lookup(digests[-1]) is not None  # one hit meanwhile: 1000 bytes known
        real_open = os.open
        tmp = str(store.tmp_dir)

        def full_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if flags & os.O_CREAT and str(path).startswith(tmp):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", full_open)
        store._start_fill(digest_of(blob(SIZE, 100)))  # as fetch_or_join does for a miss
        monkeypatch.undo()
    finally:
        release.set()
    await guard(store.indexed())
    await guard(store.settle())
    left = store.usage().bytes
    assert 18 * SIZE <= left < 20 * SIZE, f"{left} of {20 * SIZE} bytes left"


async def test_enospc_for_a_blob_as_large_as_the_cache_evicts_a_tenth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = await full_store(tmp_path)  # 10 blobs of 1000, a 1 GiB cap
    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(0))
    data = blob(20 * SIZE, 999)  # larger than the whole cache
    writer = await as_writer(store, digest_of(data))
    async with writer:
        writer.announce(len(data))
        await writer.write(data)
        await writer.commit(len(data))
    monkeypatch.undo()
    await guard(store.settle())
    assert store.usage().bytes == 9 * SIZE, "more than a tenth evicted"


# --- 3: the unit tests do not depend on the host's disk size ------------------------------


async def test_a_small_host_disk_does_not_warn_in_unit_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The conftest makes every file system look large: a 4 GiB /tmp (tmpfs on a small
    machine) under the default 20G cap gave 27 tests an extra WARNING."""
    real = os.statvfs

    def small(path: Any) -> os.statvfs_result:
        st = real(path)
        blocks = (4 << 30) // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, blocks, *st[3:]))

    monkeypatch.setattr(os, "statvfs", small)
    caplog.set_level(logging.WARNING, logger="docxy.cache")
    open_cache(tmp_path, max_size=20 << 30, tag_ttl=300)
    assert not [r for r in caplog.records if "max_size" in r.getMessage()]


async def test_the_file_system_size_is_read_with_statvfs(tmp_path: Path) -> None:
    """(The reader itself, imported before the conftest made it say a large disk.)"""
    fs = os.statvfs(tmp_path)
    assert blobs_module.file_system_size is not file_system_size  # (the conftest's)
    assert file_system_size(tmp_path) == fs.f_blocks * fs.f_frsize


# --- 4: the start-up length check drops no verified blob --------------------------------

LAYER = b"layer " * 200
CFG_GOOD = b'{"good": 1}'
CFG_EVIL = b'{"evil": 1}'


def manifest(cfg: bytes, layer_size: int) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(digest_of(cfg), len(cfg), "application/json"),
        "layers": [_descriptor(digest_of(LAYER), layer_size, "x/layer")],
    }
    return json.dumps(doc).encode()


async def put_blob(cache: Any, content: bytes) -> None:
    writer = await cache.blobs.fetch_or_join(digest_of(content))
    assert isinstance(writer, BlobWriter)
    async with writer:
        await writer.write(content)
        assert await writer.commit(len(content)) is not None


async def first_run(root: Path, *, layer: bool = True) -> None:
    """A cached image whose manifest gives the shared layer a wrong size (an upstream that
    does not check descriptor sizes)."""
    cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
    for content in (LAYER, CFG_EVIL) if layer else (CFG_EVIL,):
        await put_blob(cache, content)
    evil = manifest(CFG_EVIL, len(LAYER) + 1)
    await cache.manifests.put(RepoKey(HOST, "evil/img"), evil, OCI_MANIFEST, public=True)
    await cache.blobs.commits_done()


def slow_scan(release: threading.Event) -> Any:
    real = ManifestStore._scan

    def scan(self: ManifestStore) -> Any:
        result = real(self)  # read before the good image is stored (a large catalogue)
        release.wait(10)
        return result

    return scan


def opened_while_held(root: Path, release: threading.Event) -> Cache:
    """The cache at ``root`` opened as a serving start does, its catalogue read held until
    ``release`` is set."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ManifestStore, "_scan", slow_scan(release))
        return open_cache(root, max_size=1 << 20, tag_ttl=300)


async def test_a_blob_verified_in_this_run_is_not_held_to_a_cached_descriptor(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    await first_run(root, layer=False)
    release = threading.Event()
    cache = opened_while_held(root, release)
    try:
        await cache.blobs.indexed()
        await put_blob(cache, LAYER)  # fetched and verified now, while the catalogue is read
    finally:
        release.set()
    await cache.manifests.loaded()
    assert cache.blobs.lookup(digest_of(LAYER)) is not None, "a verified blob was dropped"


async def test_a_manifest_stored_while_the_catalogue_is_read_unchecks_a_disputed_size(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    await first_run(root)
    release = threading.Event()
    cache = opened_while_held(root, release)
    try:
        await cache.blobs.indexed()
        # a user pulls a good image naming the layer with its true size meanwhile
        await put_blob(cache, CFG_GOOD)
        good = RepoKey(HOST, "library/good")
        content = manifest(CFG_GOOD, len(LAYER))
        stored = await cache.manifests.put(good, content, OCI_MANIFEST, public=True)
        await cache.manifests.set_tag(good, "latest", stored.digest, public=True)
    finally:
        release.set()
    await cache.manifests.loaded()
    assert cache.blobs.lookup(digest_of(LAYER)) is not None
    assert await cache.manifests.get(good, stored.digest, pulled=False) is not None


# --- 5: a hit is looked up again once the length check is done --------------------------


def head_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Length": "0"}, json={})


async def test_a_head_while_the_length_check_runs_does_not_answer_the_cut_length(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    await first_run(root)  # the manifest says 1201 bytes: the 1200 on disk are "cut short"
    release = threading.Event()
    cache = opened_while_held(root, release)
    await cache.blobs.indexed()
    client = UpstreamClient(httpx.AsyncClient(transport=httpx.MockTransport(head_ok)))
    service = BlobService(cache.blobs, MirrorTokens(client), BlobPairings(cache.manifests))
    digest = digest_of(LAYER)
    pull = Pull(
        Upstream(f"https://{HOST}"),
        "evil/img",
        Reference("evil/img", Kind.BLOB, digest=digest),
        method="HEAD",
    )
    asked = spawn("head", service.get(pull))
    await asyncio.sleep(0.05)  # it looked the blob up, and waits for the catalogue
    release.set()
    outcome = await guard(asked)
    assert cache.blobs.lookup(digest) is None  # dropped by the check
    assert not isinstance(outcome, Served), "served a blob the check dropped"


# --- 6: a failed start-up read leaves no unretrieved exception --------------------------


async def test_a_failed_catalogue_or_index_read_leaves_no_unretrieved_exception(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: said.append(str(context.get("message"))))

    def broken(*_: Any, **__: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ManifestStore, "_scan", broken)
            patch.setattr(DiskBlobStore, "_walk", broken)
            cache = open_cache(tmp_path, max_size=1 << 20, tag_ttl=300)
            with pytest.raises(OSError):
                await cache.manifests.loaded()
            with pytest.raises(OSError):
                await cache.blobs.indexed()
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not [m for m in said if "never retrieved" in m], said


# --- 7: the over-the-cap WARNING says one figure ------------------------------------------


async def test_the_over_the_cap_warning_counts_what_it_evicts_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_cache(tmp_path, max_size=1 << 30, tag_ttl=300)
    for i in range(4):
        await put(first.blobs, blob(SIZE, i))
    caplog.set_level(logging.WARNING, logger="docxy.cache")
    again = open_cache(tmp_path, max_size=5 * SIZE, tag_ttl=300)
    again.blobs._stuck = 2 * SIZE  # evicted files the disk kept: they count against the cap
    await guard(again.blobs.indexed())
    await guard(again.manifests.loaded())
    for _ in range(50):
        await asyncio.sleep(0.01)
        said = [r.getMessage() for r in caplog.records if "over cache.max_size" in r.getMessage()]
        if said:
            break
    assert len(said) == 1, caplog.text
    found = re.search(r"(\d+) bytes cached, (\d+) over cache.max_size \((\d+)\)", said[0])
    assert found is not None, said[0]
    cached, over, cap = (int(g) for g in found.groups())
    assert cached - cap == over, said[0]
