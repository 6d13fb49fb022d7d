"""Review of ddc0359 (an accepted login trusted for ``LOGIN_TRUSTED``) and of how the mirror's
own login shows on ``/health`` (tokens5): faults found, each shown here failing first (a strict
xfail), then fixed. Nothing leaves the process: the upstreams are ``httpx.MockTransport``
fakes, and a clock the tests move (``now``, test_review_tokens4's) stands for the time that
passes."""

from __future__ import annotations

import asyncio
import json
import time
import types
from pathlib import Path

import httpx
import pytest

from docxy.upstream import client as client_module
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import REFUSED_TTL, MirrorTokens, basic_authorization
from tests.unit.logins import InFlight, logged_in
from tests.unit.test_pull_blobs import basic, mirror
from tests.unit.test_pull_manifests import BasicRegistry as ManifestBasicRegistry
from tests.unit.test_pull_scoped_blobs import DOCKER_MANIFEST
from tests.unit.test_review_tokens4 import LOGIN, ROBOT, Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)


def answering_late(registry: Revocable) -> httpx.MockTransport:
    """``registry`` answering each request after a short pause: concurrent misses are all
    sent before the first answer comes back, as over a network."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return registry(request)

    return httpx.MockTransport(handler)


def bad_logins(registry: Revocable) -> int:
    """Token requests that carried the (revoked) login: scoped ones and the checks."""
    scoped = sum(1 for _, sent in registry.scoped if sent == LOGIN)
    return scoped + registry.checks


# --- 1. a password revoked after a quiet spell, sent by every concurrent miss ---------------


async def test_a_revoked_password_is_not_sent_by_every_concurrent_miss(now: list[float]) -> None:
    """The login accepted, 150 s of quiet (trusted still, for ``LOGIN_TRUSTED``), the password
    revoked, then 10 misses of 10 repositories at once: each sent the login before the first
    ``401`` came back, 10 scoped requests and a check, 11 failed logins on the account (one
    before ddc0359, which checked it after a minute). Now one miss's request goes with it,
    the others wait for its outcome: its ``401``'s check refuses the login, all go
    anonymously."""
    registry = Revocable()
    async with logged_in(answering_late(registry)) as tokens:
        before = bad_logins(registry)  # the first miss's check and scoped request (accepted)
        now[0] += 150
        registry.revoked = True
        repositories = [f"owner/img{n}" for n in range(10)]
        answers = await asyncio.gather(*(miss(tokens, r) for r in repositories))
    assert answers == [200] * 10  # public: read with anonymous tokens
    assert bad_logins(registry) - before <= 2  # the one scoped request, and its check
    assert tokens.login_refused(Upstream("https://registry.test"))
    anonymous = {scope for scope, sent in registry.scoped if sent is None}
    assert anonymous == {f"repository:{r}:pull" for r in repositories}


async def test_a_good_login_after_a_quiet_spell_serves_every_concurrent_miss(
    now: list[float],
) -> None:
    """The same 10 concurrent misses after 150 s, the password still good: the one request
    that went first renews the acceptance, and every miss gets its token with the login,
    without another scope-less check."""
    registry = Revocable()
    async with logged_in(answering_late(registry)) as tokens:
        now[0] += 150
        repositories = [f"owner/img{n}" for n in range(10)]
        answers = await asyncio.gather(*(miss(tokens, r) for r in repositories))
    assert answers == [200] * 10
    assert registry.checks == 1  # the first miss's only
    with_login = {scope for scope, sent in registry.scoped if sent == LOGIN}
    assert with_login == {"repository:owner/a:pull"} | {
        f"repository:{r}:pull" for r in repositories
    }
    assert all(sent == LOGIN for _, sent in registry.scoped)


async def test_a_fresh_acceptance_makes_no_miss_wait(now: list[float]) -> None:
    """Within ``REFUSED_TTL`` of the acceptance, concurrent misses send their requests at once,
    as before: none waits for another's answer."""
    registry = Revocable()
    flights = InFlight(registry)
    async with logged_in(httpx.MockTransport(flights.handle)) as tokens:
        now[0] += 30
        answers = await asyncio.gather(*(miss(tokens, f"owner/img{n}") for n in range(5)))
    assert answers == [200] * 5
    assert flights.most == 5
    assert registry.checks == 1


# --- 3. an upstream with Basic auth: a wrong password never showed on /health --------------


class BasicRegistry:
    """A registry with Basic auth and no token service: ``/v2/`` challenges ``Basic``, and any
    request with the login ``robot:`` :attr:`password` is answered 200, anything else 401."""

    def __init__(self) -> None:
        self.password = "right"
        self.logins: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        if request.url.path != "/v2/":
            self.logins.append(sent)
        if sent == basic_authorization("robot", self.password):
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})


async def test_a_basic_upstreams_refused_login_shows_on_health(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Basic upstream the mirror's ``upstream.password`` is wrong for: its own requests got
    ``401`` and ``UpstreamHealth.login`` stayed None, so ``/health`` said ``ok``. It now says
    ``refused``, and ``accepted`` once a request with the login gets through (the first past
    the refusal's ``REFUSED_TTL``: none carries it before, test_review_login2)."""
    clock = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(client_module, "time", fake)
    registry = BasicRegistry()
    registry.password = "rotated"
    upstream = Upstream("https://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "owner/a", "/v2/owner/a/manifests/1")
        await answer.aclose()
        assert answer.status_code == 401
        health = client.health_of(upstream)
        assert health.login == "refused"
        assert health.login_refused_since is not None
        registry.password = "right"
        clock[0] += REFUSED_TTL + 1
        answer = await tokens.send(upstream, "GET", "owner/a", "/v2/owner/a/manifests/1")
        await answer.aclose()
        assert answer.status_code == 200
    assert registry.logins == [basic_authorization("robot", "right")] * 2
    assert health.login == "accepted"
    assert health.login_refused_since is None


async def test_a_basic_upstreams_refused_login_degrades_health(tmp_path: Path) -> None:
    """The same through the mirror, the cache off (each pull passed through with the mirror's
    own Basic login, ``basic_login``): ``/health`` said ``ok`` while every pull got the
    registry's ``401``; it says ``degraded``, ``login: refused``, without the password."""
    registry = ManifestBasicRegistry()
    content = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    registry.tag("1", content)
    settings = {
        "upstream__username": "bot",
        "upstream__password": "wrong",
        "cache__enabled": "false",
    }
    async with mirror(tmp_path, registry, **settings) as app:
        client = app.test_client()
        response = await client.get("/v2/team/tool/manifests/1")
        assert response.status_code == 401
        text = await (await client.get("/health")).get_data(as_text=True)
    report = json.loads(text)
    assert report["status"] == "degraded"
    assert report["upstream"]["login"] == "refused"
    assert "wrong" not in text
    asked = [r.headers.get("authorization") for r in registry.requests if r.url.path != "/v2/"]
    assert asked == [basic("bot", "wrong")]


# --- 2. when /health's ``login: refused`` clears ---------------------------------------------


async def test_a_refused_login_clears_at_the_next_token_request_past_the_minute(
    now: list[float],
) -> None:
    """What the README says of ``login: "refused"``: no request is made to find out; past the
    refusal's minute it stands while the mirror needs no new token (a token it holds serves
    a repository's requests), and clears at its next token request with the login."""
    registry = Revocable()
    registry.revoked = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        assert await miss(tokens, "owner/a") == 200
        health = client.health_of(ROBOT)
        assert health.login == "refused"
        registry.revoked = False  # the account mended upstream
        now[0] += REFUSED_TTL + 1
        asked = (registry.checks, len(registry.scoped))
        assert await miss(tokens, "owner/a") == 200  # its anonymous token still held
        assert (registry.checks, len(registry.scoped)) == asked
        assert health.login == "refused"
        assert await miss(tokens, "owner/b") == 200  # a token to ask for: the login goes
    assert health.login == "accepted"
    assert registry.scoped[-1] == ("repository:owner/b:pull", LOGIN)
