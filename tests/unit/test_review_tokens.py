"""Review of the mirror's upstream tokens and the token relay: faults found, each shown here
failing first (a strict xfail), then fixed."""

from __future__ import annotations

import time

import httpx
import pytest

from docxy.core.expiry import DEFAULT_EXPIRES_IN, token_lifetime
from docxy.upstream.anonymous import AnonymousTokens
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens

TOKEN_CHALLENGE = 'Bearer realm="https://auth.test/token",service="registry.test"'
UPSTREAM = Upstream("https://registry.test")

# --- a token whose expires_in is below Docker's 60 s minimum ----------------------------------


async def test_a_short_lived_token_is_not_asked_for_again_every_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token service saying ``expires_in: 10`` (below the 60 s every Docker client takes as
    the least): the mirror kept the token ``max(10 - 30, 1)`` s, so a pull's misses one second
    apart each asked the token service again, 20 token requests in 20 s."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    asked: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        asked.append(request.url.params["scope"])
        return httpx.Response(200, json={"token": f"t{len(asked)}", "expires_in": 10})

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for _ in range(20):
            await tokens.headers(UPSTREAM, "owner/img")
            now[0] += 1
    assert asked == ["repository:owner/img:pull"]


@pytest.mark.parametrize("expires_in", [1, 0.5, "10", 59])
def test_a_lifetime_below_the_minimum_is_the_minimum(expires_in: object) -> None:
    assert token_lifetime(expires_in, 3600.0) == DEFAULT_EXPIRES_IN


def test_a_relayed_short_token_is_known_as_long_as_clients_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Docker's client uses a token answered with ``expires_in: 5`` for 60 s: an anonymous
    pull with it still comes from the mirror's address (its 429s are the mirror's)."""
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    tokens = AnonymousTokens()
    tokens.remember_answer(b'{"token": "t", "expires_in": 5}')
    now[0] += 59
    assert tokens.holds("Bearer t")
    now[0] += 2
    assert not tokens.holds("Bearer t")
