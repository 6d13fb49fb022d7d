"""Concurrent manifest misses: many clients asking at once for a manifest the cache does not hold
cost one upstream GET (a counted pull on Docker Hub), as concurrent blob misses cost one fetch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from docxy.http.state import mirror_state
from docxy.tasks import spawn
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
