"""Review findings on the shared tier (a third round's second reviewer: test_review_shared3 and
3b were taken by earlier rounds), each a test that failed before its mend.

1. A read-only replica (``shared.uploads = 0``) had no metric saying so.
2. A blob whose object a replica found bad stayed marked bad until a restart, even once another
   replica had replaced the object: a read-only replica, which never uploads, fetched it
   upstream for good. Shown with the real store (SeaweedFS's ``weed``, on 127.0.68.1).
3. An object whose body runs past the length it claims failed the fill as a failed fetch, not
   as a corrupt object: not marked bad, read again (and the fill cut) at every miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import ByteStream

import lab.objectstore as lab_objectstore
from docxy.core.digests import parse_digest
from docxy.shared import tier as tier_module
from docxy.shared.objects import Bucket, signed_headers
from tests.unit.test_observe_routes import (
    BLOB,
    BLOB_DIGEST,
    SHARED,
    Upstream,
    answer,
    blob_path,
    stack,
)
from tests.unit.test_review_metrics import pulled_through, tier_of
from tests.unit.test_shared_resume import CUT_AT, BreaksOff, CutBucket
from tests.unit.weed import weed_on

READ_ONLY = {**SHARED, "shared.uploads": "0"}


# --- 1. a read-only replica on /metrics ---------------------------------------------------------


@pytest.mark.parametrize(("settings", "enabled"), [(READ_ONLY, 0.0), (SHARED, 1.0)])
async def test_metrics_say_whether_this_replica_uploads(
    tmp_path: Path, settings: dict[str, str], enabled: float
) -> None:
    async with stack(tmp_path, settings=settings) as mirror:
        await pulled_through(mirror)
        seen = await mirror.scrape()
    assert seen.get("docxy_shared_uploads_enabled{}") == enabled, sorted(seen)


async def test_no_uploads_gauge_without_the_shared_tier(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        assert (await mirror.get(blob_path())).status == 200
        seen = await mirror.scrape()
    assert not [name for name in seen if name.startswith("docxy_shared_")], sorted(seen)


# --- 3. an object whose body is not the length it claims ----------------------------------------


class MisframedObject(Upstream):
    """The object's ``Content-Length`` is not its body's length (``extra`` bytes of junk after
    the blob, or ``-extra`` of it missing, the body ending cleanly): a store that lost track
    of what it holds."""

    def __init__(self, extra: int) -> None:
        super().__init__(in_bucket=True)
        self.extra = extra

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(BLOB_HEX):
            self.bucket_seen.append(f"GET {request.url.path}")
            body = BLOB + b"j" * self.extra if self.extra > 0 else BLOB[: self.extra]
            return answer(200, body, {"Content-Length": str(len(BLOB))})
        return super().bucket(request)


BLOB_HEX = blob_path().rsplit(":", 1)[1]


@pytest.mark.parametrize("extra", [100, -100])
async def test_an_object_not_the_length_it_claims_is_corrupt_and_marked_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: int
) -> None:
    upstream = MisframedObject(extra)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO)
        first = await mirror.get(blob_path())
        await mirror.committed()
        second = await mirror.get(blob_path())
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
    # Never the object's bytes as the blob: cut, or (the junk seen before a byte went out)
    # passed through from the upstream.
    assert first.body == BLOB if extra > 0 else first.body != BLOB
    assert (second.status, second.body == BLOB) == (200, True)
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert len(gets) == 1, gets  # marked bad: the second miss went to the upstream
    assert (health["corrupt"], health["hits"], health["errors"]) == (1, 0, 0), health
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([said for said in warnings if "marked bad" in said]) == 1, warnings


class ClaimsAnotherLength(CutBucket):
    """The object says ``claimed`` bytes (not the blob's) and its body breaks off after
    ``CUT_AT`` of them: what a store that lost part of an object (or its length) sends. The
    upstream's rest from there says the blob's own length, another."""

    def __init__(self, claimed: int) -> None:
        super().__init__("honoured")
        self.claimed = claimed

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(BLOB_HEX):
            self.bucket_seen.append(f"GET {request.url.path}")
            headers = {"Content-Length": str(self.claimed)}
            return httpx.Response(200, headers=headers, stream=BreaksOff(BLOB[:CUT_AT]))
        return super().bucket(request)


@pytest.mark.parametrize("claimed", [len(BLOB) + 100, len(BLOB) - 100])
async def test_an_object_whose_length_the_upstreams_rest_denies_is_corrupt_and_marked_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, claimed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body broke off, and the upstream's rest says the blob has another length than the
    object claims: the object is not the blob (its clients, told its length, are cut). It is
    counted corrupt and marked bad, as an object that does not verify: the next miss (the
    store's rest over) is the upstream's, not the object's again and a cut again."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the break's rest is over at once
    upstream = ClaimsAnotherLength(claimed)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO)
        first = await mirror.get(blob_path())
        await mirror.committed()
        second = await mirror.get(blob_path())
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
    assert first.body != BLOB  # cut: its Content-Length was the object's
    assert (second.status, second.body == BLOB) == (200, True)
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert len(gets) == 1, gets  # marked bad: the second miss went to the upstream
    assert (health["corrupt"], health["hits"], health["resumed"]) == (1, 0, 0), health
    said = [r.getMessage() for r in caplog.records if "marked bad" in r.getMessage()]
    assert len(said) == 1 and f"{claimed} bytes" in said[0], said


# --- 2. a blob marked bad, its object replaced since: the real store ----------------------------

WEED_HOST = "127.0.68.1"  # this review's loopback range: 127.0.68.1-9, ports 11550-11599
WEED_PORTS = range(11550, 11600)
GUARD = 30.0
DIGEST = parse_digest(BLOB_DIGEST)


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab_objectstore.ObjectStore]:
    """SeaweedFS (``lab.objectstore``) on ``WEED_HOST``, its listeners on ``WEED_PORTS``."""
    with weed_on(tmp_path_factory.mktemp("weed"), WEED_HOST, WEED_PORTS) as store:
        yield store


class Replica(Upstream):
    """A replica's upstream (a MockTransport, as ever), its bucket the real store: each store
    request is sent to it (and noted), its answer read whole."""

    def __init__(self, store: lab_objectstore.ObjectStore, client: httpx.AsyncClient) -> None:
        super().__init__()
        self.store, self.client = store, client

    async def send(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != WEED_HOST:
            return self(request)
        self.bucket_seen.append(f"{request.method} {request.url.path}")
        got = await self.client.send(request)
        return httpx.Response(got.status_code, headers=got.headers, stream=ByteStream(got.content))


def replica_settings(store: lab_objectstore.ObjectStore, *, read_only: bool) -> dict[str, str]:
    key, secret = (
        (store.reader_key, store.reader_secret)
        if read_only
        else (store.access_key, store.secret_key)
    )
    return {
        "shared.endpoint": store.url,
        "shared.bucket": store.bucket,
        "shared.access_key": key,
        "shared.secret_key": secret,
        "shared.prefix": f"bad-{uuid.uuid4().hex[:8]}",  # this test's own keys in the bucket
        **({"shared.uploads": "0"} if read_only else {}),
    }


def object_gets(replica: Replica) -> list[str]:
    return [line for line in replica.bucket_seen if line.startswith("GET ") and BLOB_HEX in line]


def object_heads(replica: Replica) -> list[str]:
    return [line for line in replica.bucket_seen if line.startswith("HEAD ") and BLOB_HEX in line]


async def put_object(store: lab_objectstore.ObjectStore, prefix: str, body: bytes) -> None:
    """Plant ``body`` as the blob's object (a bucket writer's doing), with the writing key."""
    bucket = Bucket(
        store.url, store.bucket, store.region, store.access_key, store.secret_key, prefix
    )
    url = bucket.url(DIGEST)
    headers = signed_headers(bucket, "PUT", url, hashlib.sha256(body).hexdigest())
    async with httpx.AsyncClient(timeout=GUARD) as client:
        assert (await client.put(url, headers=headers, content=body)).status_code == 200


def shared_health(body: bytes) -> dict[str, Any]:
    said: dict[str, Any] = json.loads(body)["shared"]
    return said


async def test_a_read_only_replica_reads_an_object_replaced_since_it_found_it_bad(
    tmp_path: Path, weed: lab_objectstore.ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad object (the blob's length, other bytes) in the bucket: the read-only replica's
    fill from it is cut and the object marked bad; its next misses go upstream without reading
    the bad object again (a HEAD once ``BAD_RECHECK`` passed, nothing before). The writing
    replica, finding it bad too, replaces it with its verified copy; the read-only replica's
    next miss then serves the blob from the bucket."""
    reader_settings = replica_settings(weed, read_only=True)
    prefix = reader_settings["shared.prefix"]
    writer_settings = {**replica_settings(weed, read_only=False), "shared.prefix": prefix}
    await put_object(weed, prefix, bytes(len(BLOB)))
    async with httpx.AsyncClient(timeout=GUARD) as client:
        reader, writer = Replica(weed, client), Replica(weed, client)
        async with (
            stack(
                tmp_path / "reader",
                settings=reader_settings,
                upstream=reader,
                transport_handler=reader.send,
            ) as edge,
            stack(
                tmp_path / "writer",
                settings=writer_settings,
                upstream=writer,
                transport_handler=writer.send,
            ) as main,
        ):
            edge_tier = tier_of(edge)

            async def pull_on_edge() -> bytes:
                pulled = await edge.get(blob_path())
                await edge.committed()
                if edge_tier.blobs.holds(DIGEST):  # a miss again next time
                    assert edge_tier.blobs.remove(DIGEST)
                return pulled.body

            assert await pull_on_edge() != BLOB  # the bad object: cut
            assert edge_tier.counts.corrupt == 1
            assert await pull_on_edge() == BLOB  # from the upstream
            assert (len(object_gets(reader)), object_heads(reader)) == (1, [])
            monkeypatch.setattr(tier_module, "BAD_RECHECK", 0.0)
            assert await pull_on_edge() == BLOB  # asked: the same bad object, not read again
            assert (len(object_gets(reader)), len(object_heads(reader))) == (1, 1)

            # The writing replica finds it bad too, and replaces it with its verified copy.
            assert (await main.get(blob_path())).body != BLOB
            assert (await main.get(blob_path())).body == BLOB
            await main.committed()
            main_tier = tier_of(main)
            await asyncio.wait_for(main_tier.uploads.drained(), GUARD)
            assert main_tier.counts.uploaded == 1, main_tier.counts

            upstream_gets = len([line for line in reader.seen if BLOB_HEX in line])
            assert await pull_on_edge() == BLOB
            health = shared_health((await edge.get("/health")).body)
        assert len([line for line in reader.seen if BLOB_HEX in line]) == upstream_gets
        assert len(object_gets(reader)) == 2  # read again once replaced
        assert (health["hits"], health["corrupt"], health["uploads"]) == (1, 1, "off"), health
        assert [line for line in reader.bucket_seen if line.startswith("PUT ")] == []
