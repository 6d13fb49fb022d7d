"""Where the tests of the mirror's own login (test_review_tokens4 to 9) start from: the mirror's
tokens over a fake token-auth registry, a first miss (``owner/a``) answered ``200`` with the
login accepted at the clock's time; the test then moves the clock (``now``) on from there."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
