"""Review of the mirror's upstream tokens and the token relay (tokens2): faults found, each
shown here failing first (a strict xfail), then fixed. Nothing leaves the process: the
upstreams are ``httpx.MockTransport`` fakes."""

from __future__ import annotations

import logging
import types

import httpx
import pytest

from docxy.upstream import anonymous as anonymous_module
from docxy.upstream import tokens as tokens_module
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.issuers import TokenIssuers
from docxy.upstream.tokens import MirrorTokens, basic_authorization
from tests.unit.asgi import call_asgi
from tests.unit.test_multi_routes import mirror
from tests.unit.test_review_multi3 import LOGIN, _token
from tests.unit.test_review_tokens import TOKEN_CHALLENGE

# --- a revoked login of the mirror's, asked again for every repository ---------------------

REVOKED = Upstream("https://registry.test", credentials=("robot", "s3cret-gone"))


def refusing_login(asked: list[str | None]) -> httpx.MockTransport:
    """A registry whose token service refuses the mirror's login (``401``) and gives anyone
    else an anonymous token; ``asked`` gets each token request's ``Authorization``."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            sent = request.headers.get("authorization")
            asked.append(sent)
            if sent is not None:
                return httpx.Response(401, json={"details": "incorrect username or password"})
            return httpx.Response(200, json={"token": "anonymous", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer anonymous":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})

    return httpx.MockTransport(upstream)


async def test_a_refused_login_is_not_sent_again_for_every_repository(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``upstream.password`` revoked: the token service's ``401`` was remembered for that
    repository only, so each new repository sent the bad login once more (a failed login on
    the account each, which Docker Hub may lock). Now the refusal stands for the upstream: one
    request with the login, then anonymous tokens (public content still fills the cache),
    and one WARNING saying the login is refused."""
    asked: list[str | None] = []
    caplog.set_level(logging.WARNING, logger=tokens_module.__name__)
    async with httpx.AsyncClient(transport=refusing_login(asked)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answers = [
            await tokens.send(REVOKED, "GET", f"owner/img{n}", f"/v2/owner/img{n}/manifests/1")
            for n in range(5)
        ]
    with_login = [a for a in asked if a is not None]
    assert len(with_login) == 1
    assert [a.status_code for a in answers] == [200] * 5  # anonymous tokens read public ones
    refused = [r for r in caplog.records if "refused the mirror's login" in r.getMessage()]
    assert len(refused) == 1
    assert "robot" in refused[0].getMessage() and "s3cret-gone" not in refused[0].getMessage()


async def test_a_refused_login_is_tried_again_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bounded: a login mended upstream is used again once the refusal's time is over."""
    now = [1000.0]
    clock = types.SimpleNamespace(monotonic=lambda: now[0], time=lambda: now[0])
    monkeypatch.setattr(tokens_module, "time", clock)
    asked: list[str | None] = []
    async with httpx.AsyncClient(transport=refusing_login(asked)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        await tokens.send(REVOKED, "GET", "owner/a", "/v2/owner/a/manifests/1")
        now[0] += tokens_module.REFUSED_TTL + 1
        await tokens.send(REVOKED, "GET", "owner/b", "/v2/owner/b/manifests/1")
    assert len([a for a in asked if a is not None]) == 2


# --- a relayed token forgotten at its expiry, then passed to another upstream ---------------


def test_a_relayed_token_is_known_a_while_past_its_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """containerd may send a token past its ``expires_in``: its record was dropped right then,
    and the token counted as never relayed (free to pass to any upstream)."""
    now = [1000.0]
    monkeypatch.setattr(anonymous_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    issuers = TokenIssuers()
    issuers.remember_answer("ghcr.example", b'{"token": "t", "expires_in": 300}')
    now[0] += 301
    assert issuers.issuer("Bearer t") == "ghcr.example"
    now[0] += 600  # bounded: forgotten in the end
    assert issuers.issuer("Bearer t") is None


async def test_an_expired_token_of_one_upstream_is_not_passed_to_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ghcr.io's token (got with the client's ghcr.io login), sent by containerd a little past
    its 60 s with a request for Docker Hub (same scope, another ``?ns=``), went to Docker Hub."""
    now = [1000.0]
    monkeypatch.setattr(anonymous_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    async with mirror() as m:
        token = await _token(m, "upstream=ghcr.test&scope=repository:owner/img:pull", LOGIN)
        now[0] += 90  # the token's 60 s are over
        bearer = [("Authorization", f"Bearer {token}")]
        path = "/v2/owner/img/manifests/1?ns=docker.io"
        await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=bearer)
        hub = [r for r in m.upstream.requests if r.url.host == "hub.example"]
    assert hub, "the request went to Docker Hub"
    assert all(f"Bearer {token}" not in r.headers.get_list("authorization") for r in hub)


# --- a configured auth_realm, for an upstream whose /v2/ asks for nothing ------------------

OPEN_REALM = "https://auth.open.test/token"
OPEN = Upstream("https://open.test", auth_realm=OPEN_REALM, credentials=("robot", "pw"))


def open_v2_token_content(asked: list[str | None]) -> httpx.MockTransport:
    """A registry whose ``/v2/`` answers ``200`` to anyone, whose content takes only a token
    of its token service (the one configured as ``auth_realm``): no Basic login."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        if request.url.host == "auth.open.test":
            asked.append(request.headers.get("authorization"))
            return httpx.Response(200, json={"token": "from-the-realm", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer from-the-realm":
            return httpx.Response(200, json={})
        challenge = f'Bearer realm="{OPEN_REALM}",service="open.test"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    return httpx.MockTransport(upstream)


async def test_a_configured_realm_gives_the_mirror_its_tokens_when_v2_asks_for_none() -> None:
    """``auth_realm`` set for an upstream whose ``/v2/`` names no token service: clients' token
    requests went to that realm, but the mirror's own fills went with its Basic login (or
    nothing), which such a registry refuses: nothing was ever cached from it, and a client's
    request passed through had its token replaced by the mirror's Basic login."""
    asked: list[str | None] = []
    async with httpx.AsyncClient(transport=open_v2_token_content(asked)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answer = await tokens.send(OPEN, "GET", "owner/img", "/v2/owner/img/manifests/1")
        login = await tokens.basic_login(OPEN)
    assert answer.status_code == 200
    # the login checked (no scope, test_review_tokens3), then the repository's token with it
    assert asked == [basic_authorization("robot", "pw")] * 2
    assert login is None  # a client's relayed token goes on as it is
