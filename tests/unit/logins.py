"""Where the tests of the mirror's own login (test_review_tokens4 to 9) start from: the mirror's
tokens over a fake token-auth registry, a first miss (``owner/a``) answered ``200`` with the
login accepted at the clock's time; the test then moves the clock (``now``) on from there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from docxy.upstream.client import UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit.test_review_tokens4 import miss


@asynccontextmanager
async def logged_in(
    transport: httpx.AsyncBaseTransport, step: float | None = None
) -> AsyncIterator[MirrorTokens]:
    """:class:`MirrorTokens` over ``transport`` (each wait of its client ``step`` seconds, if
    given), once a miss of ``owner/a`` has been answered ``200``."""
    if step is None:
        http = httpx.AsyncClient(transport=transport)
    else:
        http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(step))
    async with http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        yield tokens


class InFlight:
    """``registry`` answering each request after a short pause (as over a network), counting
    its scoped token requests in flight together: :attr:`most` is the most at once (a test
    may set it back to 0). Misses that go at once all have theirs in flight together; misses
    that wait for one going first (a stale acceptance, 165be19) do not."""

    def __init__(self, registry: Callable[[httpx.Request], httpx.Response]) -> None:
        self.registry = registry
        self.now = 0
        self.most = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        scoped = request.url.host == "auth.test" and "scope" in request.url.params
        if scoped:
            self.now += 1
            self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        if scoped:
            self.now -= 1
        return self.registry(request)
