"""The upstream's ``/v2/`` probe: one request however many callers wait for it, and a failed
probe is not remembered (the next caller asks again)."""

from __future__ import annotations

import asyncio

import httpx

from docxy.core.errors import UpstreamUnavailable
from docxy.tasks import spawn
from docxy.upstream.client import Upstream, UpstreamClient
from tests.unit.test_upstream_tokens import CHALLENGE, UPSTREAM, WAITERS
from tests.unit.turns import until


class Registry:
    """A registry whose ``/v2/`` counts its requests and answers only when ``open`` is set,
    with ``status``."""

    def __init__(self) -> None:
        self.asked = 0
        self.open = asyncio.Event()
        self.status = 401

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v2/"
        self.asked += 1
        await self.open.wait()
        return httpx.Response(self.status, headers={"WWW-Authenticate": CHALLENGE})


async def probes(client: UpstreamClient, registry: Registry, upstream: Upstream) -> list[object]:
    """``WAITERS`` concurrent callers; ``/v2/`` answers once each is asking or waiting."""
    asked, joined = registry.asked, client.probes_joined
    waiting = [spawn(f"caller {n}", client.challenge(upstream)) for n in range(WAITERS)]
    await until(lambda: registry.asked - asked + client.probes_joined - joined >= WAITERS)
    registry.open.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    registry.open.clear()
    return results


async def test_concurrent_callers_share_one_probe() -> None:
    registry = Registry()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        results = await probes(client, registry, UPSTREAM)
        assert registry.asked == 1
        assert all(
            r is not None and getattr(r, "realm", "") == "https://auth.test/token" for r in results
        ), results
        await client.challenge(UPSTREAM)  # kept: nobody asked again
        assert registry.asked == 1


async def test_a_failed_probe_fails_its_callers_and_is_not_remembered() -> None:
    registry = Registry()
    registry.status = 503
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        failed = await probes(client, registry, UPSTREAM)
        assert all(isinstance(r, UpstreamUnavailable) for r in failed), failed
        assert registry.asked == 1
        registry.status = 401
        registry.open.set()
        found = await client.challenge(UPSTREAM)
        assert found is not None and found.realm == "https://auth.test/token"
        assert registry.asked == 2
