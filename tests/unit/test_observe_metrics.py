"""Prometheus metrics: per-request counters, and what the collector reads at scrape time."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from docxy.cache import digest_of, open_cache
from docxy.cache.fill import BlobFollower, BlobWriter
from docxy.config import load_config
from docxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from docxy.http.health import health_report
from docxy.http.state import MirrorState
from docxy.observe.metrics import (
    RequestMetrics,
    bounded_method,
    leading_number,
    make_registry,
    route_kind,
    status_class,
    timestamp,
)
from docxy.tasks import spawn
from docxy.upstream.client import Upstream, UpstreamClient

DIGEST = "sha256:" + "a" * 64
UPSTREAM = "http://upstream.test"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v2/", "ping"),
        ("/v2", "ping"),
        ("/v2/library/redis/manifests/7", "manifest"),
        (f"/v2/library/redis/manifests/{DIGEST}", "manifest"),
        (f"/v2/a/b/c/blobs/{DIGEST}", "blob"),
        ("/v2/library/redis/blobs/not-a-digest", "other"),
        ("/v2/_catalog", "other"),
        ("/auth/token", "token"),
        ("/health", "health"),
        ("/.well-known/acme-challenge/abc", "acme"),
        ("/metrics", "other"),
        ("/cdn/signed/blob", "other"),
    ],
)
def test_route_kind(path: str, kind: str) -> None:
    assert route_kind(path) == kind


@pytest.mark.parametrize(
    ("status", "shown"), [(200, "2xx"), (307, "3xx"), (404, "4xx"), (503, "5xx"), (0, "none")]
)
def test_status_class(status: int, shown: str) -> None:
    assert status_class(status) == shown


def test_methods_stay_a_bounded_set() -> None:
    assert bounded_method("GET") == "GET"
    assert bounded_method("BREW") == "other"


@pytest.mark.parametrize(
    ("text", "number"),
    [("76;w=21600", 76.0), ("100", 100.0), (" 5 ", 5.0), ("none", None), (None, None)],
)
def test_leading_number(text: object, number: float | None) -> None:
    assert leading_number(text) == number


def test_timestamp() -> None:
    assert timestamp("1970-01-02T00:00:00Z") == 86400
    assert timestamp("1970-01-02T01:00:00+01:00") == 86400
    assert timestamp("1970-01-02T00:00:00") == 86400  # naive is UTC
    assert timestamp("yesterday") is None
    assert timestamp(None) is None


def test_request_metrics_count_by_route_method_status_and_source() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    blob = f"/v2/library/hello/blobs/{DIGEST}"
    metrics.request_ended(blob, "GET", 200, 1000, 0.01, {"cache": "hit"})
    metrics.request_ended(blob, "GET", 200, 300, 0.5, {"cache": "miss", "upstream_ms": 200.0})
    metrics.request_ended(blob, "GET", 200, 20, 0.2, {"cache": "uncached", "upstream_ms": 9})
    metrics.request_ended(blob, "GET", 200, 4000, 0.3, {"cache": "shared", "upstream_ms": 50})
    metrics.request_ended("/v2/", "GET", 401, 70, 0.1, {})
    value = registry.get_sample_value
    assert (
        value(
            "docxy_http_requests_total", {"route": "blob", "method": "GET", "status_class": "2xx"}
        )
        == 4
    )
    assert (
        value(
            "docxy_http_requests_total", {"route": "ping", "method": "GET", "status_class": "4xx"}
        )
        == 1
    )
    assert value("docxy_cache_requests_total", {"route": "blob", "outcome": "hit"}) == 1
    assert value("docxy_cache_requests_total", {"route": "blob", "outcome": "miss"}) == 1
    assert value("docxy_sent_bytes_total", {"source": "cache"}) == 1000
    assert value("docxy_sent_bytes_total", {"source": "upstream"}) == 300
    assert value("docxy_sent_bytes_total", {"source": "shared"}) == 4000  # not upstream bytes
    assert value("docxy_cache_requests_total", {"route": "blob", "outcome": "shared"}) == 1
    assert value("docxy_sent_bytes_total", {"source": "passthrough"}) == 20
    assert value("docxy_sent_bytes_total", {"source": "other"}) == 70
    assert value("docxy_upstream_duration_seconds_count", {"route": "blob"}) == 3
    assert value("docxy_upstream_duration_seconds_sum", {"route": "blob"}) == pytest.approx(0.259)
    assert value("docxy_http_request_duration_seconds_count", {"route": "blob"}) == 4


def test_a_manifest_the_disk_refused_counts_as_uncached() -> None:
    """Served on a miss but not kept: it counted as a healthy miss, so a read-only cache disk
    showed only in blobs passed through (uncached), never in manifests."""
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    manifest = "/v2/library/hello/manifests/1"
    refused = {"cache": "miss", "reason": "cache-unwritable", "upstream_ms": 5.0}
    metrics.request_ended(manifest, "GET", 200, 500, 0.1, refused)
    metrics.request_ended(manifest, "GET", 200, 500, 0.1, {**refused, "cache": "joined"})
    metrics.request_ended(manifest, "GET", 200, 500, 0.1, {"cache": "miss", "upstream_ms": 5.0})
    value = registry.get_sample_value
    route = {"route": "manifest"}
    assert value("docxy_cache_requests_total", {**route, "outcome": "uncached"}) == 2
    assert value("docxy_cache_requests_total", {**route, "outcome": "miss"}) == 1
    assert value("docxy_cache_requests_total", {**route, "outcome": "joined"}) == 0
    assert value("docxy_sent_bytes_total", {"source": "upstream"}) == 1000  # sent all the same


def make_state(tmp_path: Path, *, cache: bool = True, max_size: str = "1G") -> MirrorState:
    config = load_config(
        {"upstream.registry": UPSTREAM, "cache.dir": str(tmp_path), "cache.max_size": max_size},
        environ={},
    )
    state = MirrorState(config, Upstream.from_config(config.upstream))
    if cache:
        state.cache = open_cache(tmp_path, max_size=config.cache.max_size, tag_ttl=300)
    return state


async def put(state: MirrorState, data: bytes) -> None:
    assert state.cache is not None
    writer = await state.cache.blobs.fetch_or_join(digest_of(data))
    assert isinstance(writer, BlobWriter)
    async with writer:
        await writer.write(data)
        assert await writer.commit(len(data)) is not None


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """The exposition text as Prometheus would parse it: ``name{labels}`` → value."""
    found: dict[str, float] = {}
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def test_cache_size_fills_followers_and_evictions_are_read_at_scrape_time(
    tmp_path: Path,
) -> None:
    state = make_state(tmp_path, max_size="2K")
    registry = make_registry(state)
    assert scrape(registry)["docxy_cache_size_bytes"] == 0
    first, second, third = b"1" * 900, b"2" * 900, b"3" * 900
    await put(state, first)
    await put(state, second)
    await put(state, third)  # 2700 bytes > 2 KiB: the least recently used goes
    assert state.cache is not None
    writer = await state.cache.blobs.fetch_or_join(digest_of(b"4" * 10))
    assert isinstance(writer, BlobWriter)
    followers = [await state.cache.blobs.fetch_or_join(writer.digest) for _ in range(3)]
    assert all(isinstance(f, BlobFollower) for f in followers)
    assert await writer.reserve(10)  # its room under the cap, before its first byte

    seen = scrape(registry)
    assert seen["docxy_cache_size_bytes"] == 1800
    assert seen["docxy_cache_max_size_bytes"] == 2048
    assert seen["docxy_cache_blobs"] == 2
    assert seen["docxy_cache_evictions_total"] == 1
    assert seen["docxy_cache_evicted_bytes_total"] == 900
    assert seen["docxy_cache_fills_total"] == 4
    assert seen["docxy_cache_fills_in_flight"] == 1
    assert seen["docxy_cache_reserved_bytes"] == 10
    assert seen["docxy_cache_coalesced_followers_total"] == 2  # the first follower is no join
    await writer.write(b"4" * 10)
    await writer.flush()
    health = health_report(state)["cache"]
    assert isinstance(health, dict)
    assert (health["fills_in_flight"], health["fill_bytes_in_flight"]) == (1, 10)
    assert health["reserved_bytes"] == 10
    for follower in followers:
        assert isinstance(follower, BlobFollower)
        follower.close()
    writer.abort("test over")
    after = scrape(registry)
    assert (after["docxy_cache_fills_in_flight"], after["docxy_cache_reserved_bytes"]) == (0, 0)


async def test_downloads_waiting_for_a_fill_permit_are_counted(tmp_path: Path) -> None:
    config = load_config(
        {"upstream.registry": UPSTREAM, "cache.dir": str(tmp_path), "limits.fills_total": 1},
        environ={},
    )
    state = MirrorState(config, Upstream.from_config(config.upstream))
    state.cache = open_cache(tmp_path, max_size=config.cache.max_size, tag_ttl=300)
    async with httpx.AsyncClient() as http:
        permits = state.open(UpstreamClient(http)).blobs.permits
        registry = make_registry(state)
        assert scrape(registry)["docxy_fill_permits_waiting"] == 0
        release = permits.acquire()
        waiting = [spawn(f"wait {n}", permits.wait()) for n in range(2)]
        await asyncio.sleep(0)
        assert scrape(registry)["docxy_fill_permits_waiting"] == 2
        release()
        (await waiting[0])()
        (await waiting[1])()
        assert scrape(registry)["docxy_fill_permits_waiting"] == 0


def test_no_cache_metrics_when_the_cache_is_off(tmp_path: Path) -> None:
    registry = make_registry(make_state(tmp_path, cache=False))
    assert not [name for name in scrape(registry) if name.startswith("docxy_cache_")]
    assert scrape(registry)["docxy_build_info{version=0.1.0}"] == 1


async def test_upstream_reachability_rate_limit_and_errors_by_kind(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    answers: list[Exception | httpx.Response] = [
        httpx.Response(
            200, headers={"ratelimit-remaining": "76;w=21600", "ratelimit-limit": "100;w=21600"}
        ),
        httpx.Response(429),
        httpx.Response(503),
        httpx.Response(429),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    registry = make_registry(state)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = state.open(UpstreamClient(http)).client
        host = "upstream=upstream.test"
        assert math.isnan(scrape(registry)[f"docxy_upstream_up{{{host}}}"])
        await client.challenge(state.upstream)
        seen = scrape(registry)
        assert seen[f"docxy_upstream_up{{{host}}}"] == 1
        assert seen[f"docxy_upstream_ratelimit_remaining{{{host}}}"] == 76
        assert seen[f"docxy_upstream_ratelimit_limit{{{host}}}"] == 100
        for _ in range(3):  # 429, 503, 429: answers, counted as errors of this upstream
            with pytest.raises(UpstreamUnavailable, match="answered"):
                await client.challenge(state.upstream, refresh=True)
        for expected in (UpstreamUnavailable, UpstreamTimeout, UpstreamUnavailable):
            with pytest.raises(expected):
                await client.challenge(state.upstream, refresh=True)
    seen = scrape(registry)
    assert seen[f"docxy_upstream_up{{{host}}}"] == 0
    assert seen[f"docxy_upstream_errors_total{{kind=unreachable,{host}}}"] == 2
    assert seen[f"docxy_upstream_errors_total{{kind=timeout,{host}}}"] == 1
    assert seen[f"docxy_upstream_errors_total{{kind=rate_limited,{host}}}"] == 2
    assert seen[f"docxy_upstream_errors_total{{kind=server_error,{host}}}"] == 1
    assert seen[f"docxy_upstream_ratelimit_remaining{{{host}}}"] == 76  # last seen, kept


def test_certificate_expiry_and_renewal_outcome(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    renewal: dict[str, object] = {
        "last_run": "2026-11-30T10:00:00Z",
        "last_success": "2026-11-30T10:00:00Z",
        "last_error": None,
        "failures": 0,
    }
    state.extras["health"] = {
        "tls": lambda: {"not_after": "2027-02-28T10:00:00+00:00", "days_left": 90.0},
        "renewal": lambda: renewal,
    }
    registry = make_registry(state)
    seen = scrape(registry)
    assert seen["docxy_tls_cert_expiry_timestamp_seconds"] == timestamp("2027-02-28T10:00:00Z")
    assert seen["docxy_cert_renewal_last_run_ok"] == 1
    assert seen["docxy_cert_renewal_failures"] == 0
    renewal.update(last_run="2026-11-30T22:00:00Z", last_error="certbot: timeout", failures=2)
    seen = scrape(registry)
    assert seen["docxy_cert_renewal_last_run_ok"] == 0
    assert seen["docxy_cert_renewal_failures"] == 2
    assert seen["docxy_cert_renewal_last_success_timestamp_seconds"] == timestamp(
        "2026-11-30T10:00:00Z"
    )


def test_no_renewer_status_yet_is_nan_not_a_failure(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.extras["health"] = {"renewal": lambda: {"error": "no renewer status"}}
    assert math.isnan(scrape(make_registry(state))["docxy_cert_renewal_last_run_ok"])


async def test_every_upstream_has_its_own_samples(tmp_path: Path) -> None:
    config = load_config(
        {
            "upstream.registry": UPSTREAM,
            "cache.enabled": "false",
            "upstreams": "lab.test=http://lab.test:5000",
        },
        environ={},
    )
    state = MirrorState(config, Upstream.from_config(config.upstream))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "lab.test":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, headers={"ratelimit-remaining": "7;w=21600"})

    registry = make_registry(state)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = state.open(UpstreamClient(http)).client
        await client.challenge(state.upstream)
        with pytest.raises(UpstreamUnavailable):
            await client.challenge(state.upstreams.named("lab.test"))
    seen = scrape(registry)
    assert seen["docxy_upstream_up{upstream=upstream.test}"] == 1
    assert seen["docxy_upstream_ratelimit_remaining{upstream=upstream.test}"] == 7
    assert seen["docxy_upstream_up{upstream=lab.test:5000}"] == 0
    assert seen["docxy_upstream_errors_total{kind=unreachable,upstream=lab.test:5000}"] == 1
    assert seen["docxy_upstream_errors_total{kind=unreachable,upstream=upstream.test}"] == 0
