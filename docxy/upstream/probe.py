"""The mirror's own look at its upstreams: each registry host's ``/v2/`` now and then (free
against pull limits), for fresh health and a fresh Bearer challenge.

Two upstream names for one registry host (``[upstream]`` and an ``upstreams`` entry both on
``registry-1.docker.io``) share what a probe learns: the health samples and the challenge are
kept by host (:meth:`~docxy.upstream.client.UpstreamClient.health_of`). So each host is asked
once a round, not once per name, and its trouble is one WARNING naming every name on it.
"""

from __future__ import annotations

import asyncio
import logging

from docxy.core.errors import UpstreamError
from docxy.upstream.client import UpstreamClient
from docxy.upstream.routing import Upstreams

log = logging.getLogger(__name__)

#: Seconds between two rounds of probes.
PROBE_INTERVAL = 60.0


async def probe_round(client: UpstreamClient, upstreams: Upstreams) -> None:
    """Ask each registry host's ``/v2/`` once (in the order of the configured upstreams)."""
    for upstream, names in upstreams.per_host():
        try:
            await client.challenge(upstream, refresh=True)
        except UpstreamError as exc:
            log.warning("upstream %s in trouble: %s", ", ".join(names), exc.message)


async def probe_upstreams(
    client: UpstreamClient, upstreams: Upstreams, interval: float = PROBE_INTERVAL
) -> None:
    """A round of probes now, then every ``interval`` seconds, until cancelled."""
    while True:
        await probe_round(client, upstreams)
        await asyncio.sleep(interval)
