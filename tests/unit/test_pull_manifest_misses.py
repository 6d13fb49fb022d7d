"""Concurrent manifest misses: many clients asking at once for a manifest the cache does not hold
cost one upstream GET (a counted pull on Docker Hub), as concurrent blob misses cost one fetch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit.test_observe_routes import MANIFEST, stack
from tests.unit.test_observe_routes import Upstream as RoutesUpstream
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import AS_ANON, Hub, digest_of
from tests.unit.turns import until

CLIENTS = 8
GUARD = 30.0  # seconds a test waits for a state before it fails (never reached when it works)


class HeldHub(Hub):
    """The hub, whose manifest GETs wait for :attr:`release` (an async MockTransport handler)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.arrived = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        answer = self(request)
        if request.method == "GET" and "/manifests/" in request.url.path:
            self.arrived += 1
            await asyncio.wait_for(self.release.wait(), GUARD)
        return answer


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_concurrent_misses_of_one_manifest_cost_one_upstream_get(
    tmp_path: Path, by: str
) -> None:
    hub = HeldHub()
    manifest = hub.repos["library/base"].manifests["1"]
    ref = "1" if by == "tag" else digest_of(manifest)
    hub.repos["library/base"].manifests[ref] = manifest
    path = f"/v2/library/base/manifests/{ref}"
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        service = mirror_state(app).running.manifests

        async def pull() -> tuple[int, bytes]:
            response = await app.test_client().get(path, headers=AS_ANON)
            return response.status_code, await response.get_data(as_text=False)

        pulls = [spawn(f"pull {n}", pull()) for n in range(CLIENTS)]
        # Every client is in: each sent its own GET upstream, or waits for the one in flight.
        await until(
            lambda: (
                hub.arrived == CLIENTS
                or (hub.arrived == 1 and getattr(service, "fetches_joined", 0) == CLIENTS - 1)
            )
        )
        hub.release.set()
        answers = await asyncio.gather(*pulls)
    assert answers == [(200, manifest)] * CLIENTS
    assert hub.seen("GET", "manifests") == [path]  # one counted pull for all of them


async def test_clients_sharing_one_manifest_get_are_one_miss_and_the_rest_joined(
    tmp_path: Path,
) -> None:
    """The shared GET is one upstream fetch (one counted pull), so it is one ``miss``: the
    clients that waited for it are ``joined``, as clients following a blob fill are. Each was
    a ``miss``: docxy_cache_requests_total (the README: 'each miss is one upstream download'),
    the upstream bytes and the status page's hit ratio counted eight pulls for one."""
    release = asyncio.Event()
    gets: list[str] = []
    upstream = RoutesUpstream()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/manifests/" in request.url.path:
            gets.append(request.url.path)
            await asyncio.wait_for(release.wait(), GUARD)
        return upstream(request)

    path = "/v2/library/hello/manifests/latest"
    async with stack(tmp_path, upstream=upstream, transport_handler=handle) as mirror:
        service = mirror_state(mirror.app).running.manifests
        pulls = [spawn(f"pull {n}", mirror.get(path)) for n in range(CLIENTS)]
        await until(lambda: len(gets) == 1 and service.fetches_joined == CLIENTS - 1)
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*pulls), GUARD)
        seen = await mirror.scrape()
    assert [(a.status, a.body) for a in answers] == [(200, MANIFEST)] * CLIENTS
    assert gets == [path]
    assert seen["docxy_cache_requests_total{outcome=miss,route=manifest}"] == 1
    assert seen["docxy_cache_requests_total{outcome=joined,route=manifest}"] == CLIENTS - 1
    assert seen["docxy_sent_bytes_total{source=upstream}"] == len(MANIFEST)
