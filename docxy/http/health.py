"""``/health``: is the mirror serving, and how is its upstream doing."""

from __future__ import annotations

import asyncio
import logging

from quart import Blueprint, Response, jsonify

from docxy import __version__
from docxy.core.errors import UpstreamError
from docxy.http.state import MirrorState, mirror_state

log = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)

PROBE_INTERVAL = 60.0


def health_report(state: MirrorState) -> dict[str, object]:
    upstream = state.upstream
    seen = state.client.health_of(upstream) if state.services is not None else None
    healthy = seen is None or seen.healthy is not False
    report: dict[str, object] = {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "upstream": {"registry": upstream.registry, **(seen.as_dict() if seen else {})},
    }
    if state.cache is not None:
        usage = state.cache.blobs.usage()
        report["cache"] = {
            "blobs": usage.entries,
            "bytes": usage.bytes,
            "max_size": usage.max_size,
            "fills_in_flight": usage.in_flight,
        }
    for name, provider in state.extras.get("health", {}).items():
        report[name] = provider()
    return report


@blueprint.route("/health", methods=["GET", "HEAD"])
async def health() -> Response:
    response = jsonify(health_report(mirror_state()))
    response.headers["Cache-Control"] = "no-store"
    return response


async def probe_upstream(state: MirrorState, interval: float = PROBE_INTERVAL) -> None:
    """Ask the upstream's ``/v2/`` now and then (free against pull limits) so health is fresh."""
    while True:
        try:
            await state.client.challenge(state.upstream, refresh=True)
        except UpstreamError as exc:
            log.warning("upstream %s in trouble: %s", state.upstream.host, exc.message)
        await asyncio.sleep(interval)
