"""An object store that answers uploads with trouble of its own but still serves reads: a
MinIO whose drives are full (``507``), S3 throttling writes (``503 SlowDown``). Its uploads
rest; its reads go on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import httpx
import pytest

from docxy.http.state import mirror_state
from docxy.shared import tier
from tests.unit.test_observe_routes import BLOB, BLOB_DIGEST, SHARED, Upstream, answer, stack

OTHER = b"another layer " * 1000
OTHER_DIGEST = "sha256:" + hashlib.sha256(OTHER).hexdigest()
FULL = b"<Error><Code>XMinioStorageFull</Code><Message>Storage backend is full</Message></Error>"


class FullStore(Upstream):
    """The upstream also has OTHER (not in the bucket); the bucket holds BLOB and answers
    every PUT ``507``."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/blobs/{OTHER_DIGEST}"):
            self.seen.append(f"{request.method} {request.url.path}")
            return answer(200, OTHER)
        return super().__call__(request)

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.bucket_seen.append(f"PUT {request.url.path}")
            return answer(507, FULL)
        return super().bucket(request)


def path_of(digest: str) -> str:
    return f"/v2/library/hello/blobs/{digest}"


async def test_a_store_that_takes_no_uploads_is_still_read_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the upload's 507 rested the whole tier: the next miss, whose blob the bucket
    held, went to the upstream, and every 30 s the next upload rested it again."""
    caplog.set_level(logging.INFO, "docxy.shared")
    upstream = FullStore(in_bucket=True)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = mirror_state(mirror.app).running.blobs.shared
        assert shared is not None
        assert (await mirror.get(path_of(OTHER_DIGEST))).status == 200  # from the upstream
        await mirror.committed()
        await asyncio.wait_for(shared.uploads.drained(), 10)
        assert (shared.counts.upload_failed, shared.counts.errors) == (1, 1)
        second = await mirror.get(path_of(BLOB_DIGEST))
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
        assert second.status == 200 and second.body == BLOB
        assert f"GET {path_of(BLOB_DIGEST)}" not in upstream.seen  # read from the bucket
        assert (health["reachable"], health["hits"]) == (True, 1)
        assert shared.last_error is not None and "507" in shared.last_error
        assert shared.uploads.waiting == 0  # not offered while the uploads rest
    puts = [line for line in upstream.bucket_seen if line.startswith("PUT ")]
    assert len(puts) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "fails uploads" in warned[0] and "reads" in warned[0]


async def test_uploads_are_tried_again_once_the_rest_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = FullStore(in_bucket=False)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = mirror_state(mirror.app).running.blobs.shared
        assert shared is not None
        assert (await mirror.get(path_of(OTHER_DIGEST))).status == 200
        await mirror.committed()
        await asyncio.wait_for(shared.uploads.drained(), 10)
        monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)  # the 30 s are over
        assert (await mirror.get(path_of(BLOB_DIGEST))).status == 200
        await mirror.committed()
        await asyncio.wait_for(shared.uploads.drained(), 10)
    puts = [line for line in upstream.bucket_seen if line.startswith("PUT ")]
    assert len(puts) == 2
