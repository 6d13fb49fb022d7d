"""Review findings on a replica meant only to read the shared bucket (test_review_shared, 2, 3,
3b and 4 were taken by earlier rounds): each a test that failed before its mend.

A replica given a read-only key on purpose (an edge replica, a second site) had no way to say
so: every fill tried an upload, the store refused it, and the bucket stayed ``degraded`` ("the
store refuses uploads", ``docxy_shared_degraded{reason="uploads_refused"}`` 1) for good.
``shared.uploads = 0`` now makes it read-only.

Every mirror here is the loopback-free ASGI stack of ``tests.unit.test_observe_routes`` (the
upstream and the bucket are an ``httpx.MockTransport``): nothing is dialled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.config import describe, load_config
from docxy.core.digests import digest_of
from docxy.core.errors import ConfigError
from docxy.shared.uploads import UploadQueue
from tests.unit.test_observe_routes import BLOB, SHARED, blob_path, stack
from tests.unit.test_review_metrics import REASONS, degraded, pulled_through
from tests.unit.test_review_shared4 import RefusesUploads

READ_ONLY = {**SHARED, "shared.uploads": "0"}


def puts(upstream: RefusesUploads) -> list[str]:
    return [line for line in upstream.bucket_seen if line.startswith("PUT ")]


# --- 1. shared.uploads = 0: a read-only replica -----------------------------------------------


async def test_a_read_only_replica_sends_no_upload_and_is_not_degraded(tmp_path: Path) -> None:
    """Its key may only read (every PUT would be refused): with ``shared.uploads = 0`` it sends
    none, the bucket is ``reachable`` (not ``degraded``), /health, the status page and /metrics
    say so."""
    upstream = RefusesUploads(403)
    async with stack(tmp_path, settings=READ_ONLY, upstream=upstream) as mirror:
        tier = await pulled_through(mirror)  # a shared miss, filled from the upstream
        seen = await mirror.scrape()
        said = json.loads((await mirror.get("/health")).body)["shared"]
        _, page = await mirror.admin_get("/status")
        assert tier.uploads.waiting == 0 and tier.uploads.running == 0
    assert puts(upstream) == []
    assert (said["state"], said["reason"], said["uploads"]) == ("reachable", None, "off"), said
    assert (said["upload_failed"], said["uploads_dropped"]) == (0, 0), said
    assert seen["docxy_shared_up{}"] == 1
    assert degraded(seen) == dict.fromkeys(REASONS, 0.0), seen
    assert 'class="badge ok">reachable' in page
    assert "read-only" in page


async def test_a_read_only_replica_still_serves_what_the_bucket_holds(tmp_path: Path) -> None:
    upstream = RefusesUploads(403)
    upstream.in_bucket = True
    async with stack(tmp_path, settings=READ_ONLY, upstream=upstream) as mirror:
        pulled = await mirror.get(blob_path())
        await mirror.committed()
        said = json.loads((await mirror.get("/health")).body)["shared"]
    assert pulled.status == 200 and pulled.body == BLOB
    assert f"GET {blob_path()}" not in upstream.seen  # its bytes not read from the upstream
    assert (said["hits"], said["state"], said["uploads"]) == (1, "reachable", "off"), said
    assert puts(upstream) == []


async def test_the_default_still_uploads_and_a_refusal_still_degrades(tmp_path: Path) -> None:
    """Unchanged without the setting: an upload tried, its refusal shown as ``degraded``."""
    upstream = RefusesUploads(403)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        tier = await pulled_through(mirror)
        said = json.loads((await mirror.get("/health")).body)["shared"]
        assert tier.uploads.concurrency == 2
    assert len(puts(upstream)) == 1
    assert said["state"] == "degraded", said
    assert "refuses uploads" in said["reason"]


async def test_an_upload_queue_of_no_uploads_takes_none_and_drops_none() -> None:
    """What a read-only replica's tier has: an offer is refused, no worker starts, and nothing
    counts as dropped (which would read as uploads lost)."""
    made: list[object] = []

    async def upload(digest: object) -> None:
        made.append(digest)

    queue = UploadQueue(upload, 0)
    assert queue.offer(digest_of(b"a blob")) is False
    await queue.drained()
    assert (made, queue.waiting, queue.running, queue.dropped) == ([], 0, 0, 0)
    with pytest.raises(ValueError):
        UploadQueue(upload, -1)


# --- 2. the setting ---------------------------------------------------------------------------


def test_shared_uploads_takes_0_and_show_config_says_read_only() -> None:
    config = load_config(READ_ONLY, environ={})
    assert config.shared.uploads == 0
    rows = {key: value for key, value, _ in describe(config)}
    assert "read-only" in rows["shared.uploads"], rows["shared.uploads"]
    from_env = load_config({}, environ={"DOCXY_SHARED_UPLOADS": "0"})
    assert from_env.shared.uploads == 0
    assert {key: value for key, value, _ in describe(load_config(SHARED, environ={}))}[
        "shared.uploads"
    ] == "2"


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_shared_uploads_out_of_range_is_refused_saying_the_range(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({**SHARED, "shared.uploads": value}, environ={})
    said = str(refused.value)
    assert "shared.uploads" in said and "0-64" in said, said
