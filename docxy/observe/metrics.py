"""The mirror's Prometheus metrics, through ``prometheus-client``.

Two kinds:

- **per request**, counted when a request ends (:class:`RequestMetrics`, fed by the observer
  from the access log's facts) and when an upstream answers (the shared client's hook);
- **read at scrape time** from what the mirror already holds (:class:`MirrorCollector`): cache
  size and fills, upstream reachability and rate limit, the served certificate, the renewer.

Labels stay bounded: route kind, method, status class, cache outcome, upstream host (from the
config). Never a repository, tag or client address.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from docxy import __version__
from docxy.core.errors import RegistryError
from docxy.core.names import Kind, parse_v2_path
from docxy.http.middleware import ENDS, fill_upstream_bytes, upstream_bytes
from docxy.http.state import MirrorState
from docxy.pull.outcome import Reason
from docxy.shared.tier import DEGRADED
from docxy.upstream.client import Upstream

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Where the bytes of a response came from, by the request's cache outcome. A fill from the
#: shared bucket ([shared]) is its own source: neither this replica's cache nor the upstream.
SOURCES = {
    "hit": "cache",
    "stale": "cache",
    "revalidated": "cache",
    "shared": "shared",
    "joined": "cache",  # a fill or manifest GET another request started: fetched once
    "miss": "upstream",
    "bypass": "passthrough",
    "uncached": "passthrough",
}
SENT_SOURCES = ("cache", "shared", "upstream", "passthrough", "other")

#: The settings whose limits refuse connections or requests (``limits.send_timeout``: drops a
#: download whose client took nothing for that long; ``limits.send_min_rate``: one whose client
#: took too little), each a sample of docxy_refused_total.
REFUSING_SETTINGS = (
    "access.allow",
    "access.repositories",
    "limits.max_connections",
    "limits.connections_per_client",
    "limits.requests_per_minute",
    "limits.manifests_per_minute",
    "limits.bandwidth",
    "limits.fills_per_client",
    "limits.fills_total",
    "limits.failed_logins_per_minute",
    "limits.token_relays_per_minute",
    "limits.send_timeout",
    "limits.send_min_rate",
)

#: docxy_upstream_errors_total's kinds (``UpstreamHealth.failures``), each exported from the start.
ERROR_KINDS = ("timeout", "unreachable", "rate_limited", "server_error", "broke_off", "bad_answer")

#: The access log's reason for a manifest served on a miss (or joined) that its disk refused.
UNWRITABLE = Reason.CACHE_UNWRITABLE.value
OUTCOMES = ("hit", "joined", "miss", "shared", "stale", "revalidated", "bypass", "uncached")


def route_kind(path: str) -> str:
    """``manifest``, ``blob``, ``ping``, ``token``, ``health``, ``acme`` or ``other``."""
    if path in ("/v2", "/v2/"):
        return "ping"
    if path.startswith("/v2/"):
        try:
            reference = parse_v2_path(path)
        except RegistryError:  # a bad name or digest: refused with 400
            return "other"
        if reference is None:
            return "other"
        return "blob" if reference.kind is Kind.BLOB else "manifest"
    if path == "/auth/token":
        return "token"
    if path == "/health":
        return "health"
    if path.startswith("/.well-known/acme-challenge/"):
        return "acme"
    return "other"


def api_path(path: str) -> str:
    """An upstream URL's path from its ``/v2/`` on: a registry under a prefix
    (``upstream.registry = https://host/mirror``, kept as given) is asked ``/mirror/v2/...``,
    which :func:`route_kind` would call ``other``, whatever it asked."""
    if path.startswith("/v2/") or path in ("/v2", "/v2/"):
        return path
    at = path.find("/v2/")
    return path[at:] if at > 0 else path


def status_class(status: int) -> str:
    """``2xx``..``5xx``; ``none`` when no response was started (client gone, crash)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def bounded_method(method: str) -> str:
    known = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return method if method in known else "other"


class RequestMetrics:
    """Counters and histograms fed per request, in one registry (one per running mirror)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "docxy_http_requests",
            "Client requests, by route kind, method and status class.",
            ["route", "method", "status_class"],
            registry=registry,
        )
        self.duration = Histogram(
            "docxy_http_request_duration_seconds",
            "Client request time until the last byte was sent, by route kind.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "docxy_upstream_duration_seconds",
            "Time a client request waited on the upstream (headers, or the fill it joined).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sent_bytes = Counter(
            "docxy_sent_bytes",
            "Body bytes sent to clients, by source: cache (a fill or manifest GET another "
            "request started too), shared (a cache fill from the shared bucket), upstream (a "
            "cache fill from the upstream, or the rest of a shared one whose body broke off, or "
            "of one the cache gave up), passthrough (not cached), other (challenges, tokens, "
            "health).",
            ["source"],
            registry=registry,
        )
        self.cache = Counter(
            "docxy_cache_requests",
            "Manifest and blob requests by cache outcome: hit, joined (a blob fill or manifest "
            "GET another request started), miss, shared (filled from the shared bucket), stale, "
            "revalidated, bypass (cache off), uncached (passed through or not kept, the access "
            "log's reason= says why: private, not-cacheable, upstream-answer (a 404 or another "
            "answer passed on as it is), upstream-failed (the upstream's fetch failed, nothing "
            "cached), unconfirmed, cache-full, cache-unwritable, cache-unreadable).",
            ["route", "outcome"],
            registry=registry,
        )
        self.in_progress = Gauge(
            "docxy_open_requests",
            "Client requests being served now (each holds an open connection).",
            registry=registry,
        )
        self.unfinished = Counter(
            "docxy_http_requests_unfinished",
            "Client requests whose answer did not go out whole, by route kind and how they "
            "ended: cut (the mirror cut the body: the download behind it failed), left (the "
            "client went away first), aborted (an error), stopped (still running when the "
            "mirror's stop ended its drain).",
            ["route", "outcome"],
            registry=registry,
        )
        self.upstream_responses = Counter(
            "docxy_upstream_responses",
            "Answers from the upstream (every hop, CDN redirects included), by what was asked "
            "and status class.",
            ["route", "status_class"],
            registry=registry,
        )
        # Series that exist from the start, so a dashboard shows 0 rather than nothing.
        for source in SENT_SOURCES:
            self.sent_bytes.labels(source)
        for route in ("manifest", "blob"):
            for outcome in OUTCOMES:
                self.cache.labels(route, outcome)
            for end in ENDS[1:]:
                self.unfinished.labels(route, end)

    def request_ended(
        self,
        path: str,
        method: str,
        status: int,
        sent: int,
        seconds: float,
        facts: dict[str, Any],
        end: str = "done",
    ) -> None:
        route = route_kind(path)
        self.requests.labels(route, bounded_method(method), status_class(status)).inc()
        if end in ENDS[1:]:
            self.unfinished.labels(route, end).inc()
        self.duration.labels(route).observe(seconds)
        outcome = facts.get("cache")
        if isinstance(outcome, str) and route in ("manifest", "blob"):
            # served but refused by the disk (a miss or joined): not cached, as a pass-through
            refused = facts.get("reason") == UNWRITABLE
            self.cache.labels(route, "uncached" if refused else outcome).inc()
        upstream_ms = facts.get("upstream_ms")
        if isinstance(upstream_ms, int | float):
            self.upstream_duration.labels(route).observe(upstream_ms / 1000)
        source = SOURCES.get(outcome, "other") if isinstance(outcome, str) else "other"
        # A shared fill's rest, or a client's own once the cache gave its fill up.
        from_upstream = upstream_bytes(facts, sent) or 0
        fetched = fill_upstream_bytes(facts, sent - from_upstream)
        if fetched is not None:  # a fill of the upstream's: its bytes counted once as such
            from_upstream += fetched
            source = "cache"  # the rest: sent again from what the fill fetched
        if from_upstream:
            self.sent_bytes.labels("upstream").inc(from_upstream)
        self.sent_bytes.labels(source).inc(sent - from_upstream)

    def upstream_answered(self, path: str, status: int) -> None:
        """An upstream answer to ``path`` (its URL's, a prefix the registry has included)."""
        self.upstream_responses.labels(route_kind(api_path(path)), status_class(status)).inc()


# --- read at scrape time --------------------------------------------------------------------


def leading_number(text: object) -> float | None:
    """``"76;w=21600"`` (Docker Hub's ``ratelimit-remaining``) → 76.0."""
    if not isinstance(text, str):
        return None
    match = re.match(r"\s*(\d+(?:\.\d+)?)", text)
    return float(match.group(1)) if match else None


def timestamp(text: object) -> float | None:
    """An ISO 8601 time (``2026-11-30T12:00:00Z`` or with an offset) → seconds since the epoch."""
    if not isinstance(text, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


Labels = dict[str, str] | None


def _gauge(name: str, doc: str, value: float | None, labels: Labels = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), math.nan if value is None else value)
    return family


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _counter(name: str, doc: str, value: float, labels: Labels = None) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


#: A part of /health's report; None: nothing to report now (it is left out).
Provider = Callable[[], dict[str, object] | None]


class Refuser(Protocol):
    """A part that refuses by a setting (admission, the connection guard, the fill caps, the
    login limit): how many so far, by setting."""

    def refusals(self) -> dict[str, int]: ...


def _no_refusers() -> list[Refuser]:
    return []


def _none_evicted() -> int:
    return 0


class MirrorCollector(Collector):
    """What the mirror holds, read when Prometheus scrapes (no request-path bookkeeping)."""

    def __init__(
        self,
        state: MirrorState,
        open_connections: Callable[[], int | None],
        refusers: Callable[[], list[Refuser]] = _no_refusers,
        evicted: Callable[[], int] = _none_evicted,
    ) -> None:
        self.state = state
        #: connections closed to make room at limits.max_connections (the edge's count;
        #: docxy.http.server.run: 0 without the edge)
        self.evicted = evicted
        #: the parts outside the state that refuse (docxy.http.server.run: admission, the edge)
        self.refusers = refusers
        #: the latest count (docxy.observe.connections: read off the loop before a scrape)
        self.open_connections = open_connections

    def collect(self) -> Iterable[Metric]:
        yield _gauge("docxy_build_info", "Docxy's version.", 1, {"version": __version__})
        yield _gauge(
            "docxy_open_connections",
            "Client TCP connections open on the mirror's listeners, idle keep-alive included.",
            self.open_connections(),
        )
        yield _counter(
            "docxy_connections_evicted",
            "Client connections closed to make room for a new one at limits.max_connections: "
            "the one idle the longest (no request in progress, or one whose request body has "
            "not all come and whose answer has not started).",
            self.evicted(),
        )
        yield from self._cache()
        yield from self._upstream()
        yield from self._shared()
        yield from self._certificate()
        yield self._refused()

    def _refused(self) -> Metric:
        counts: Tally[str] = Tally(dict.fromkeys(REFUSING_SETTINGS, 0))
        refusers: list[Refuser] = [*self.refusers(), self.state.relays]
        if self.state.services is not None:
            refusers.append(self.state.services.blobs.permits)
        refusers.append(self.state.logins)
        for refuser in refusers:
            counts.update(refuser.refusals())
        family = CounterMetricFamily(
            "docxy_refused",
            "Connections and requests a limit refused, by the setting that did (for "
            "limits.send_timeout: downloads dropped because the client took no bytes;"
            " limits.send_min_rate: because it took too few).",
            labels=["setting"],
        )
        for setting, count in counts.items():
            family.add_metric([setting], count)
        return family

    def _cache(self) -> Iterator[Metric]:
        cache = self.state.cache
        if cache is None:
            return
        store = cache.blobs
        usage = store.usage()
        ready = store.index_complete
        yield _gauge(
            "docxy_cache_index_ready",
            "1 once the blob index read at start is done; 0 while it is read (in the "
            "background), when docxy_cache_size_bytes and docxy_cache_blobs are left out.",
            1 if ready else 0,
        )
        if ready:  # a partial count would show the cache near empty at each restart
            yield _gauge("docxy_cache_size_bytes", "Bytes of committed blobs.", usage.bytes)
            yield _gauge("docxy_cache_blobs", "Committed blobs.", usage.entries)
        yield _gauge("docxy_cache_max_size_bytes", "cache.max_size.", usage.max_size)
        yield _gauge(
            "docxy_cache_fills_in_flight", "Blob downloads into the cache now.", store.fills_open
        )
        if self.state.services is not None:
            yield _gauge(
                "docxy_fill_permits_waiting",
                "Upstream downloads waiting for a permit under limits.fills_total: the rest of "
                "a blob a client has the first bytes of (never refused, so it waits).",
                self.state.services.blobs.permits.waiting,
            )
        yield _gauge(
            "docxy_cache_fill_bytes_in_flight",
            "Bytes written so far by the fills in flight.",
            usage.in_flight,
        )
        yield _gauge(
            "docxy_cache_reserved_bytes",
            "Bytes the fills in flight reserved under cache.max_size (their announced length).",
            usage.reserved,
        )
        yield _gauge(
            "docxy_cache_freeing_bytes",
            "Bytes of removed files not freed yet, still counted under cache.max_size.",
            usage.freeing,
        )
        yield _counter(
            "docxy_cache_fills", "Blob fills started (one per digest missed).", store.fills_started
        )
        yield _counter(
            "docxy_cache_coalesced_followers",
            "Clients that joined a fill another client had started (no extra upstream fetch).",
            store.followers_joined,
        )
        yield _counter(
            "docxy_cache_evictions", "Blobs evicted to stay under the cap.", store.evicted
        )
        yield _counter(
            "docxy_cache_evicted_bytes", "Bytes evicted to stay under the cap.", store.evicted_bytes
        )

    def _upstream(self) -> Iterator[Metric]:
        """One sample per configured upstream, labelled with its registry's host."""
        if self.state.services is None:
            return
        client = self.state.services.client
        # One per registry host, the label (and the key of its health): two upstream names for
        # one registry would be a duplicate series, and Prometheus refuses the whole scrape.
        by_host: dict[str, Upstream] = {}
        for upstream in self.state.upstreams.all():  # [upstream] first: its name wins
            by_host.setdefault(upstream.host, upstream)
        upstreams = [(u, client.health_of(u)) for u in by_host.values()]
        label = ["upstream"]
        up = GaugeMetricFamily(
            "docxy_upstream_up",
            "1 if the upstream answered the last request (a 429 or 5xx too), 0 after a timeout "
            "or a failed connection; see docxy_upstream_errors_total for failing answers.",
            labels=label,
        )
        remaining = GaugeMetricFamily(
            "docxy_upstream_ratelimit_remaining",
            "The upstream's last ratelimit-remaining header (Docker Hub pulls left).",
            labels=label,
        )
        limit = GaugeMetricFamily(
            "docxy_upstream_ratelimit_limit",
            "The upstream's last ratelimit-limit header.",
            labels=label,
        )
        last_ok = GaugeMetricFamily(
            "docxy_upstream_last_success_timestamp_seconds",
            "When an answer of the upstream last got through (not a 429 or 5xx).",
            labels=label,
        )
        stale = CounterMetricFamily(
            "docxy_upstream_stale_served",
            "Cached content served because the upstream failed (stale-if-error).",
            labels=label,
        )
        errors = CounterMetricFamily(
            "docxy_upstream_errors",
            "Upstream failures by kind: timeout, unreachable (connect/transport), "
            "rate_limited (429), server_error (5xx), broke_off (a blob body that kept breaking "
            "off, given up after its resumes), bad_answer (an answer in a transfer coding "
            "not read).",
            labels=["upstream", "kind"],
        )
        for upstream, health in upstreams:
            host = [upstream.host]
            reachable = None if health.reachable is None else float(health.reachable)
            up.add_metric(host, _or_nan(reachable))
            remaining.add_metric(host, _or_nan(leading_number(health.ratelimit_remaining)))
            limit.add_metric(host, _or_nan(leading_number(health.ratelimit_limit)))
            last_ok.add_metric(host, _or_nan(health.last_ok))
            stale.add_metric(host, health.stale_served)
            kinds: Tally[str] = Tally(dict.fromkeys(ERROR_KINDS, 0))
            kinds.update(health.failures)
            for kind, count in sorted(kinds.items()):
                errors.add_metric([upstream.host, kind], count)
        yield from (up, remaining, limit, last_ok, stale, errors)

    def _shared(self) -> Iterator[Metric]:
        """The shared tier (``[shared]``), when it is on."""
        services = self.state.services
        shared = services.blobs.shared if services is not None else None
        if shared is None:
            return
        reachable = None if shared.reachable is None else float(shared.reachable)
        yield _gauge(
            "docxy_shared_up",
            "1 if the shared store's last answer got through.",
            _or_nan(reachable),
        )
        yield _gauge(
            "docxy_shared_uploads_enabled",
            "1 if this replica uploads to the shared store; 0 for one set shared.uploads = 0, "
            "which only reads it.",
            0.0 if shared.read_only else 1.0,
        )
        why = shared.degraded_by()
        degraded = GaugeMetricFamily(
            "docxy_shared_degraded",
            "1 for the reason the shared store is degraded, answering reads while its uploads "
            "do not get through: uploads_refused (a 4xx: a read-only key), uploads_failing (its "
            "trouble: uploads rest), upload_queue_full (new uploads dropped); 0 for the others.",
            labels=["reason"],
        )
        for reason in DEGRADED:
            degraded.add_metric([reason], 1.0 if reason == why else 0.0)
        yield degraded
        counts = shared.counts
        blobs = CounterMetricFamily(
            "docxy_shared_blobs",
            "Local misses asked of the shared store: hit (filled from it, counted as the fill "
            "ends; not one found corrupt), miss, corrupt (its object found not to be the blob: "
            "digest or length), resumed (a hit whose body broke off, "
            "finished from the upstream: the rest read to its end and the blob verified).",
            labels=["result"],
        )
        for result, value in (
            ("hit", counts.hits),
            ("miss", counts.misses),
            ("corrupt", counts.corrupt),
            ("resumed", counts.resumed),
        ):
            blobs.add_metric([result], value)
        uploads = CounterMetricFamily(
            "docxy_shared_uploads",
            "Uploads to the shared store: uploaded, skipped (already there), failed, dropped "
            "(queue full, or waiting when the store failed).",
            labels=["result"],
        )
        for result, value in (
            ("uploaded", counts.uploaded),
            ("skipped", counts.upload_skipped),
            ("failed", counts.upload_failed),
            ("dropped", shared.uploads.dropped),
        ):
            uploads.add_metric([result], value)
        yield from (blobs, uploads)
        yield _counter("docxy_shared_errors", "Shared store requests that failed.", counts.errors)

    def _certificate(self) -> Iterator[Metric]:
        providers: dict[str, Provider] = self.state.extras.get("health", {})
        tls = providers["tls"]() if "tls" in providers else None
        if tls is not None:
            yield _gauge(
                "docxy_tls_cert_expiry_timestamp_seconds",
                "notAfter of the certificate being served.",
                timestamp(tls.get("not_after")),
            )
        renewal = providers["renewal"]() if "renewal" in providers else None
        if renewal is not None:  # None: no domain, and the renewer refuses nothing
            last_run, last_success = (
                timestamp(renewal.get("last_run")),
                timestamp(renewal.get("last_success")),
            )
            ok = None
            if last_run is not None:
                ok = 1.0 if last_success is not None and last_success >= last_run else 0.0
            yield _gauge(
                "docxy_cert_renewal_last_run_ok",
                "1 if the renewer's last run succeeded, 0 if it failed; NaN before any run.",
                ok,
            )
            yield _gauge(
                "docxy_cert_renewal_last_run_timestamp_seconds", "The renewer's last run.", last_run
            )
            yield _gauge(
                "docxy_cert_renewal_last_success_timestamp_seconds",
                "The renewer's last successful run.",
                last_success,
            )
            refused = None if "error" in renewal else float(bool(renewal.get("refused")))
            yield _gauge(
                "docxy_cert_renewal_settings_refused",
                "1 while the renewer refuses its own settings (a bad [scheduler] one) and "
                "schedules no renewal; NaN without its status file.",
                refused,
            )
            failures = renewal.get("failures")
            yield _gauge(
                "docxy_cert_renewal_failures",
                "Consecutive failed renewer runs.",
                float(failures) if isinstance(failures, int) else None,
            )


def _unknown() -> int | None:
    return None


def make_registry(
    state: MirrorState,
    open_connections: Callable[[], int | None] = _unknown,
    refusers: Callable[[], list[Refuser]] = _no_refusers,
    evicted: Callable[[], int] = _none_evicted,
) -> CollectorRegistry:
    """A registry of its own (not the global one): one per app, so tests can run several.

    Without prometheus-client's ``<counter>_created`` series (each counter's and histogram's
    start time as a gauge of its own): they would double the series a Prometheus stores, for
    what ``process_start_time_seconds`` already tells. The switch is the library's, for the
    whole process (read as samples are made); docxy is the only exporter in it."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MirrorCollector(state, open_connections, refusers, evicted))
    ProcessCollector(registry=registry)  # RSS, CPU seconds, open file descriptors
    return registry
