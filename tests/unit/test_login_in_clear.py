"""No login goes to a plain-HTTP token service on the word of an HTTPS registry's challenge.

An HTTPS upstream whose ``/v2/`` challenge names an ``http://`` realm (a misconfigured
registry, or a challenge changed on the way) would have the mirror send its own login, or a
client's password or refresh token, in clear text. The mirror asks for its own tokens
anonymously then (one WARNING says why), answers a client's login with a 403 without sending
it, and lets an anonymous ask through. A plain-HTTP registry, whose tokens travel in clear
anyway, and a realm the operator configured as ``auth_realm`` are taken as they are.

Since the realm is judged as a redirect hop from the registry (docxy.upstream.redirects), an
HTTPS registry's plain-HTTP realm on another host is asked at all only where both are
non-public: ``registry.example`` is a LAN registry here (the rule's lookup says 10.0.0.2;
nothing is contacted, the transport is a fake). A public one's: tests/unit/test_review_guards2.py;
one on the registry's own host (asked, anonymously): tests/unit/test_review_realm2.py.
"""

from __future__ import annotations

import base64
import logging
import socket

import httpx
import pytest

from docxy.upstream import redirects
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit.fakes import reply
from tests.unit.test_routes import error_code, mirror

LOGIN = ("mirror-account", "s3cret-pw")


@pytest.fixture(autouse=True)
def lan_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The redirect rule's lookup of ``registry.example``: 10.0.0.2 (a LAN registry); any
    other name is refused: no DNS is asked."""

    def lookup(host: str, *args: object) -> list[tuple[object, ...]]:
        if host != "registry.example":
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 0))]

    monkeypatch.setattr(redirects, "RESOLVE", lookup)


CLEAR_REALM = "http://auth.example/token"
BASIC = "Basic " + base64.b64encode(b"bob:hunter2").decode()


@pytest.mark.parametrize(
    ("registry", "configured", "realm", "may"),
    [
        ("https://registry.example", None, "https://auth.example/token", True),
        ("https://registry.example", None, CLEAR_REALM, False),
        ("https://registry.example", None, "HTTP://auth.example/token", False),
        ("https://registry.example", CLEAR_REALM, CLEAR_REALM, True),
        ("https://registry.example", CLEAR_REALM, "http://other.example/token", False),
        ("http://10.0.0.5:5000", None, CLEAR_REALM, True),
    ],
)
def test_which_token_services_a_login_may_go_to(
    registry: str, configured: str | None, realm: str, may: bool
) -> None:
    assert Upstream(registry, configured).login_may_go_to(realm) is may


def challenging(realm: str) -> httpx.MockTransport:
    """A registry whose ``/v2/`` names ``realm``; its token service answers every ask."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{realm}",service="registry.example"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})

    return httpx.MockTransport(handler)


async def token_asks(
    upstream: Upstream, realm: str, repositories: list[str]
) -> list[httpx.Request]:
    """The requests the mirror's token service client sends for ``repositories``."""
    sent: list[httpx.Request] = []
    transport = challenging(realm)

    async def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return await transport.handle_async_request(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for repository in repositories:
            assert await tokens.headers(upstream, repository) == [("Authorization", "Bearer t0ken")]
    return [request for request in sent if request.url.path != "/v2/"]


async def test_the_mirrors_login_is_withheld_from_a_clear_realm_of_an_https_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream("https://registry.example", credentials=LOGIN)
    with caplog.at_level(logging.INFO):
        asks = await token_asks(upstream, CLEAR_REALM, ["library/redis", "library/nginx"])
    assert [str(ask.url.copy_with(query=None)) for ask in asks] == [CLEAR_REALM] * 2
    assert all("authorization" not in ask.headers for ask in asks)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, however many repositories
    said = warnings[0].getMessage()
    assert "registry.example" in said and "http://auth.example" in said
    assert "auth_realm to https://auth.example/token" in said
    assert LOGIN[0] not in caplog.text and LOGIN[1] not in caplog.text


@pytest.mark.parametrize(
    ("registry", "configured", "realm"),
    [
        ("https://registry.example", None, "https://auth.example/token"),
        ("https://registry.example", CLEAR_REALM, CLEAR_REALM),  # the operator's own choice
        ("http://registry.example", None, CLEAR_REALM),  # in clear anyway
    ],
)
async def test_the_mirrors_login_goes_where_it_may(
    registry: str, configured: str | None, realm: str, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream(registry, configured, credentials=LOGIN)
    with caplog.at_level(logging.WARNING):
        asks = await token_asks(upstream, realm, ["library/redis"])
    expected = "Basic " + base64.b64encode(f"{LOGIN[0]}:{LOGIN[1]}".encode()).decode()
    # the login checked first (no scope, as docker login: test_review_tokens3), then the token
    assert [ask.headers["authorization"] for ask in asks] == [expected] * 2
    assert not caplog.records


# --- a client's login at the token endpoint ---------------------------------------------------

#: the realm is the one the /v2/ challenge names
DISCOVERED: dict[str, object] = {"upstream.auth_realm": ""}


def clear_realm_registry(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        challenge = f'Bearer realm="{CLEAR_REALM}",service="registry.example"'
        return reply(401, b"{}", {"WWW-Authenticate": challenge})
    return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})


def realm_asks(requests: list[httpx.Request]) -> list[httpx.Request]:
    return [request for request in requests if request.url.host == "auth.example"]


async def test_a_clients_password_is_not_sent_to_a_clear_realm() -> None:
    async with mirror(clear_realm_registry, DISCOVERED) as m:
        response = await m.client.get(
            "/auth/token?service=registry.example&scope=repository:redis:pull",
            headers={"Authorization": BASIC},
        )
        assert response.status_code == 403  # a refusal until the operator acts, no outage
        assert await error_code(response) == "DENIED"
        message = (await response.get_json())["errors"][0]["message"]
        assert "http://auth.example" in message and "clear text" in message
        assert "auth_realm to https://auth.example/token" in message  # the remedy first
        assert realm_asks(m.upstream.requests) == []


async def test_a_clients_refresh_token_is_not_sent_to_a_clear_realm() -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "r3fresh", "service": "x"}
    async with mirror(clear_realm_registry, DISCOVERED) as m:
        response = await m.client.post("/auth/token", form=form)
        assert response.status_code == 403
        assert realm_asks(m.upstream.requests) == []


async def test_an_anonymous_ask_still_goes_to_a_clear_realm() -> None:
    async with mirror(clear_realm_registry, DISCOVERED) as m:
        response = await m.client.get("/auth/token?service=registry.example")
        assert response.status_code == 200
        [ask] = realm_asks(m.upstream.requests)
        assert "authorization" not in ask.headers


async def test_a_configured_clear_realm_gets_the_clients_login() -> None:
    async with mirror(clear_realm_registry, {"upstream.auth_realm": CLEAR_REALM}) as m:
        response = await m.client.get("/auth/token?service=x", headers={"Authorization": BASIC})
        assert response.status_code == 200
        [ask] = realm_asks(m.upstream.requests)
        assert ask.headers["authorization"] == BASIC
