"""``/health``: is the mirror serving, and how is its upstream doing."""

from __future__ import annotations

import asyncio
import logging

from quart import Blueprint, Response, jsonify, request

from docxy import __version__
from docxy.core.errors import UpstreamError
from docxy.edge.clients import request_address
from docxy.http.state import MirrorState, mirror_state
from docxy.upstream.client import Upstream

log = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)

PROBE_INTERVAL = 60.0


def _upstream_report(state: MirrorState, upstream: Upstream) -> tuple[bool, dict[str, object]]:
    seen = state.client.health_of(upstream) if state.services is not None else None
    # The mirror's own login refused by the token service: its private pulls fail (its
    # tokens are anonymous) however well the upstream answers.
    refused = seen is not None and seen.login == "refused"
    healthy = seen is None or (seen.healthy is not False and not refused)
    # ``healthy``: this upstream's part in ``status`` (``reachable`` is true while it answers
    # 429s or 5xx), for the status page's badge and for scripts
    shown = {"registry": upstream.registry, **(seen.as_dict() if seen else {}), "healthy": healthy}
    return healthy, shown


def health_report(state: MirrorState, *, public: bool = False) -> dict[str, object]:
    """``upstream`` is ``[upstream]``; ``upstreams`` has every upstream by name, it included.

    ``public`` (the main listener's ``/health``, which an ``open`` mirror with no
    ``access.allow`` serves to anyone): a part that registered a public view of its own in
    ``extras["health_public"]`` (a function of its whole report) shows that one: the shared
    tier its state, not where the bucket is; ``tls`` and ``renewal`` their times and booleans,
    not the words that name the server's files (:func:`docxy.http.server.register_health`).
    The admin listener's ``/status.json`` shows them whole. ``status`` is judged on the whole
    parts, so it is the same in both."""
    reports = {u.name: _upstream_report(state, u) for u in state.upstreams.all()}
    report: dict[str, object] = {
        "status": "ok" if all(ok for ok, _ in reports.values()) else "degraded",
        "version": __version__,
        "upstream": reports[state.upstream.name][1],
        "upstreams": {name: shown for name, (_, shown) in reports.items()},
    }
    if state.cache is not None:
        blobs = state.cache.blobs
        usage = blobs.usage()
        report["cache"] = {
            # False while the blob index is read at start (in the background): ``blobs`` and
            # ``bytes`` then count only the blobs found so far, not an emptier cache.
            "index_ready": blobs.index_complete,
            "blobs": usage.entries,
            "bytes": usage.bytes,
            "max_size": usage.max_size,
            "fills_in_flight": blobs.fills_open,
            "fill_bytes_in_flight": usage.in_flight,
            "reserved_bytes": usage.reserved,
            "freeing_bytes": usage.freeing,
        }
    trims = state.extras.get("health_public", {}) if public else {}
    whole: dict[str, object] = {}
    for name, provider in state.extras.get("health", {}).items():
        part = provider()
        if part is None:  # nothing to report now (the renewal without a domain)
            continue
        whole[name] = part
        report[name] = trims[name](part) if name in trims else part
    tls = whole.get("tls")
    # Clients will soon refuse the certificate (renewals are failing), or refuse it now
    # (docxy.tls.trust.refusal).
    if isinstance(tls, dict) and (tls.get("expires_soon") is True or tls.get("warning")):
        report["status"] = "degraded"
    # The renewer refuses its own settings and schedules no renewal (scheduler.main.hold), or
    # cannot write certs.config_dir (docxy.tls.certs.stranded_config_dir): it holds too.
    renewal = whole.get("renewal")
    if isinstance(renewal, dict) and (
        renewal.get("refused") or renewal.get("config_dir_unwritable")
    ):
        report["status"] = "degraded"
    return report


def for_strangers(state: MirrorState) -> bool:
    """Whether this request gets only ``status`` and ``version``: always in ``users`` mode,
    and from an address off ``access.allow`` (``/health`` is never refused, but what the
    allow list keeps out learns nothing of the upstreams)."""
    if state.access is not None and state.access.users_mode:
        return True
    config = state.config
    if not config.access.allow:
        return False
    address = request_address(request.scope, config.server)
    return address not in config.access.allow


@blueprint.route("/health", methods=["GET", "HEAD"])
async def health() -> Response:
    """The public report (without where the shared bucket is or what it said); for strangers
    (``auth.mode = users``, an address off the allow list) only ``status`` and ``version``:
    the public listener then tells them nothing about the upstreams (the admin listener's
    ``/status.json`` has the rest)."""
    state = mirror_state()
    report = health_report(state, public=True)
    if for_strangers(state):
        report = {key: report[key] for key in ("status", "version")}
    response = jsonify(report)
    response.headers["Cache-Control"] = "no-store"
    return response


async def probe_upstream(state: MirrorState, interval: float = PROBE_INTERVAL) -> None:
    """Ask each upstream's ``/v2/`` now and then (free against pull limits): fresh health.

    Once per registry host: upstream names that share one share its health, and one answer
    (or one warning) tells it for them all."""
    while True:
        hosts: dict[str, Upstream] = {}
        for upstream in state.upstreams.all():  # [upstream] first: its name in the warning
            hosts.setdefault(upstream.host, upstream)
        for upstream in hosts.values():
            try:
                await state.client.challenge(upstream, refresh=True)
            except UpstreamError as exc:
                log.warning("upstream %s in trouble: %s", upstream.name, exc.message)
        await asyncio.sleep(interval)
