"""The capped per-repository maps, and the mirror's state that uses them."""

from __future__ import annotations

import httpx
import pytest

from docxy.core.bounded import LruDict
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens


def test_the_least_recently_used_entry_goes_first() -> None:
    lru: LruDict[str, int] = LruDict(2)
    lru.set("a", 1)
    lru.set("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.set("c", 3)
    assert "b" not in lru
    assert (lru.get("a"), lru.get("c"), len(lru)) == (1, 3, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LruDict(0)


async def test_the_mirrors_tokens_stay_bounded_with_distinct_names() -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, json={"token": "t", "expires_in": 300})

    http = httpx.AsyncClient(transport=httpx.MockTransport(registry))
    tokens = MirrorTokens(UpstreamClient(http), capacity=8)
    upstream = Upstream("https://registry.test")
    for n in range(100):
        assert await tokens.headers(upstream, f"user/repo{n}") == [("Authorization", "Bearer t")]
    await http.aclose()
    assert len(tokens) == 8


def test_the_refused_repositories_stay_bounded() -> None:
    tokens = MirrorTokens(UpstreamClient(httpx.AsyncClient()), capacity=8)
    upstream = Upstream("https://registry.test")
    for n in range(100):
        tokens.mark_refused(upstream, f"user/private{n}")
    assert len(tokens) == 8
    assert tokens.refused(upstream, "user/private99")
    assert not tokens.refused(upstream, "user/private0")  # forgotten: asked again, that's all
