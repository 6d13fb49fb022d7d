"""A read at start that fails (the blob index walk, the manifest catalogue scan: EIO listing a
folder) was raised again by every later use until a restart. Now it stays failed a while (its
error raised, at once) and the first use after a pause reads again, in a thread: the store then
works as after any start. No use blocks through the fresh read, and nothing noted for the
failed read is replayed on the fresh one. (The first attempt, 34c62e5, retried in a loop and
was reverted: test_review_cache9's failed-read test must keep passing unchanged.)"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache import Cache, RepoKey, digest_of, open_cache, startup
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.manifests import ManifestStore
from docxy.config import load_config
from docxy.http.app import create_app
from tests.unit.test_cache_blobs import GUARD, guard
from tests.unit.test_cache_eviction import cached_image, layer, manifest, offered_whole
from tests.unit.test_cache_images import Registry
from tests.unit.test_cache_images import pull as pull_through

pytestmark = pytest.mark.asyncio

PAUSE = 0.3  # RETRY_FIRST here: the pause after a failure before a use reads again


@pytest.fixture(autouse=True)
def short_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "RETRY_FIRST", PAUSE, raising=False)
    monkeypatch.setattr(startup, "RETRY_LONGEST", 4 * PAUSE, raising=False)


class FailsOnce:
    """Patches ``owner.name`` (a read at start) to raise EIO at its first call; ``hold``: that
    first call waits for :attr:`release` first, and so does the second (the fresh read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        self.original: Callable[..., Any] = getattr(owner, name)
        self.calls = 0
        self.started = [threading.Event(), threading.Event()]
        self.release = [threading.Event(), threading.Event()]
        for event in self.release:
            event.set()
        monkeypatch.setattr(owner, name, self)

    def __get__(self, obj: object, _: type | None = None) -> Callable[..., Any]:
        return lambda *args, **kwargs: self(obj, *args, **kwargs)

    def __call__(self, obj: object, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        call = self.calls
        if call <= 2:
            self.started[call - 1].set()
            self.release[call - 1].wait(GUARD)
        if call == 1:
            raise OSError(errno.EIO, "Input/output error")
        return self.original(obj, *args, **kwargs)


async def cached_before(root: Path, max_size: int = 1 << 20) -> tuple[RepoKey, list[bytes]]:
    """A cache with one image in it, written by an earlier run."""
    layers = [layer("cfg", 10), layer("l")]
    earlier = open_cache(root, max_size=max_size, tag_ttl=300)
    repo = await cached_image(earlier, "team/a", layers)
    await guard(earlier.manifests.loaded())
    await guard(earlier.blobs.indexed())
    return repo, layers


async def read_again(cache: Cache, *, blobs: bool = False) -> None:
    """After the pause, a use reads again: it is told the failed read's error, at once (the
    catalogue's; ``blobs``: the index's too)."""
    await asyncio.sleep(PAUSE * 1.5)
    started = time.monotonic()
    with pytest.raises(OSError):
        cache.manifests.images()
    if blobs:
        with pytest.raises(OSError):
            cache.blobs.list_entries()
    assert time.monotonic() - started < 0.5


async def test_after_a_failed_read_a_use_after_the_pause_reads_again_and_the_store_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    repo, layers = await cached_before(root, max_size=1000)
    scan = FailsOnce(monkeypatch, ManifestStore, "_scan")
    walk = FailsOnce(monkeypatch, DiskBlobStore, "_walk")
    caplog.set_level("INFO", logger="docxy.cache")
    cache = open_cache(root, max_size=1000, tag_ttl=300)
    with pytest.raises(OSError):
        await guard(cache.manifests.loaded())
    with pytest.raises(OSError):
        await guard(cache.blobs.indexed())
    with pytest.raises(OSError):  # within the pause: the same error, no read again
        await guard(cache.manifests.loaded())
    assert (scan.calls, walk.calls) == (1, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors  # one per failed try
    assert all("tried again" in m and "Input/output error" in m for m in errors), errors
    await read_again(cache, blobs=True)
    await guard(cache.manifests.loaded())
    await guard(cache.blobs.indexed())
    assert (scan.calls, walk.calls) == (2, 2)
    infos = [r.getMessage() for r in caplog.records if "succeeded after" in r.getMessage()]
    assert len(infos) == 2, infos
    # Works as after any start: lookups, puts, and eviction for room.
    assert await offered_whole(cache, repo) is True
    assert cache.blobs.lookup(digest_of(layers[1])) is not None
    other = await cached_image(cache, "team/b", [layer("cfg-b", 10), layer("b", 750)])
    await guard(cache.blobs.commits_done())
    assert await offered_whole(cache, other) is True
    assert await offered_whole(cache, repo) is None  # evicted for room, whole
    assert cache.blobs.usage().bytes <= 1000


async def test_no_use_blocks_through_the_fresh_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    repo, layers = await cached_before(root)
    scan = FailsOnce(monkeypatch, ManifestStore, "_scan")
    scan.release[1].clear()  # the fresh read hangs (a slow disk) until released
    cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
    try:
        with pytest.raises(OSError):
            await guard(cache.manifests.loaded())
        await read_again(cache)
        assert await asyncio.to_thread(scan.started[1].wait, GUARD)
        b = digest_of(layers[1])
        cache.blobs.path_of(b).unlink()  # removed beside the mirror
        found: list[object] = []
        # A lookup finding it gone forgets the images needing it (blob_gone: the catalogue);
        # on the loop in the mirror, in a thread here, where the test can watch it.
        looked = threading.Thread(target=lambda: found.append(cache.blobs.lookup(b)))
        looked.start()
        looked.join(2.0)
        assert not looked.is_alive(), "a lookup blocked on the fresh read"
        assert found == [None]
        started = time.monotonic()
        with pytest.raises(OSError):  # the failed read's error, not a wait for the fresh one
            cache.manifests.needed(b)
        assert time.monotonic() - started < 0.5
        assert await guard(cache.manifests.get(repo, digest_of(manifest(layers)))) is not None
    finally:
        scan.release[1].set()
    await guard(cache.manifests.loaded())
    # The fresh read saw the disk as it was: the image, its blob gone (as if removed while
    # the mirror was stopped): that blob is fetched again at the next pull.
    assert cache.blobs.lookup(b) is None
    assert [image.key.digest for image in cache.manifests.images()] == [digest_of(manifest(layers))]


async def test_nothing_noted_for_the_failed_read_is_replayed_on_the_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    repo, layers = await cached_before(root)
    scan = FailsOnce(monkeypatch, ManifestStore, "_scan")
    scan.release[0].clear()  # the first read runs while the image is pulled, then fails
    cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
    digest = digest_of(manifest(layers))
    try:
        assert await asyncio.to_thread(scan.started[0].wait, GUARD)
        assert await guard(cache.manifests.get(repo, digest)) is not None  # noted: a pull
    finally:
        scan.release[0].set()
    with pytest.raises(OSError):
        await guard(cache.manifests.loaded())
    # Then the image is removed beside the mirror (`docxy cache rm` in another process).
    for path in (root / "manifests").rglob(f"{digest.hex}*"):
        path.unlink()
    await read_again(cache)
    await guard(cache.manifests.loaded())
    assert [image.key.digest for image in cache.manifests.images()] == []
    assert await offered_whole(cache, repo) is None


async def test_a_failed_read_fails_no_request_and_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    registry.add("team/a", [layer("cfg", 1024), layer("l", 4096)])
    overrides = {
        "upstream.registry": "https://registry.test",
        "server.public_url": "https://mirror.test",
        "cache.dir": str(tmp_path / "cache"),
    }
    config = load_config(overrides, environ={})
    app = create_app(config, probe=False, transport=httpx.MockTransport(registry))
    async with app.test_app():
        assert await pull_through(app.test_client(), "team/a") == [200, 200, 200]
        await guard(app.extensions["docxy"].cache.blobs.commits_done())
    FailsOnce(monkeypatch, ManifestStore, "_scan")
    FailsOnce(monkeypatch, DiskBlobStore, "_walk")
    app = create_app(config, probe=False, transport=httpx.MockTransport(registry))
    async with app.test_app():
        client = app.test_client()
        cache: Cache = app.extensions["docxy"].cache
        with pytest.raises(OSError):
            await guard(cache.manifests.loaded())
        assert await pull_through(client, "team/a") == [200, 200, 200]  # no 500
        await asyncio.sleep(PAUSE * 1.5)
        assert await pull_through(client, "team/a") == [200, 200, 200]  # reads again
        await guard(cache.manifests.loaded())
        await guard(cache.blobs.indexed())
        assert await pull_through(client, "team/a") == [200, 200, 200]
        assert cache.blobs.usage().entries == 2
