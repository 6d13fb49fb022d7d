"""The observer: told when each request ends and when the upstream answers; keeps the figures.

Fed from two places only, so the request path stays unaware of it:

- ``middleware.AccessLog`` calls :meth:`Observer.request_started` and
  :meth:`Observer.request_ended` with the facts the routes left in ``scope["docxy"]`` (cache
  outcome, upstream time) and what went out (status, bytes, time);
- the shared upstream client's ``response`` event hook (:meth:`Observer.attach`) sees every
  upstream answer, including the 429s and 5xx that count as upstream errors.

Everything else (cache size, upstream reachability, certificate) is read at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx
from hypercorn.typing import Scope
from quart import Quart

from docxy.core.errors import RegistryError
from docxy.core.names import parse_v2_path
from docxy.http.middleware import origin_form
from docxy.http.state import MirrorState
from docxy.observe.connections import ConnectionCounter
from docxy.observe.metrics import Refuser, RequestMetrics, api_path, make_registry, route_kind
from docxy.observe.recent import ErrorEvent, RecentErrors, TopCounts
from docxy.upstream.client import ASKED_PATH, CLIENT_CREDENTIALS
from docxy.upstream.routing import UpstreamUnknown, request_picks

log = logging.getLogger(__name__)

TOP_KEYS = 1000  # distinct image names remembered for "most pulled"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Observer:
    def __init__(self, state: MirrorState, *, top_keys: int = TOP_KEYS) -> None:
        self.state = state
        #: when the observer began, on the monotonic clock (uptime: a wall clock NTP steps
        #: after start made it negative, or a day a minute after start)
        self.started = time.monotonic()
        self.connections = ConnectionCounter(self._listener_ports)
        #: parts that refuse by a setting, beside those in the state (docxy_refused_total):
        #: admission and the connection guard, which docxy.http.server.run makes
        self.refusers: list[Refuser] = []
        #: connections the edge closed to make room at its cap (docxy_connections_evicted_total):
        #: the connection guard's count, which docxy.http.server.run hands over
        self.evicted: Callable[[], int] = lambda: 0
        self.registry = make_registry(
            state,
            lambda: self.connections.last,
            lambda: self.refusers,
            lambda: self.evicted(),
        )
        self.metrics = RequestMetrics(self.registry)
        self.pulls = TopCounts(top_keys)
        self.errors = RecentErrors()

    def _listener_ports(self) -> list[int]:
        server = self.state.config.server
        return [server.listen.port] + ([server.tls_listen.port] if server.tls_listen else [])

    async def refresh(self) -> None:
        """Read what cannot be read on the event loop (the open connections), before a scrape
        or a status report."""
        await self.connections.refresh()

    # --- middleware.RequestObserver ---------------------------------------------------------

    def request_started(self) -> None:
        self.metrics.in_progress.inc()

    def request_ended(
        self, scope: Scope, status: int, sent: int, seconds: float, end: str = "done"
    ) -> None:
        self.metrics.in_progress.dec()
        try:
            self._record(scope, status, sent, seconds, end)
        except Exception:  # a counting bug must never break serving
            log.exception("metrics: cannot record a request")

    def _record(self, scope: Scope, status: int, sent: int, seconds: float, end: str) -> None:
        if scope["type"] == "http":  # GET http://host/v2/... counts as the /v2/... it asks for,
            scope = origin_form(scope)  # its host (for the pull's upstream) the target's
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else scope.get("path", "")
        path = str(path).split("?", 1)[0]
        facts = scope.get("docxy")
        method = str(scope.get("method", "GET"))
        self.metrics.request_ended(
            path, method, status, sent, seconds, facts if isinstance(facts, dict) else {}, end
        )
        if 200 <= status < 300 and method in ("GET", "HEAD"):
            self._count_pull(scope, path)

    def _count_pull(self, scope: Scope, path: str) -> None:
        """A pull resolves its tag once (HEAD or GET ``manifests/<tag>``): count that, under
        the name the repository rules use (``ghcr.io/owner/img`` however it was picked)."""
        try:
            reference = parse_v2_path(path)
        except RegistryError:
            return
        if reference is None or reference.tag is None:
            return
        ns, host = request_picks(scope)
        try:
            name = self.state.upstreams.qualified(reference.name, ns=ns, host=host)
        except UpstreamUnknown:  # refused, so not a pull (a 2xx never gets here)
            return
        self.pulls.add(f"{name}:{reference.tag}")

    # --- the upstream client ----------------------------------------------------------------

    def attach(self, app: Quart) -> None:
        """Hook into the shared upstream client once the app has opened it."""

        @app.while_serving
        async def hook_upstream() -> AsyncGenerator[None, None]:
            # Registered after the app's own lifespan, so the client exists by now.
            self.state.client.http.event_hooks["response"].append(self.upstream_answered)
            self.state.client.direct_listeners.append(self.direct_answered)
            yield

    async def upstream_answered(self, response: httpx.Response) -> None:
        """An answer the shared client got; a redirect's hop is counted by the path its first
        hop asked (``ASKED_PATH``: a CDN's answer is the blob's)."""
        request = response.request
        status = response.status_code
        asked = request.extensions.get(ASKED_PATH)
        path = asked if isinstance(asked, str) else request.url.path
        if status == 429 and request.extensions.get(CLIENT_CREDENTIALS):
            # The rate limit of the client's own account, not an upstream error: counted
            # among the answers only.
            self.metrics.upstream_answered(path, status)
            return
        self._answered(request.url.host, path, status)

    def direct_answered(self, url: str, status: int, asked: str) -> None:
        """An answer to a cache fill's direct GET (:mod:`docxy.upstream.direct`) from ``url``,
        counted by what its first hop (``asked``) asked, as :meth:`upstream_answered` does."""
        self._answered(httpx.URL(url).host, httpx.URL(asked).path, status)

    def _answered(self, host: str, path: str, status: int) -> None:
        """Every answer, by route (what ``path`` asks) and status class; a 429/5xx on the
        page's recent errors (the upstream's health counts it, under that upstream, for
        docxy_upstream_errors_total)."""
        self.metrics.upstream_answered(path, status)
        kind = "rate_limited" if status == 429 else "server_error" if status >= 500 else None
        if kind is not None:
            # Host and route kind only: a CDN URL's query is a signed credential.
            self.errors.add(kind, f"{host} answered {status} ({route_kind(api_path(path))})")

    # --- for the status page ----------------------------------------------------------------

    def recent_errors(self, limit: int = 20) -> list[ErrorEvent]:
        """Upstream failures (timeouts, unreachable) and bad answers (429/5xx), newest first."""
        events = list(self.errors.latest())
        if self.state.services is not None:
            # One health per registry host, however many upstream names share it: each of
            # its failures once (as in docxy_upstream_errors_total), not once per name.
            hosts = {upstream.host: upstream for upstream in self.state.upstreams.all()}
            for upstream in hosts.values():
                health = self.state.services.client.health_of(upstream)
                events += [ErrorEvent(at, kind, text) for at, kind, text in health.recent_failures]
        events.sort(key=lambda event: event.at, reverse=True)
        return events[:limit]

    def samples(self) -> Samples:
        """Every current sample: ``(name, sorted labels) → value``."""
        found: Samples = {}
        for family in self.registry.collect():
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


def total(samples: Samples, name: str, **match: Any) -> float:
    """The sum of ``name``'s samples whose labels include ``match``."""
    wanted = {(key, str(value)) for key, value in match.items()}
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and wanted <= set(labels)
    )
