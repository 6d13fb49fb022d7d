"""Review of the mirror's upstream tokens and the token relay: faults found, each shown here
failing first (a strict xfail), then fixed."""

from __future__ import annotations

import asyncio
import time
import types
from pathlib import Path

import httpx
import pytest

from docxy.core.expiry import DEFAULT_EXPIRES_IN, token_lifetime
from docxy.upstream import client as client_module
from docxy.upstream import tokens as tokens_module
from docxy.upstream.anonymous import AnonymousTokens
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit import test_multi_routes as multi
from tests.unit.fakes import Handler, reply
from tests.unit.test_routes import BASIC, HUB_CHALLENGE, mirror

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


# --- a token service answering 200 without a token -------------------------------------------

NO_TOKEN = [
    (b"<html><body>Sign in to the proxy</body></html>", "text/html"),
    (b'{"error": "no"}', "application/json"),
    (b'{"token": ""}', "application/json"),
    (b"", "text/plain"),
]


def answers_200(body: bytes, content_type: str) -> Handler:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(401, b"{}", {"WWW-Authenticate": HUB_CHALLENGE})
        return reply(200, body, {"Content-Type": content_type})

    return upstream


@pytest.mark.parametrize(("body", "content_type"), NO_TOKEN)
async def test_a_token_answer_without_a_token_is_the_token_service_failing(
    body: bytes, content_type: str
) -> None:
    """A proxy's sign-in page (or JSON with no token) answered 200 in front of the token
    service reached the client as the token answer: docker failed decoding it (``invalid
    character '<'``) or said the server sent no token, neither naming the upstream. Now it is
    a registry error saying the upstream's token service sent no token."""
    async with mirror(answers_200(body, content_type)) as m:
        answer = await m.client.get("/auth/token?scope=repository:library/redis:pull")
        assert answer.status_code == 502
        [error] = (await answer.get_json())["errors"]
        assert error["code"] == "UNAVAILABLE"
        assert error["message"] == "the upstream's token service answered 200 without a token"
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("credentialed", [False, True], ids=["anonymous", "login"])
async def test_with_a_cache_a_token_answer_without_a_token_is_an_offline_token(
    tmp_path: Path, credentialed: bool
) -> None:
    """With a cache, the token service failing gives anonymous clients the offline token (the
    cache still serves them) and a login 503, as for a 5xx: a 200 page without a token did
    neither, every pull stopped at the token."""
    settings: dict[str, object] = {"cache.enabled": "true", "cache.dir": str(tmp_path)}
    headers = {"Authorization": BASIC} if credentialed else {}
    async with mirror(answers_200(*NO_TOKEN[0]), settings) as m:
        answer = await m.client.get(
            "/auth/token?scope=repository:library/redis:pull", headers=headers
        )
        body = await answer.get_json()
        if credentialed:
            assert answer.status_code == 503
            assert "cannot check credentials now" in body["errors"][0]["message"]
        else:
            assert answer.status_code == 200
            assert body["token"] == "docxy-offline"


# --- checked and found right: kept as regression tests ---------------------------------------


@pytest.mark.parametrize("registry_says", [200, 401])
async def test_an_expired_token_and_challenge_cost_one_request_each_for_many_misses(
    monkeypatch: pytest.MonkeyPatch, registry_says: int
) -> None:
    """20 concurrent misses of one repository once its token and the upstream's challenge
    are both past their time: one ``/v2/`` probe and one token request; a registry that
    refuses the fresh token too (``401``) costs one more token request, not one per miss,
    and each miss tries twice at most."""
    now = [1000.0]
    clock = types.SimpleNamespace(monotonic=lambda: now[0], time=time.time)
    monkeypatch.setattr(tokens_module, "time", clock)  # the modules' clock, not the loop's
    monkeypatch.setattr(client_module, "time", clock)
    sent: list[str] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # every miss is waiting before any answer comes
        sent.append(request.url.host + request.url.path)
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            return httpx.Response(200, json={"token": f"t{len(sent)}", "expires_in": 300})
        return httpx.Response(registry_says, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        await tokens.headers(UPSTREAM, "owner/img")
        sent.clear()
        now[0] += 3600  # past the token's 300 s and the challenge's REALM_TTL
        path = "/v2/owner/img/manifests/1"
        misses = [tokens.send(UPSTREAM, "GET", "owner/img", path) for _ in range(20)]
        answers = await asyncio.gather(*misses)
    assert {a.status_code for a in answers} == {registry_says}
    assert sent.count("registry.test/v2/") == 1
    assert sent.count("auth.test/token") == (1 if registry_says == 200 else 2)
    assert sent.count("registry.test" + path) == (20 if registry_says == 200 else 40)


# --- a named upstream's service, when the mirror never saw its /v2/ challenge ----------------


@pytest.mark.parametrize(
    ("query", "host"),
    [("?ns=ghcr.test", "mirror.example.com"), ("", "ghcr-mirror.example.com")],
    ids=["ns", "hosts"],
)
async def test_the_service_a_named_upstreams_challenge_gave_reaches_its_token_service(
    query: str, host: str
) -> None:
    """An upstream with ``auth_realm`` configured (its ``/v2/`` tells no challenge, or was not
    asked yet): the mirror passes its 401's ``service`` on to the client, and the client's
    token request for it went to the token service with no ``service`` at all (the mirror
    puts its own in place of the client's for a named upstream, and knew none). A token for
    no service is refused by the registry (or not issued: Distribution's token spec needs it)."""
    settings = {
        "upstreams.ghcr.test.auth_realm": multi.GHCR_AUTH,
        "upstreams.ghcr.test.hosts": "ghcr-mirror.example.com",
    }
    async with multi.mirror(None, **settings) as m:
        answer = await m.get(f"/v2/owner/img/manifests/1{query}", host=host)
        assert answer.status == 401
        challenge = multi.challenge_of(answer)
        assert challenge["service"] == "ghcr-service"
        realm = challenge["realm"].removeprefix(multi.PUBLIC)
        ask = f"{realm}&service=ghcr-service&scope={challenge['scope']}"
        answer = await m.get(ask, host=host)
        assert answer.status == 200
    [asked] = [r for r in m.upstream.requests if r.url.host == "auth.ghcr.example"]
    assert asked.url.params.get("service") == "ghcr-service"


async def test_a_by_prefix_ask_still_drops_the_default_upstreams_service() -> None:
    """By path prefix the client's ``service`` comes from the mirror's ``/v2/`` (the default
    upstream's): never sent to another upstream's token service."""
    async with multi.mirror(None, **{"upstreams.ghcr.test.auth_realm": multi.GHCR_AUTH}) as m:
        ask = "/auth/token?service=hub-service&scope=repository:ghcr.test/owner/img:pull"
        answer = await m.get(ask)
        assert answer.status == 200
    [asked] = [r for r in m.upstream.requests if r.url.host == "auth.ghcr.example"]
    assert asked.url.params.get("service") is None
