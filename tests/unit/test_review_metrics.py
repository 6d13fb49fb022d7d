"""What the mirror reports about itself: /metrics for the states /health and the status page
gained (the shared tier's ``degraded``, the renewer refusing its settings), and the public
/health kept free of where the shared store is and what it said.

Every mirror here is the loopback-free ASGI stack of ``tests.unit.test_observe_routes`` (the
upstream and the bucket are an ``httpx.MockTransport``): nothing is dialled.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest

from docxy.http.state import mirror_state
from docxy.shared.tier import SharedTier
from docxy.tls import certs
from tests.unit.test_observe_routes import (
    SHARED,
    STORE_HOST,
    Stack,
    Upstream,
    answer,
    blob_path,
    stack,
)
from tests.unit.test_review_shared4 import RefusesUploads

GUARD = 10.0
REASONS = ("upload_queue_full", "uploads_failing", "uploads_refused")


def tier_of(mirror: Stack) -> SharedTier:
    tier = mirror_state(mirror.app).running.blobs.shared
    assert tier is not None
    return tier


async def pulled_through(mirror: Stack) -> SharedTier:
    """One blob pulled (a shared miss, a fill from the upstream, its upload tried)."""
    assert (await mirror.get(blob_path())).status == 200
    await mirror.committed()
    tier = tier_of(mirror)
    await asyncio.wait_for(tier.uploads.drained(), GUARD)
    return tier


def degraded(seen: dict[str, float]) -> dict[str, float]:
    """docxy_shared_degraded's samples, by reason (an empty dict: no such series)."""
    return {
        reason: seen[key]
        for reason in REASONS
        if (key := f"docxy_shared_degraded{{reason={reason}}}") in seen
    }


# --- 1. the shared tier's degraded state on /metrics ------------------------------------------


@pytest.mark.parametrize(("status", "reason"), [(403, "uploads_refused"), (507, "uploads_failing")])
async def test_a_store_that_takes_no_upload_is_degraded_on_metrics(
    tmp_path: Path, status: int, reason: str
) -> None:
    """/health and the status page say ``degraded`` (reads answered, uploads refused or
    failing): /metrics had only docxy_shared_up 1, as for a store that is fine."""
    async with stack(tmp_path, settings=SHARED, upstream=RefusesUploads(status)) as mirror:
        tier = await pulled_through(mirror)
        seen = await mirror.scrape()
        said = json.loads((await mirror.get("/health")).body)["shared"]
    assert tier.counts.upload_failed == 1 and said["state"] == "degraded", said
    assert seen["docxy_shared_up{}"] == 1
    assert degraded(seen) == {r: float(r == reason) for r in REASONS}, seen


async def test_a_full_upload_queue_is_degraded_on_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stack(tmp_path, settings=SHARED) as mirror:
        tier = await pulled_through(mirror)
        before = degraded(await mirror.scrape())
        monkeypatch.setattr(tier.uploads, "max_waiting", 0)  # full: the next upload dropped
        seen = await mirror.scrape()
        said = json.loads((await mirror.get("/health")).body)["shared"]
    assert said["state"] == "degraded" and "queue is full" in said["reason"], said
    assert before == dict.fromkeys(REASONS, 0.0)  # a store that took its upload
    assert degraded(seen) == {r: float(r == "upload_queue_full") for r in REASONS}


async def test_an_unreachable_store_is_down_not_degraded(tmp_path: Path) -> None:
    """Down is docxy_shared_up 0; degraded is for a store that answers reads."""

    class Down(Upstream):
        def bucket(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused")

    async with stack(tmp_path, settings=SHARED, upstream=Down()) as mirror:
        await pulled_through(mirror)
        seen = await mirror.scrape()
    assert seen["docxy_shared_up{}"] == 0
    assert degraded(seen) == dict.fromkeys(REASONS, 0.0)


# --- 1. the renewer refusing its settings on /metrics -----------------------------------------


def with_renewal(mirror: Stack, config_dir: Path) -> None:
    """The renewer's status under ``renewal`` (as docxy.http.server.run registers it)."""
    providers = mirror_state(mirror.app).extras.setdefault("health", {})
    providers["renewal"] = lambda: certs.renewal_status(config_dir)


@pytest.mark.parametrize("refused", [True, False])
async def test_the_renewer_refusing_its_settings_is_on_metrics(
    tmp_path: Path, refused: bool
) -> None:
    """A renewer holding on a bad [scheduler] setting has made no run (last_run_ok NaN) or
    shows its last one before (1): /health said ``degraded``, /metrics had nothing to alert
    on."""
    config_dir = tmp_path / "letsencrypt"
    config_dir.mkdir()
    status: dict[str, object] = {"last_run": None, "next_run": None, "failures": 0}
    if refused:
        status["refused"] = "scheduler.interval: not a duration: 'soon'"
    (config_dir / certs.STATUS_FILE).write_text(json.dumps(status))
    async with stack(tmp_path) as mirror:
        with_renewal(mirror, config_dir)
        seen = await mirror.scrape()
        health = json.loads((await mirror.get("/health")).body)
    assert health["status"] == ("degraded" if refused else "ok")
    assert math.isnan(seen["docxy_cert_renewal_last_run_ok{}"])
    assert seen["docxy_cert_renewal_settings_refused{}"] == float(refused)


async def test_no_renewer_status_is_unknown_not_fine(tmp_path: Path) -> None:
    """No status file to read (the renewer not started yet): NaN, not 0."""
    async with stack(tmp_path) as mirror:
        with_renewal(mirror, tmp_path / "nowhere")
        seen = await mirror.scrape()
    assert math.isnan(seen["docxy_cert_renewal_settings_refused{}"])


# --- 3. the public /health names no store, bucket or store message ---------------------------

MARK = "secret-account-4711"  # what an S3 error message may name: the account, the key


class Troubled(Upstream):
    """A bucket that answers every request with ``status`` and a message naming the account,
    the bucket and the key, or (``status`` None) does not connect, naming its address."""

    def __init__(self, status: int | None) -> None:
        super().__init__()
        self.trouble = status

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if self.trouble is None:
            raise httpx.ConnectError(f"cannot reach {STORE_HOST}:8333 for {MARK}")
        if request.method != "PUT" and self.trouble in (403, 507):  # reads answered
            return super().bucket(request)
        code = b"AccessDenied" if self.trouble == 403 else b"InternalError"
        said = f"{MARK} may not touch {SHARED['shared.bucket']}{request.url.path}".encode()
        body = b"<Error><Code>" + code + b"</Code><Message>" + said + b"</Message></Error>"
        headers = {"content-type": "application/xml", "x-amz-request-id": "18EE17D3BF0E9510"}
        return answer(self.trouble, body, headers)


@pytest.mark.parametrize("status", [None, 403, 500, 507])
async def test_the_public_health_names_no_store_nor_what_it_said(
    tmp_path: Path, status: int | None
) -> None:
    """The admin /status.json has the store's words and where it is; the public /health, in
    every state the tier gets to, has neither (and it stays ``ok``: a detail)."""
    async with stack(tmp_path, settings=SHARED, upstream=Troubled(status)) as mirror:
        await pulled_through(mirror)
        public = (await mirror.get("/health")).body.decode()
        code, admin = await mirror.admin_get("/status.json")
    assert code == 200 and MARK in admin and STORE_HOST in admin, admin  # said, on the admin side
    report = json.loads(public)
    assert report["status"] == "ok" and report["shared"]["state"] != "reachable", report
    for secret in (MARK, STORE_HOST, SHARED["shared.bucket"], SHARED["shared.access_key"]):
        assert secret not in public, (secret, public)
    assert not {"endpoint", "bucket", "last_error", "last_error_at", "last_ok"} & set(
        report["shared"]
    )


# --- 2. the README against what the mirror shows ----------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
#: Labels whose values are not listed one by one: a host, the version, HTTP's own words.
OPEN_LABELS = {"upstream", "version", "le", "method", "status_class"}


def metrics_table() -> str:
    section = README.read_text().split("\n## Metrics and the status page\n")[1]
    return "\n".join(line for line in section.split("\n## ")[0].splitlines() if line[:3] == "| `")


async def test_every_label_value_metrics_exports_is_in_the_readme_table(tmp_path: Path) -> None:
    """A value a Prometheus user writes into an alert (``reason="uploads_refused"``,
    ``setting="limits.bandwidth"``, ``kind="broke_off"``) is one the README's table names."""
    config_dir = tmp_path / "letsencrypt"
    config_dir.mkdir()
    (config_dir / certs.STATUS_FILE).write_text(json.dumps({"last_run": None, "failures": 0}))
    async with stack(tmp_path, settings=SHARED, upstream=RefusesUploads(403)) as mirror:
        with_renewal(mirror, config_dir)
        await pulled_through(mirror)
        seen = await mirror.scrape()
    table = metrics_table()
    values = {
        (label, value)
        for key in seen
        if key.startswith("docxy_")
        for pair in key[key.index("{") + 1 : -1].split(",")
        if pair
        for label, _, value in [pair.partition("=")]
        if label not in OPEN_LABELS
    }
    assert ("reason", "uploads_refused") in values and ("kind", "broke_off") in values
    assert sorted(pair for pair in values if f"`{pair[1]}`" not in table) == []


async def test_the_status_page_shows_what_the_readme_says_it_does(tmp_path: Path) -> None:
    """README: with [shared] the page has the bucket (endpoint and bucket, its state and why
    when degraded, its last answer, its last error and when); a renewer refusing its settings
    and a --once stopped by a signal are on it too."""
    config_dir = tmp_path / "letsencrypt"
    config_dir.mkdir()
    status = {
        "last_run": "2026-11-30T03:00:00Z",
        "failures": 0,
        "refused": "scheduler.interval: not a duration",
        "interrupted": {"at": "2026-11-30T02:00:00Z", "signal": "SIGTERM"},
    }
    (config_dir / certs.STATUS_FILE).write_text(json.dumps(status))
    async with stack(tmp_path, settings=SHARED, upstream=RefusesUploads(403)) as mirror:
        with_renewal(mirror, config_dir)
        await pulled_through(mirror)
        code, page = await mirror.admin_get("/status")
        health = json.loads((await mirror.get("/health")).body)
    assert code == 200
    for shown in (STORE_HOST, SHARED["shared.bucket"], "degraded", "refuses uploads"):
        assert shown in page, shown
    assert "last answer" in page and "last error" in page and "AccessDenied" in page
    assert "settings refused: scheduler.interval" in page
    assert "one-off run stopped 2026-11-30 02:00:00Z" in page and "SIGTERM" in page
    assert health["renewal"]["interrupted"] == {"at": "2026-11-30T02:00:00Z", "signal": "SIGTERM"}
