"""A read of the cache at start that fails (EIO listing a folder, anything unexpected) is said
once, in one ERROR, and tried again after a while; the mirror serves meanwhile, as while the
read is in flight. It left every later manifest put/get and blob lookup raising the same error
until a restart."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import ManifestStore, TagState, open_cache
from docxy.cache import startup as startup_mod
from docxy.cache.blobs import DiskBlobStore
from docxy.core.digests import digest_of
from tests.unit.test_cache_blobs import GUARD, blob, make_store, put, read
from tests.unit.test_cache_eviction import cached_image, layer, manifest
from tests.unit.test_cachecli import Populated, _populate, run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@dataclass
class FailsOnce:
    """The first call raises EIO; later ones set :attr:`retried` and wait for :attr:`release`
    (at most ``GUARD``)."""

    release: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)
    retried: threading.Event = field(default_factory=threading.Event)
    calls: int = 0


def fail_once(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> FailsOnce:
    state = FailsOnce()
    original: Callable[..., Any] = getattr(owner, name)

    def flaky(self: object, *args: Any, **kwargs: Any) -> Any:
        state.calls += 1
        if state.calls == 1:
            state.failed.set()
            raise OSError(errno.EIO, "Input/output error", str(getattr(self, "root", "?")))
        state.retried.set()
        state.release.wait(GUARD)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    monkeypatch.setattr(startup_mod, "RETRY_FIRST", 0.01, raising=False)
    return state


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failed_catalogue_read_is_said_once_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    before = open_cache(root, max_size=1000, tag_ttl=300)
    old_layers = [layer("cfg-old", 10), layer("l-old")]
    old = await cached_image(before, "team/old", old_layers)
    await before.manifests.loaded()
    await before.blobs.indexed()
    del before  # (its lock is the process's: a restart in the same process opens again)

    failing = fail_once(monkeypatch, ManifestStore, "_scan")
    caplog.set_level(logging.INFO)
    cache = open_cache(root, max_size=1000, tag_ttl=300)
    assert failing.failed.wait(GUARD)
    # Requests after the failure: served from disk, changes noted, nothing raised.
    found = await cache.manifests.resolve_tag(old, "latest")
    assert found.state is TagState.FRESH and found.manifest is not None
    new_layers = [layer("cfg-new", 10), layer("l-new")]
    new = await cached_image(cache, "team/new", new_layers)
    assert (await cache.manifests.get(new, digest_of(manifest(new_layers)))) is not None
    await cache.manifests.tried()  # a blob pull's wait: not for a failing read
    assert cache.manifests.blob_visibility(old, digest_of(old_layers[1])) is None  # unknown yet
    assert failing.retried.wait(GUARD) and failing.calls == 2  # tried again (held there)
    assert len(errors(caplog)) == 1
    assert "manifest catalogue" in errors(caplog)[0] and "again" in errors(caplog)[0]

    failing.release.set()
    await cache.manifests.loaded()
    keys = {image.key.digest for image in cache.manifests.images()}
    assert keys == {digest_of(manifest(old_layers)), digest_of(manifest(new_layers))}
    seen = cache.manifests.blob_visibility(old, digest_of(old_layers[1]))
    assert seen is not None and seen.public
    assert len(errors(caplog)) == 1


async def test_a_failed_blob_index_read_is_said_once_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, max_size=1000)
    data = [blob(300, i) for i in range(3)]
    for item in data:
        await put(store, item)
    await store.indexed()

    failing = fail_once(monkeypatch, DiskBlobStore, "_walk")
    caplog.set_level(logging.INFO)
    store = make_store(tmp_path, max_size=800)  # a cap lowered since: 100 bytes over
    store.check_at_start()
    assert failing.failed.wait(GUARD)
    # Lookups after the failure: one stat each, as while the read is in flight.
    assert await read(store, digest_of(data[1])) == data[1]
    assert store.lookup(digest_of(data[0])) is not None
    assert store.usage().entries == 2
    assert not store.index_complete
    fourth = await put(store, blob(100, 4))  # room by the blobs known: cached, not held up
    assert store.lookup(fourth) is not None
    assert failing.retried.wait(GUARD) and failing.calls == 2
    assert len(errors(caplog)) == 1
    assert "blob index" in errors(caplog)[0] and "again" in errors(caplog)[0]

    failing.release.set()
    await store.indexed()
    assert store.start_check is not None
    await store.start_check  # the cap checked once the index is read: evicted down
    await store.settle()
    assert store.index_complete
    assert store.usage().bytes <= 800
    assert store.evicted >= 1
    assert len(errors(caplog)) == 1


def test_a_command_whose_catalogue_read_fails_exits_1_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docxy cache ...`` reads the cache at once, in its own thread: a failure is its answer
    (one line, exit 1), not tried again."""
    cache: Populated = asyncio.run(_populate(tmp_path / "cache"))
    failing = fail_once(monkeypatch, ManifestStore, "_scan")
    failing.release.set()
    code, _, err = run(capsys, cache, "rm", "alpine:3.20")
    assert code == 1, err
    assert "Traceback" not in err, err
    assert "Input/output error" in err
    assert failing.calls == 1
