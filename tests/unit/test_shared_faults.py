"""Faults of the shared tier that need no object store: a store that takes connections and
never answers (a hung host, a wedged gateway), on a real loopback socket; an upload cancelled
while its disk read runs; a setting the tier cannot work with."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import BlobInUse
from docxy.config import load_config
from docxy.core.digests import Digest, digest_of
from docxy.core.errors import ConfigError
from docxy.shared import tier as tier_module
from docxy.shared.objects import LIST_BUCKET_HINT, Bucket, ObjectStore, refusal
from docxy.shared.tier import SharedTier
from docxy.tasks import spawn
from docxy.upstream.failures import failure

GUARD = 30.0  # seconds before a would-be hang becomes a test failure
#: The tier's read timeout here: how long the silent store makes a request wait (2 s, not
#: 1: a probe must still be waiting after a stalled second on a busy machine).
SILENT_FOR = 2.0


class SilentStore:
    """A listener that accepts connections, counts them, and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.arrived = threading.Semaphore(0)  # released once per connection
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(connection)
            self.arrived.release()

    async def connection(self) -> None:
        """Wait for the next connection (bounded)."""
        assert await asyncio.to_thread(self.arrived.acquire, timeout=GUARD), "no connection"

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close does not)
        self.listener.close()
        self._thread.join(GUARD)
        for connection in self.accepted:
            connection.close()


@contextmanager
def silent_store() -> Iterator[SilentStore]:
    store = SilentStore()
    try:
        yield store
    finally:
        store.close()


def digest(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


async def test_a_hung_store_costs_one_miss_at_a_time_when_the_tier_tries_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "a hung store costs one miss that long, then 30 s of straight-to-upstream".
    Once the rest is over, the next miss finds out whether the store is back; a miss that comes
    meanwhile must not wait on the same silent store too (a pull's layers come three at a
    time, and every one of them would wait the full timeout, every 30 s)."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    with silent_store() as store:
        where = Bucket(store.url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        timeout = httpx.Timeout(SILENT_FOR, connect=GUARD)
        async with httpx.AsyncClient(timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            assert await asyncio.wait_for(tier.download(digest(1)), GUARD) is None
            assert tier.reachable is False and "ReadTimeout" in (tier.last_error or "")
            await store.connection()

            monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the 30 s are over
            probe = spawn("probe", tier.download(digest(2)))
            await store.connection()  # the probe waits on the silent store now
            assert await asyncio.wait_for(tier.download(digest(3)), GUARD) is None
            assert not probe.done() and len(store.accepted) == 2  # it went straight upstream
            assert await asyncio.wait_for(probe, GUARD) is None
            assert tier.reachable is False


async def test_a_timeout_says_what_timed_out_and_after_how_long(tmp_path: Path) -> None:
    """``/status.json`` showed ``HEAD ReadTimeout: `` with nothing after the colon (an httpx
    timeout has an empty text): the store's last error says which request waited for what,
    and how long."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    with silent_store() as store:
        where = Bucket(store.url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        timeout = httpx.Timeout(SILENT_FOR, connect=GUARD)
        async with httpx.AsyncClient(timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            assert await asyncio.wait_for(tier.download(digest(1)), GUARD) is None
            waited = f"ReadTimeout: nothing received within {SILENT_FOR:g}s"
            assert tier.last_error == f"GET {waited}"
            tier.uploads.offer(cached_blob(blobs, 1))
            await asyncio.wait_for(tier.uploads.drained(), GUARD)
            assert tier.report()["last_error"] == f"HEAD {waited}"


@pytest.mark.parametrize(
    ("error", "said", "with_text"),
    [
        (httpx.ConnectTimeout, "GET ConnectTimeout: no connection within 3s", "(the reason)"),
        (httpx.WriteTimeout, "GET WriteTimeout: could not send within 4.5s", "(the reason)"),
        (httpx.PoolTimeout, "GET PoolTimeout: no free connection within 6s", "(the reason)"),
        (httpx.ReadError, "GET ReadError (no detail given)", "GET ReadError: the reason"),
    ],
)
def test_failures_with_no_text_of_their_own_are_described(
    error: type[httpx.TransportError], said: str, with_text: str
) -> None:
    limits = httpx.Timeout(15.0, connect=3.0, write=4.5, pool=6.0)
    request = httpx.Request("GET", "http://store", extensions={"timeout": limits.as_dict()})
    assert failure("GET", error("", request=request)) == said
    assert failure("GET", error("the reason", request=request)).endswith(with_text)
    assert failure("GET", error("")).startswith("GET ")  # raised without its request


def cached_blob(blobs: DiskBlobStore, n: int) -> Digest:
    """A blob file in ``blobs`` (as a committed fill leaves it); its digest."""
    data = n.to_bytes(4, "big") * 1000
    digest = digest_of(data)
    path = blobs.path_of(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


async def test_uploads_queued_when_the_store_fails_are_dropped_not_tried_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Blobs queued for upload while the store worked, then the first upload finds it hung:
    the tier rests (its misses go straight upstream), but the uploads that waited were still
    tried one after another, each waiting the whole timeout on the same silent store. They
    are dropped (counted as dropped) with one log line, and the store is left alone."""
    caplog.set_level(logging.INFO, "docxy.shared.tier")
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    queued = [cached_blob(blobs, n) for n in range(4)]
    with silent_store() as store:
        where = Bucket(store.url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        timeout = httpx.Timeout(SILENT_FOR, connect=GUARD)
        async with httpx.AsyncClient(timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            assert all(tier.uploads.offer(digest) for digest in queued)
            await store.connection()  # the first upload asks the silent store
            await asyncio.wait_for(tier.uploads.drained(), GUARD)
            assert tier.reachable is False
            assert len(store.accepted) == 1, "the resting store was asked again"
            assert (tier.counts.errors, tier.counts.upload_failed) == (1, 1)
            assert (tier.uploads.dropped, tier.uploads.waiting) == (3, 0)
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "3 queued uploads" in dropped[0].getMessage()


@pytest.mark.usefixtures("clean_docxy_env")
@pytest.mark.parametrize("flags", [{"cache.enabled": False}, {"cache.enabled": "false"}])
def test_a_shared_tier_without_the_local_cache_refuses_to_start(flags: dict[str, object]) -> None:
    """The tier fills the local cache: with the cache off (`--no-cache`, e.g. taking the bucket
    for the cache) nothing would ever be read from the bucket or uploaded to it, and the mirror
    said nothing about it: every pull went to the upstream."""
    shared = {
        "shared.endpoint": "http://127.0.0.1:8333",
        "shared.bucket": "docxy-cache",
        "shared.access_key": "docxy",
        "shared.secret_key": "not-a-secret",
    }
    with pytest.raises(ConfigError, match=r"shared\.endpoint: .*cache\.enabled"):
        load_config({**shared, **flags}, environ={})
    assert load_config(shared, environ={}).shared.enabled  # with the cache: fine


class GatedReads:
    """``os.pread`` of one file waits for the test: the first read of it says it started, then
    reads once released and records what it got (bytes, or the error)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.started = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.got: list[bytes | OSError] = []
        self._pread = os.pread

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target != self.path:
            return self._pread(fd, length, offset)
        self.started.set()
        self.release.wait(GUARD)
        try:
            chunk = self._pread(fd, length, offset)
        except OSError as exc:
            self.got.append(exc)
            raise
        finally:
            self.done.set()
        self.got.append(chunk)
        return chunk


async def accepting_store(request: httpx.Request) -> httpx.Response:
    """An object store that has nothing and takes every upload."""
    s3 = {"x-amz-request-id": "18EE17D3BF0E9510"}  # every answer of an S3 store has one
    if request.method == "HEAD":
        return httpx.Response(404, headers=s3)
    await request.aread()
    return httpx.Response(200, headers=s3)


async def test_an_upload_cancelled_at_shutdown_never_reads_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the uploads; one whose disk read was running in a worker thread
    stopped waiting for it, and its descriptor was closed while the read went on. The next
    file opened got the same number (the kernel reuses the lowest free one), and the read
    went on in that file: the upload's bytes came from another file (or the read failed)."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    data = os.urandom(200_000)
    digest = digest_of(data)
    path = blobs.path_of(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    decoy = tmp_path / "decoy"
    decoy.write_bytes(bytes(len(data)))
    gate = GatedReads(path)
    monkeypatch.setattr(os, "pread", gate.pread)
    where = Bucket("http://store.test", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    async with httpx.AsyncClient(transport=httpx.MockTransport(accepting_store)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)
        assert tier.uploads.offer(digest)
        assert await asyncio.to_thread(gate.started.wait, GUARD), "the upload never read"
        tier.uploads.cancel()  # shutdown
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        other = os.open(decoy, os.O_RDONLY)  # whatever the process opens next
        try:
            gate.release.set()
            assert await asyncio.to_thread(gate.done.wait, GUARD)
        finally:
            os.close(other)
    assert len(gate.got) == 1, gate.got
    got = gate.got[0]
    assert isinstance(got, bytes) and digest_of(got) == digest, "it read another file"


async def test_a_cached_file_that_cannot_be_read_fails_its_upload_not_the_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload whose cached file cannot be read (EIO, no descriptor left; here a directory
    where the file was, EISDIR) raised the OSError out of the upload worker: a logged crash,
    not counted in ``upload_failed``, and the blobs queued behind it waited for the next
    offer to start a worker. It is one failed upload, with one warning; the queue goes on."""
    caplog.set_level(logging.INFO, "docxy")
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    unreadable = digest_of(b"a blob whose file cannot be read")
    blobs.path_of(unreadable).mkdir(parents=True)
    good = cached_blob(blobs, 1)
    where = Bucket("http://store.test", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    async with httpx.AsyncClient(transport=httpx.MockTransport(accepting_store)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)
        assert tier.uploads.offer(unreadable) and tier.uploads.offer(good)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        assert (tier.counts.uploaded, tier.counts.upload_failed) == (1, 1)
        assert tier.uploads.waiting == 0
        assert tier.reachable is True, "the local disk's fault is not the store's"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(unreadable) in warned[0] and "cannot read" in warned[0]


async def test_a_cached_file_gone_empty_is_not_uploaded_as_the_blob(tmp_path: Path) -> None:
    """An upload is cut before its last byte unless the bytes hash to the digest; an empty
    file has no last byte to cut before: it went out whole, an empty object under the blob's
    digest, counted as uploaded."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    emptied = cached_blob(blobs, 7)
    blobs.path_of(emptied).write_bytes(b"")  # after its fill (a crash, a full disk...)
    puts: list[bytes] = []

    async def store(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            puts.append(await request.aread())
        return await accepting_store(request)

    where = Bucket("http://store.test", "docxy-cache", "us-east-1", "docxy", "not-a-secret")
    async with httpx.AsyncClient(transport=httpx.MockTransport(store)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)
        assert tier.uploads.offer(emptied)
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert puts == []
    assert (tier.counts.uploaded, tier.counts.upload_failed) == (0, 1)


async def test_a_blob_being_uploaded_is_neither_removed_nor_evicted_under_the_upload(
    tmp_path: Path,
) -> None:
    """The upload reads the blob's file for as long as the store takes: it is pinned meanwhile,
    as a client's reader pins it (its blocks would stay held, counted nowhere)."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    uploaded = cached_blob(blobs, 1)
    blobs.scan()
    assert blobs.holds(uploaded)
    with silent_store() as store:
        where = Bucket(store.url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        timeout = httpx.Timeout(SILENT_FOR, connect=GUARD)
        async with httpx.AsyncClient(timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            tier.uploads.offer(uploaded)
            await store.connection()  # the upload's first request waits on the silent store
            with pytest.raises(BlobInUse):
                blobs.remove(uploaded)
            await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert blobs.remove(uploaded)  # the upload is over: unpinned


@pytest.mark.parametrize(
    ("what", "body"), [("GET", b"<Error><Code>AccessDenied</Code></Error>"), ("HEAD", b"")]
)
async def test_a_403_for_an_object_says_what_a_key_without_listbucket_gets(
    what: str, body: bytes
) -> None:
    """AWS S3 answers a missing object 403 to a key that may not list the bucket."""
    error = await refusal(httpx.Response(403, content=body), what)
    assert error.status == 403 and LIST_BUCKET_HINT in str(error)
    other = await refusal(httpx.Response(403, content=b"<Code>SignatureDoesNotMatch</Code>"), what)
    assert LIST_BUCKET_HINT not in str(other)
