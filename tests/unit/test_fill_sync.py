"""The commit's sync comes after a fill's clients are done: what is served meanwhile (a HEAD, a
Range, from the verified temp file) and what a stop does with a blob still syncing."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnwritable
from docxy.cache.fill import BlobWriter
from docxy.cache.reader import BlobReader
from docxy.core.digests import digest_of
from docxy.http import app as app_module
from docxy.tasks import cancel_all, spawn
from tests.unit.asgi import call_asgi
from tests.unit.test_cache_blobs import (
    HeldSync,
    as_follower,
    as_writer,
    blob,
    guard,
    make_store,
    tmp_files,
    write_in_pieces,
)
from tests.unit.test_pull_blobs import BLOB, DIGEST, Upstream, cached_blobs, mirror

SETTINGS = {"upstream__username": "bot", "upstream__password": "s3cret"}
PATH = f"/v2/team/app/blobs/{DIGEST}"
AUTH = [("Authorization", "Bearer account")]


@pytest.fixture
def held_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldSync]:
    held = HeldSync(monkeypatch)
    try:
        yield held
    finally:
        held.release()  # never leave a worker thread waiting


async def test_a_head_and_a_range_while_the_blob_syncs_are_served_from_its_temp_file(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    upstream = Upstream()
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert (first.status, first.body == BLOB) == (200, True)
        assert held_sync.started.wait(5) and cached_blobs(tmp_path) == []  # still syncing
        head = await call_asgi(app, "HEAD", PATH, headers=AUTH, host="mirror.test")
        ranged = await call_asgi(
            app, "GET", PATH, headers=[*AUTH, ("Range", "bytes=10-19")], host="mirror.test"
        )
        assert upstream.ranges == [None]  # the one fill's GET: nothing more went upstream
        held_sync.release()
    assert (head.status, head.headers.get("content-length")) == (200, str(len(BLOB)))
    assert (ranged.status, ranged.body) == (206, BLOB[10:20])
    assert [path.read_bytes() == BLOB for path in cached_blobs(tmp_path)] == [True]


async def test_a_stop_waits_for_a_verified_blobs_sync_and_keeps_it(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    async with mirror(tmp_path, Upstream(), **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert first.body == BLOB and held_sync.started.wait(5)
        threading.Timer(0.2, held_sync.release).start()  # the stop begins while it syncs
    assert [path.read_bytes() == BLOB for path in cached_blobs(tmp_path)] == [True]


async def test_a_sync_that_outlasts_the_stops_wait_is_given_up_in_one_line(
    tmp_path: Path,
    held_sync: HeldSync,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(app_module, "KEEP_VERIFIED", 0.05)
    caplog.set_level(logging.INFO, logger="docxy")
    async with mirror(tmp_path, Upstream(), **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert first.body == BLOB and held_sync.started.wait(5)
    await cancel_all()  # as `docxy serve` does once the app has stopped
    held_sync.release()
    said = [r.getMessage() for r in caplog.records if "still syncing" in r.getMessage()]
    assert said == ["stopping: 1 verified blob(s) still syncing after 0.05 s are not kept"]
    assert cached_blobs(tmp_path) == []


# --- the store while a verified fill syncs --------------------------------------------------


async def verified(store: DiskBlobStore, data: bytes) -> tuple[BlobWriter, asyncio.Task[Any]]:
    """A fill of ``data`` whose commit verified it and now syncs (held): its writer, and the
    commit's task."""
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    writer.announce(len(data))
    await write_in_pieces(writer, data, 1 << 20)
    committing = spawn("commit", writer.commit(len(data)))
    assert await guard(follower.read_all()) == data  # its last byte: verified
    return writer, committing


async def test_a_reader_of_the_verified_temp_file_keeps_its_bytes_counted_if_the_sync_fails(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    """The sync fails (EIO): the temp file is removed, but a reader that opened it meanwhile
    still holds its blocks, which count against the cap until it is closed."""
    store = make_store(tmp_path)
    data = blob(3 << 20)
    writer, committing = await verified(store, data)
    async with writer:
        reader = store.open_read(writer.digest)
        assert isinstance(reader, BlobReader)
        held_sync.error = OSError(errno.EIO, "I/O error")
        held_sync.release()
        assert await guard(committing) is None
    assert tmp_files(store) == []  # removed, held open by the reader only
    await asyncio.sleep(0.5)  # time for the store's own descriptor on it to be closed
    assert store.usage().freeing >= len(data)
    assert await guard(reader.read_all()) == data
    await guard(wait_for(lambda: store.usage().freeing == 0))


async def test_a_verified_fill_whose_temp_file_is_gone_is_not_fetched_again_beside_it(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    """Removed under the mirror (``docxy cache gc``) while it syncs: a new client is passed
    through (CacheUnwritable), not given a second fill that would hide the first from the
    store's count of reserved bytes."""
    store = make_store(tmp_path)
    data = blob(2 << 20)
    writer, committing = await verified(store, data)
    async with writer:
        os.unlink(writer.fill.tmp_path)
        with pytest.raises(CacheUnwritable):
            await store.fetch_or_join(writer.digest)
        assert store.filling(writer.digest)  # the first fill, still syncing
        held_sync.release()
        assert await guard(committing) is None  # nothing to rename: not kept
    usage = store.usage()
    assert (usage.reserved, usage.in_flight, usage.entries) == (0, 0, 0)


async def test_a_given_up_fills_preallocated_blocks_count_until_they_are_freed(
    tmp_path: Path,
) -> None:
    """A fill announced at 64 MiB (its blocks preallocated) is given up after 1 MiB while a
    follower holds its temp file: the removed file still holds all 64 MiB of blocks, counted
    against the cap until the follower closes it."""
    store = make_store(tmp_path)
    data = blob(64 << 20)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    async with writer:
        writer.announce(len(data))
        await writer.preallocate()
        # A file system without fallocate: only the bytes written hold blocks.
        preallocated = os.stat(writer.fill.tmp_path).st_blocks * 512 >= len(data)
        await writer.write(data[: 1 << 20])
        writer.abort("the test gives it up")
    assert store.usage().freeing >= (len(data) if preallocated else 1 << 20)
    follower.close()
    await guard(wait_for(lambda: store.usage().freeing == 0))


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_failed_pump_write_heard_after_an_abort_leaves_the_fill_aborted(
    tmp_path: Path,
) -> None:
    """The pump's thread failed to write (ENOSPC) as the fill was being cancelled: the fill
    stays aborted (its followers cut, not sent upstream for a rest) and misses are not paused."""
    store = make_store(tmp_path)
    data = blob(1 << 20)
    writer = await as_writer(store, digest_of(data))
    writer.abort("the fill task was cancelled")
    writer._thread_stopped_caching(OSError(errno.ENOSPC, "No space left on device"))
    assert writer.fill.kept is None
    assert store.write_failed_at is None
