"""The cache's file descriptors: a hit that cannot open its blob, where each descriptor is
closed (on the loop, or in a worker thread when its close may free a file's blocks), and the
cap while a removed file's blocks are still held by a descriptor.

Real files under tmp_path; faults are injected at the OS call (``os.open``, ``os.close``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnreadable
from docxy.cache.fill import BlobFollower, BlobWriter, Download
from docxy.core.digests import Digest, digest_of
from docxy.edge.fills import FillPermits
from docxy.http.middleware import AccessLog, Guard
from docxy.pull.outcome import BlobContent, PassThrough, Reason, Served
from docxy.tasks import spawn
from tests.unit import test_pull_blobs as pull_tests
from tests.unit.asgi import call_asgi
from tests.unit.test_cache_blobs import blob, put
from tests.unit.test_cache_cap import Upstream, bytes_on_disk, served
from tests.unit.test_cache_faults import (
    BLOB,
    DIGEST,
    GUARD,
    PULL,
    Registry,
    blob_service,
    make_store,
    running,
)
from tests.unit.turns import until

T = TypeVar("T")


async def cached(store: DiskBlobStore, registry: Registry, permits: FillPermits) -> None:
    """BLOB filled through the service and committed."""
    registry.flowing.set()
    outcome = await asyncio.wait_for(blob_service(store, registry, permits).get(PULL), GUARD)
    assert isinstance(outcome, Served) and isinstance(outcome.content, BlobContent)
    assert outcome.content.stream is not None
    assert await asyncio.wait_for(outcome.content.stream.read_all(), GUARD) == BLOB
    await asyncio.wait_for(store.commits_done(), GUARD)
    assert store.holds(DIGEST)


def failing_blob_open(
    monkeypatch: pytest.MonkeyPatch, store: DiskBlobStore, digest: Digest, code: int
) -> None:
    """Opening the committed file of ``digest`` fails with ``code``; everything else opens."""
    real_open, path = os.open, store.path_of(digest)

    def open_(file: str | Path, flags: int, *args: int) -> int:
        if Path(file) == path:
            raise OSError(code, os.strerror(code))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", open_)


# --- a cache hit that cannot open its blob ------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EIO], ids=errno.errorcode.get)
async def test_a_hit_that_cannot_open_its_blob_is_passed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """No descriptor left (EMFILE, ENFILE) or a failing disk (EIO) when a cached blob is opened
    for a hit: the client is passed through to the upstream, with the reason (not a 500); the
    blob stays cached, nothing is fetched for the cache, and no fill slot is taken."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    await cached(store, registry, permits)
    gets = registry.blob_gets
    failing_blob_open(monkeypatch, store, DIGEST, code)

    outcome = await asyncio.wait_for(blob_service(store, registry, permits).get(PULL), GUARD)
    assert isinstance(outcome, PassThrough), outcome
    assert outcome.reason is Reason.CACHE_UNREADABLE
    assert os.strerror(code) in outcome.detail
    assert (registry.blob_gets, running(permits), store.fills_open) == (gets, 0, 0)
    assert store.usage().pinned == 0
    monkeypatch.undo()
    assert store.holds(DIGEST)  # still cached: the next hit is served from disk
    reader = store.open_read(DIGEST)
    assert reader is not None and await reader.read_all() == BLOB


async def test_a_client_whose_hit_cannot_open_the_blob_gets_it_from_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the app: no descriptor left for a cached blob, and the client still gets the
    whole blob with a 200 (from the upstream, with its own token), logged with the reason."""
    caplog.set_level(logging.INFO, logger="docxy")
    upstream = pull_tests.Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    path, auth = f"/v2/team/app/blobs/{pull_tests.DIGEST}", [("Authorization", "Bearer account")]
    async with pull_tests.mirror(tmp_path, upstream, **settings) as app:
        logged = AccessLog(Guard(app, None))
        first = await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
        assert (first.status, first.body) == (200, pull_tests.BLOB)
        await pull_tests.committed(app)
        (cached_file,) = pull_tests.cached_blobs(tmp_path)
        real_open = os.open

        def no_descriptor_left(file: str | Path, flags: int, *args: int) -> int:
            if Path(file) == cached_file:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_open(file, flags, *args)

        monkeypatch.setattr(os, "open", no_descriptor_left)
        second = await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
        assert second.status == 200
        assert second.complete and second.body == pull_tests.BLOB
    assert upstream.blob_gets == 2  # the fill, then the pass-through
    assert pull_tests.cached_blobs(tmp_path) == [cached_file]
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert "cache=uncached reason=cache-unreadable" in lines[-1]


async def test_a_blob_committed_while_a_miss_looked_that_cannot_be_opened_is_passed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way to a hit: a miss asks the store to fill the blob, which another client
    committed meanwhile (``fill`` opens it as a hit). No descriptor left then: passed through,
    and the fill slot the miss took is given back."""
    store, registry, permits = make_store(tmp_path), Registry(), FillPermits(total=1)
    await cached(store, registry, permits)
    failing_blob_open(monkeypatch, store, DIGEST, errno.EMFILE)

    async def fetch() -> Download:
        raise AssertionError("a committed blob is never fetched")

    with pytest.raises(CacheUnreadable, match="Too many open files"):
        await store.fill(DIGEST, fetch)
    assert (store.fills_open, store.usage().pinned) == (0, 0)


# --- where a reader's descriptor is closed --------------------------------------------------


class Closes:
    """The thread of every ``os.close`` of a descriptor open on a file under ``root`` (read
    from /proc/self/fd before the close), and how many jobs went to the loop's executor."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root) + "/"
        self.threads: list[int] = []
        self.closed = threading.Event()
        self.submitted: list[str] = []
        real_close = os.close

        def close(fd: int) -> None:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            real_close(fd)
            if target.startswith(self.root):
                self.threads.append(threading.get_ident())
                self.closed.set()

        monkeypatch.setattr(os, "close", close)
        loop = asyncio.get_running_loop()
        real_run = loop.run_in_executor

        def run_in_executor(executor: Any, func: Callable[..., T], *args: Any) -> Any:
            self.submitted.append(getattr(func, "__name__", repr(func)))
            return real_run(executor, func, *args)

        monkeypatch.setattr(loop, "run_in_executor", run_in_executor)


async def test_a_hit_closes_its_file_on_the_loop_without_the_thread_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close of a file that still has its name frees nothing: a warm hit closes its
    descriptor at once, on the loop, and the thread pool only reads (one pread here)."""
    store = make_store(tmp_path)
    digest = await put(store, BLOB[:1000])
    closes = Closes(tmp_path, monkeypatch)
    reader = store.open_read(digest)
    assert reader is not None
    assert await reader.read_all() == BLOB[:1000]
    jobs = list(closes.submitted)
    assert await asyncio.to_thread(closes.closed.wait, GUARD), "never closed"
    assert closes.threads == [threading.get_ident()]
    assert len(jobs) == 1, jobs  # the read; no close job
    assert store.usage().pinned == 0


async def test_a_reader_of_a_blob_removed_meanwhile_closes_it_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docxy cache rm --blobs` (another process, which cannot see the mirror's readers)
    removes a blob while a hit streams it: the reader holds the last descriptor, whose close
    frees the blocks (seconds for many GiB on ext4): a worker thread does it."""
    store = make_store(tmp_path)
    digest = await put(store, BLOB)
    reader = store.open_read(digest)
    assert reader is not None
    cli = DiskBlobStore(tmp_path, 1 << 30)  # as `docxy cache` opens it, beside the mirror
    cli.scan()
    assert cli.remove(digest)
    closes = Closes(tmp_path, monkeypatch)
    assert await reader.read_all() == BLOB
    assert await asyncio.to_thread(closes.closed.wait, GUARD), "never closed"
    assert closes.threads and threading.get_ident() not in closes.threads


# --- the cap while a removed temp file is still held open ---------------------------------------


class Peak:
    """The most bytes :func:`bytes_on_disk` saw right after any write of any fill."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.peak = 0
        self.lock = threading.Lock()
        real_write_all = fill_module.write_all

        def write_all(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
            real_write_all(fd, chunks)
            size = bytes_on_disk(root)
            with self.lock:
                self.peak = max(self.peak, size)

        monkeypatch.setattr(fill_module, "write_all", write_all)


class SlowClose:
    """The close that frees a removed temp file's blocks, in a worker thread, waits for
    ``done`` (as freeing many GiB on ext4 takes seconds)."""

    def __init__(self, tmp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = threading.Event()
        loop_thread, real_close = threading.get_ident(), os.close

        def close(fd: int) -> None:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            removed = target.startswith(f"{tmp_dir}/") and target.endswith(" (deleted)")
            if removed and threading.get_ident() != loop_thread:
                self.done.wait(GUARD)
            real_close(fd)

        monkeypatch.setattr(os, "close", close)


@pytest.mark.parametrize("holder", ["a follower", "the freeing close"])
async def test_an_aborted_fills_bytes_count_against_the_cap_until_they_are_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: str
) -> None:
    """A fill aborted after 300 bytes loses its temp file's name at once, but its blocks stay
    on disk while a descriptor holds the file: a follower whose client has not gone yet, or the
    writer's own close, freeing them in a worker thread. A new fill of 800 bytes under a cap of
    1000 waits for them to be freed: the disk never holds more than ``cache.max_size``."""
    store = make_store(tmp_path, max_size=1000)
    peak = Peak(tmp_path, monkeypatch)
    first = blob(300, 1)
    writer = await store.fetch_or_join(digest_of(first))
    assert isinstance(writer, BlobWriter)
    follower = await store.fetch_or_join(digest_of(first)) if holder == "a follower" else None
    assert follower is None or isinstance(follower, BlobFollower)
    await writer.write(first)
    slow = SlowClose(store.tmp_dir, monkeypatch) if follower is None else None
    writer.abort("the upstream broke off")
    assert os.listdir(store.tmp_dir) == []  # its name is gone at once

    second = blob(800, 2)
    stream = await store.fill(digest_of(second), Upstream(second).fetch)
    reading = spawn("read the second blob", served(stream))
    await until(lambda: reading.done() or bool(store._waiting))
    if follower is not None:
        follower.close()  # its client goes: the last descriptor of the first temp file
    if slow is not None:
        slow.done.set()
    assert await asyncio.wait_for(reading, GUARD) == second
    assert peak.peak <= 1000, f"{peak.peak} bytes on disk, cap 1000"
    await asyncio.wait_for(store.commits_done(), GUARD)
    assert store.holds(digest_of(second))
    await until(lambda: store.usage().freeing == 0)
    assert bytes_on_disk(tmp_path) == store.usage().bytes == 800
