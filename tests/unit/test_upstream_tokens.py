"""The mirror's own upstream tokens: one token request per repository however many misses wait
for it, and a failed request is not remembered (the next miss asks again)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.tasks import spawn
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens, lifetime
from tests.unit.turns import until

CHALLENGE = 'Bearer realm="https://auth.test/token",service="registry.test"'
UPSTREAM = Upstream("https://registry.test")
WAITERS = 10


class TokenService:
    """A registry whose token endpoint counts its requests per scope and answers only when
    ``open`` is set, with ``status``."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.open = asyncio.Event()
        self.status = 200

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        scope = request.url.params["scope"]
        self.asked[scope] += 1
        await self.open.wait()
        if self.status != 200:
            return httpx.Response(self.status, json={"errors": [{"code": "UNAVAILABLE"}]})
        return httpx.Response(200, json={"token": f"t{self.asked[scope]}", "expires_in": 300})


async def misses(tokens: MirrorTokens, service: TokenService, repository: str) -> list[object]:
    """``WAITERS`` concurrent misses for ``repository``; the token service answers once every
    one of them is either asking it or waiting for another's request."""
    scope = f"repository:{repository}:pull"
    joined = tokens.followers_joined
    waiting = [spawn(f"miss {n}", tokens.headers(UPSTREAM, repository)) for n in range(WAITERS)]
    await until(lambda: service.asked[scope] + tokens.followers_joined - joined >= WAITERS)
    service.open.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    service.open.clear()
    return results


@pytest.fixture
async def service() -> TokenService:
    return TokenService()


async def test_concurrent_misses_share_one_token_request(service: TokenService) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        await tokens.client.challenge(UPSTREAM)  # the /v2/ probe is not what is counted here
        results = await misses(tokens, service, "library/redis")
        assert results == [[("Authorization", "Bearer t1")]] * WAITERS
        assert service.asked == {"repository:library/redis:pull": 1}
        # kept: the next miss asks nobody; another repository gets its own token
        assert await tokens.headers(UPSTREAM, "library/redis") == [("Authorization", "Bearer t1")]
        assert (
            await misses(tokens, service, "library/nginx")
            == [[("Authorization", "Bearer t1")]] * WAITERS
        )
        assert service.asked["repository:library/redis:pull"] == 1


async def test_a_failed_token_request_fails_its_waiters_and_is_not_remembered(
    service: TokenService,
) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        await tokens.client.challenge(UPSTREAM)
        service.status = 503
        failed = await misses(tokens, service, "library/redis")
        assert all(isinstance(result, UpstreamUnavailable) for result in failed), failed
        assert service.asked == {"repository:library/redis:pull": 1}
        service.status = 200
        service.open.set()
        assert await tokens.headers(UPSTREAM, "library/redis") == [("Authorization", "Bearer t2")]
        assert service.asked == {"repository:library/redis:pull": 2}


async def test_a_client_going_away_does_not_cancel_the_others_token(
    service: TokenService,
) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        await tokens.client.challenge(UPSTREAM)
        first = spawn("first", tokens.headers(UPSTREAM, "library/redis"))
        second = spawn("second", tokens.headers(UPSTREAM, "library/redis"))
        await until(lambda: tokens.followers_joined == 1)  # the second waits for the first's
        first.cancel()  # the client that started the request hangs up
        service.open.set()
        assert await second == [("Authorization", "Bearer t1")]
        assert first.cancelled()
        assert service.asked == {"repository:library/redis:pull": 1}


@pytest.mark.parametrize("token", ["a\r\nX-Injected: 1", "tök", "two words"])
async def test_a_token_that_cannot_go_in_a_header_is_the_upstream_failing(token: str) -> None:
    """Such a token made the fill's request raise ValueError or UnicodeEncodeError, which
    nothing maps to the registry's 502: a traceback, and no upstream failure on record."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, json={"token": token})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        with pytest.raises(UpstreamUnavailable, match="cannot go in a header"):
            await tokens.headers(UPSTREAM, "library/redis")


async def test_a_token_with_a_lifetime_past_the_floats_is_used() -> None:
    """An ``expires_in`` of 400 digits raised OverflowError past every registry error."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, content=b'{"token": "t0k", "expires_in": ' + b"9" * 400 + b"}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        headers = await tokens.headers(UPSTREAM, "library/redis")
    assert ("Authorization", "Bearer t0k") in headers


async def test_a_token_answer_nested_too_deep_for_json_is_the_upstream_failing() -> None:
    """RecursionError (no ValueError) from json.loads went past the registry errors."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, content=b"[" * 100_000)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        with pytest.raises(UpstreamUnavailable, match="sent no token"):
            await tokens.headers(UPSTREAM, "library/redis")


@pytest.mark.parametrize(
    ("expires_in", "used"),
    [
        (300.0, 300.0),
        (300, 300.0),
        ("300", 300.0),
        (float("inf"), 60.0),
        (float("nan"), 60.0),
        (-5.0, 60.0),
        (1e9, 86400.0),
        pytest.param(10**400, 60.0, id="past-floats"),  # OverflowError escaped, past all errors
        ("soon", 60.0),
        (None, 60.0),
        (True, 60.0),
        ([300], 60.0),
    ],
)
def test_a_token_is_used_for_its_lifetime_within_bounds(expires_in: object, used: float) -> None:
    assert lifetime(expires_in) == used
