"""Review findings on the shared tier (an operator's two or three replicas on one bucket), each a
test seen failing before its mend."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.config import load_config
from docxy.core.digests import Digest
from docxy.core.errors import ConfigError
from docxy.shared.uploads import UploadQueue
from tests.unit.test_observe_routes import BLOB, SHARED, Upstream, blob_path, stack
from tests.unit.test_review_shared3 import GUARD, cache, open_tier, s3_missing
from tests.unit.test_shared import ON

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

# --- 1. a secret that is not text signs nothing, and every miss's fill crashed ---------------

#: A MinIO password with an umlaut, from an ``.env`` saved as Latin-1: Python reads the
#: environment's undecodable byte as a lone surrogate (PEP 383), which no UTF-8 encodes.
LATIN1_SECRET = "p\udce4sswort-geheim"


def test_a_secret_key_that_is_not_utf8_text_stops_start_up_without_showing_it() -> None:
    """The secret is HMAC key material, encoded as UTF-8 for every request's signature: a
    value with an undecodable byte was taken at start-up, then every miss's fill crashed in
    the signer (an ERROR traceback naming one of the secret's characters and its place), the
    pull passed through uncached (``reason=upstream-failed``): nothing was ever cached."""
    settings = {key: value for key, value in ON.items() if key != "shared.secret_key"}
    with pytest.raises(ConfigError, match=r"shared\.secret_key") as failure:
        load_config(settings, environ={"DOCXY_SHARED_SECRET_KEY": LATIN1_SECRET})
    said = str(failure.value)
    assert "env DOCXY_SHARED_SECRET_KEY" in said  # where it came from
    assert "\udce4" not in said and "geheim" not in said and "ssw" not in said


async def test_every_miss_is_cached_with_the_secret_a_replica_can_be_given(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side of the check above: any secret start-up takes signs, and a miss through
    the tier is cached (no fill crashes in the signer)."""
    upstream = Upstream(in_bucket=True)
    settings = {**SHARED, "shared.secret_key": "p\u00e4sswort geheim"}  # valid text: taken
    with caplog.at_level(logging.INFO):
        async with stack(tmp_path, settings=settings, upstream=upstream) as mirror:
            assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
            first = await mirror.get(blob_path())
            assert (first.status, first.body) == (200, BLOB)
            await mirror.committed()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]  # kept
    assert any(seen.startswith("GET ") for seen in upstream.bucket_seen)


# --- 2. an upload offered after the shutdown cancelled the queue ----------------------------


async def test_nothing_is_uploaded_once_the_queue_was_cancelled_at_shutdown() -> None:
    """At a stop the queue is cancelled, then the store's client closed; a fill whose commit
    ends after that (a big blob's sync) offered its blob all the same: a new worker started
    an upload on the closed client (``RuntimeError``, an ERROR traceback at every such stop),
    or against the store while the process went down. The README: "queued at shutdown, is
    not uploaded later"."""
    started: list[Digest] = []

    async def upload(digest: Digest) -> None:
        started.append(digest)

    queue = UploadQueue(upload, concurrency=1)
    queue.cancel()
    offered = queue.offer(Digest("sha256", "cd" * 32))
    await asyncio.wait_for(queue.drained(), GUARD)
    assert (offered, started, queue.running) == (False, [], 0)


async def test_a_blob_filled_after_the_tier_stopped_is_not_sent_on_its_closed_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 20, write_buffer=0)
    sent: list[str] = []

    def store(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return s3_missing(request)

    tier, http = open_tier(blobs, store)
    digest = await cache(blobs, b"a layer committed as the mirror stops " * 50)
    tier.uploads.cancel()  # the lifespan's end: the queue first, then its client
    await http.aclose()
    with caplog.at_level(logging.ERROR):
        tier.filled(digest)  # that fill's commit ended only now
        await asyncio.wait_for(tier.uploads.drained(), GUARD)
    assert sent == [] and tier.counts.upload_failed == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 3. a good object larger than this replica's whole cache was counted corrupt ---------------

#: This replica's cache: smaller than the layer (``BLOB``, 12000 bytes), which a replica with a
#: bigger cache fetched and uploaded: the object is the blob, only too large to keep here.
SMALL_CACHE = "8K"


async def test_a_good_object_too_large_for_this_replica_is_not_counted_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replicas of one bucket need not have caches of one size. An object longer than this
    replica's whole cache was marked bad at once: counted ``corrupt`` (the README: "an object
    read whole that did not verify"; it was not even read) with a WARNING "marked bad", for
    the very blob the upstream then served at that length: an alert on
    ``docxy_shared_blobs_total{result="corrupt"}`` fired for a healthy bucket. The pull is
    still the upstream's (passed through, too large to cache), and the object not asked again."""
    upstream = Upstream(in_bucket=True)  # the object is the blob, at its length
    settings = {**SHARED, "cache.max_size": SMALL_CACHE}
    with caplog.at_level(logging.INFO):
        async with stack(tmp_path, settings=settings, upstream=upstream) as mirror:
            assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
            for _ in range(2):
                pulled = await mirror.get(blob_path())
                assert (pulled.status, pulled.body) == (200, BLOB)
            health = json.loads((await mirror.get("/health")).body)["shared"]
    assert len([seen for seen in upstream.bucket_seen if seen.startswith("GET ")]) == 1
    assert health["corrupt"] == 0, health
    # (start-up warns of a cache this small: not the bucket's business)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("docxy.shared", "docxy.cache"))
    ]
    assert warnings == [], warnings
