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

import json
import logging
from pathlib import Path

import httpx
import pytest

from docxy.shared import tier as tier_module
from tests.unit.test_observe_routes import (
    BLOB,
    SHARED,
    Upstream,
    answer,
    blob_path,
    stack,
)
from tests.unit.test_review_metrics import pulled_through
from tests.unit.test_shared_resume import CUT_AT, BreaksOff, CutBucket

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
    assert first.body != BLOB  # cut, never served whole nor with junk
    assert (second.status, second.body == BLOB) == (200, True)
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert len(gets) == 1, gets  # marked bad: the second miss went to the upstream
    assert (health["corrupt"], health["hits"], health["errors"]) == (1, 0, 0), health
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("marked bad" in said for said in warnings), warnings


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
