"""Review findings on the shared tier's "is this an S3 store" probe and its badge
(test_review_shared, 2, 3 and 3b were taken by earlier rounds): each a test that failed before
its mend. The stand-in store of the first part is a real loopback server (127.0.0.170, a port
of 9050-9099): what it is about is the tier's client's connections."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.core.digests import Digest, digest_of
from docxy.http.state import mirror_state
from docxy.shared import objects as objects_module
from docxy.shared import tier as tier_module
from docxy.shared.objects import NEVER_STORED, Bucket, ObjectStore
from docxy.shared.tier import SharedTier
from tests.unit.test_observe_routes import SHARED, Upstream, answer, blob_path, stack
from tests.unit.test_review_shared3 import (
    BUCKET,
    GUARD,
    LAYER,
    MAX_SIZE,
    NO_SUCH_KEY,
    REQUEST_ID,
    cache,
    open_tier,
)
from tests.unit.test_review_shared3b import s3_without_request_id, web_page

HOST = "127.0.0.170"
PORTS = range(9050, 9100)
#: How long the stand-in store takes to answer the probe: concurrent misses all ask meanwhile.
PROBE_TAKES = 0.3
LAYERS = [f"layer {n} ".encode() * 300 for n in range(6)]


class HeaderlessStore(BaseHTTPRequestHandler):
    """An S3 store that sends no ``x-amz-`` header (the S3 API without AWS's headers): the
    objects of :data:`LAYERS`, ``NoSuchKey`` for any other key; it counts the probes."""

    protocol_version = "HTTP/1.1"  # keeps connections, as a store does
    probes = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.endswith(NEVER_STORED.hex):
            with self.lock:
                type(self).probes += 1
            time.sleep(PROBE_TAKES)
        for layer in LAYERS:
            if self.path.endswith(digest_of(layer).hex):
                self._send(200, layer)
                return
        self._send(404, NO_SUCH_KEY, "application/xml")

    def _send(self, status: int, body: bytes, kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the mirror closed the answer unread

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a connection the mirror closed (an answer it did not read): no traceback


@contextmanager
def headerless_store() -> Iterator[str]:
    """The stand-in store on :data:`HOST`, on the first free port of :data:`PORTS`; its URL."""
    HeaderlessStore.probes = 0
    server = None
    for port in PORTS:
        try:
            server = QuietServer((HOST, port), HeaderlessStore)
            break
        except OSError:
            continue
    assert server is not None, f"no free port in {PORTS} on {HOST}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(GUARD)


def tier_on(url: str, blobs: DiskBlobStore, http: httpx.AsyncClient) -> SharedTier:
    return SharedTier(ObjectStore(Bucket(url, BUCKET, "us-east-1", "docxy", "x"), http), blobs, 1)


async def read_whole(tier: SharedTier, digest: Digest) -> bytes | None:
    """The object filled through the tier's download, or None when the tier gave none."""
    download = await asyncio.wait_for(tier.download(digest), GUARD)
    if download is None:
        return None
    assert download.chunks is not None
    try:
        return b"".join([chunk async for chunk in download.chunks])
    finally:
        await download.close()


# --- 1. the probe: made holding the blob GET's connection, once per concurrent miss ----------


async def test_the_probe_does_not_wait_for_the_connection_its_blob_get_holds(
    tmp_path: Path,
) -> None:
    """The probe was sent while the blob GET that asked for it still held its connection: with
    every connection of the tier's client so held (here its one), the probe waited out the
    pool timeout, and the miss went upstream with the store never vouched for."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    with headerless_store() as url:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(5, pool=1)) as http:
            tier = tier_on(url, blobs, http)
            got = await read_whole(tier, digest_of(LAYERS[0]))
    assert got == LAYERS[0]
    assert (tier.reachable, tier.counts.errors, HeaderlessStore.probes) == (True, 0, 1)


async def test_concurrent_misses_share_one_probe(tmp_path: Path) -> None:
    """Each of N misses at once made a probe of its own (N requests, N connections held
    twice); one is made, the others wait for its answer."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    with headerless_store() as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5)) as http:
            tier = tier_on(url, blobs, http)
            got = await asyncio.gather(*(read_whole(tier, digest_of(x)) for x in LAYERS))
            again = await read_whole(tier, digest_of(b"not stored"))  # a miss: no probe
    assert got == LAYERS and again is None
    assert HeaderlessStore.probes == 1
    assert (tier.counts.errors, tier.counts.misses) == (0, 1)


# --- 2. one S3 answer trusted for ever ---------------------------------------------------------


class Swapped:
    """The endpoint: ``store`` until :meth:`swap`, then a web server's page at every path."""

    def __init__(self, store: Callable[[httpx.Request], httpx.Response]) -> None:
        self.store = store
        self.swapped = False
        self.fail_next = False

    def swap(self) -> None:
        self.swapped = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail_next:
            self.fail_next = False
            return answer(503, b"<Error><Code>ServiceUnavailable</Code></Error>")
        if self.swapped:
            return web_page(request)
        return self.store(request)


def s3_store(request: httpx.Request) -> httpx.Response:
    """An S3 store as AWS, MinIO, SeaweedFS are: an ``x-amz-request-id`` on every answer."""
    if request.url.path.endswith(digest_of(LAYER).hex):
        return answer(200, LAYER, {"content-length": str(len(LAYER)), **REQUEST_ID})
    return answer(404, NO_SUCH_KEY, {"content-type": "application/xml", **REQUEST_ID})


async def test_a_web_server_put_in_an_s3_stores_place_is_no_store(tmp_path: Path) -> None:
    """An S3 store's first answer (its ``x-amz-`` header) vouched for every later answer of
    the endpoint: a web server put behind it (a proxy's route changed) had its page taken for
    each blob's object (corrupt blob after blob, uploads counted made, the tier green)."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    endpoint = Swapped(s3_store)
    tier, http = open_tier(blobs, endpoint)
    async with http:
        assert await read_whole(tier, digest_of(LAYER)) == LAYER
        endpoint.swap()
        assert await asyncio.wait_for(tier.download(digest_of(b"another")), GUARD) is None
    assert tier.reachable is False and "not an S3 store" in (tier.last_error or "")


async def test_a_store_without_amz_headers_is_asked_again_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store vouched for by its answer to the probe stayed so whatever came after: a failure
    (a restart, a redeploy) that put a web server there is asked about again."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    endpoint = Swapped(s3_without_request_id)
    tier, http = open_tier(blobs, endpoint)
    async with http:
        assert await read_whole(tier, digest_of(LAYER)) == LAYER  # vouched by the probe
        endpoint.fail_next = True
        assert await read_whole(tier, digest_of(b"another")) is None
        assert tier.reachable is False  # the 503
        endpoint.swap()
        assert await asyncio.wait_for(tier.download(digest_of(b"another")), GUARD) is None
    assert tier.reachable is False and "not an S3 store" in (tier.last_error or "")


async def test_a_store_without_amz_headers_is_vouched_for_a_while_not_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no failure at all between, the probe's word lapses after S3_TRUST_FOR."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    endpoint = Swapped(s3_without_request_id)
    tier, http = open_tier(blobs, endpoint)
    async with http:
        assert await read_whole(tier, digest_of(LAYER)) == LAYER
        monkeypatch.setattr(objects_module, "S3_TRUST_FOR", 0.0)  # the while is over
        endpoint.swap()
        assert await asyncio.wait_for(tier.download(digest_of(b"another")), GUARD) is None
    assert tier.reachable is False and "not an S3 store" in (tier.last_error or "")


class Counting:
    """``store``, keeping the path of every request."""

    def __init__(self, store: Callable[[httpx.Request], httpx.Response]) -> None:
        self.store = store
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        return self.store(request)


async def test_the_probe_stays_rare(tmp_path: Path) -> None:
    """Guard: a store without ``x-amz-`` headers is probed once for many answers; one with
    them never."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    for store, probes in ((s3_without_request_id, 1), (s3_store, 0)):
        counting = Counting(store)
        tier, http = open_tier(blobs, counting)
        async with http:
            for n in range(4):
                assert await read_whole(tier, digest_of(LAYER)) == LAYER
                assert await read_whole(tier, digest_of(b"%d" % n)) is None
        assert sum(p.endswith(NEVER_STORED.hex) for p in counting.asked) == probes, store
        assert tier.reachable is True


# --- 3. a tier whose uploads all fail shown green ----------------------------------------------


class RefusesUploads(Upstream):
    """The bucket serves reads as an S3 store; every upload is refused (a read-only key) or,
    with ``status`` 507, failed (a full drive)."""

    def __init__(self, refused: int = 403) -> None:
        super().__init__()
        self.refused = refused  # (Upstream.status is the upstream's)

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.bucket_seen.append(f"{request.method} {request.url.path}")
            code = b"AccessDenied" if self.refused == 403 else b"XMinioStorageFull"
            body = b"<Error><Code>" + code + b"</Code><Message>no</Message></Error>"
            return answer(self.refused, body, {"content-type": "application/xml", **REQUEST_ID})
        return super().bucket(request)


@pytest.mark.parametrize(("status", "why"), [(403, "refuses uploads"), (507, "fails uploads")])
async def test_a_store_that_takes_no_upload_shows_degraded(
    tmp_path: Path, status: int, why: str
) -> None:
    """Its reads answered, its every upload refused or failed: ``reachable`` and a green badge,
    the trouble only in counts and ``last_error``."""
    async with stack(tmp_path, settings=SHARED, upstream=RefusesUploads(status)) as mirror:
        pulled = await mirror.get(blob_path())
        await mirror.committed()
        tier = mirror_state(mirror.app).running.blobs.shared
        assert tier is not None
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        public = json.loads((await mirror.get("/health")).body)
        _, page = await mirror.admin_get("/status")
    assert pulled.status == 200 and tier.counts.upload_failed == 1
    shared = public["shared"]
    assert public["status"] == "ok"  # a detail, never the mirror's status
    assert (shared["reachable"], shared["state"]) == (True, "degraded"), shared
    assert why in shared["reason"] and "AccessDenied" not in shared["reason"]
    assert 'id=shared-state class="badge warn">degraded' in page
    assert why in page


async def test_a_full_upload_queue_shows_degraded(tmp_path: Path) -> None:
    """Uploads waiting to the queue's bound (new ones dropped) while the store answers reads."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    held = asyncio.Event()

    async def slow_puts(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            await asyncio.wait_for(held.wait(), GUARD)
            return answer(200, b"", REQUEST_ID)
        return s3_store(request)

    layers = [await cache(blobs, layer) for layer in LAYERS[:3]]
    where = Bucket("http://127.0.0.170:9", BUCKET, "us-east-1", "docxy", "x")  # never dialled
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow_puts)) as http:
        tier = SharedTier(ObjectStore(where, http), blobs, 1)
        tier.uploads.max_waiting = 1
        assert await read_whole(tier, digest_of(LAYER)) == LAYER  # reads answered
        tier.filled(layers[0])
        await asyncio.sleep(0.05)  # its upload waits on its PUT
        for layer in layers[1:]:
            tier.filled(layer)  # one waits, the queue is full: the next is dropped
        state = tier.public_report()
        held.set()
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
        after = tier.public_report()
    assert (state["uploads_waiting"], state["uploads_dropped"]) == (1, 1)
    assert (state["state"], after["state"]) == ("degraded", "reachable"), state
    assert "upload queue is full" in str(state["reason"])
