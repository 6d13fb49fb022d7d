"""Second review of the request path's front: the token endpoint's own 401 and blobs passed
through a redirect.

Each test is a fault an earlier review noted in ``docxy/http/auth.py`` and ``routes.py``,
reproduced through the app (the ASGI call hypercorn makes) with the unit tests' fake upstream,
then mended.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.core.challenge import parse_challenge
from docxy.http.app import create_app
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import FakeUpstream, reply

PUBLIC = "https://mirror.example.com"
MIRROR = "mirror.example.com"
JSON = {"Content-Type": "application/json"}
#: what a client holds for the mirror's main name: Docker Hub's login, never ghcr.test's
HUB_LOGIN = "Basic " + base64.b64encode(b"bob:hunter2").decode()
GHCR_CHALLENGE = 'Bearer realm="https://auth.ghcr.example/token",service="ghcr-service"'


def ghcr_refusing_anonymous(request: httpx.Request) -> httpx.Response:
    """A registry (ghcr.example) whose token service refuses an anonymous ask (as one may for a
    private repository, or one that does not exist); every registry request is a 401
    challenge. Hub (hub.example) is never asked in these tests."""
    if request.url.host == "auth.ghcr.example":
        return reply(401, b'{"details": "authentication required"}', JSON)
    return reply(401, b"{}", {"WWW-Authenticate": GHCR_CHALLENGE, **JSON})


@asynccontextmanager
async def open_mirror_with_ghcr(handler: FakeUpstream) -> AsyncIterator[Quart]:
    """An open mirror fronting Docker Hub (hub.example) with ghcr.test beside it, no cache."""
    settings: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false",
        "upstreams": "ghcr.test=https://ghcr.example",
    }
    app = create_app(load_config(settings, environ={}), probe=False,
                     transport=httpx.MockTransport(handler))  # fmt: skip
    async with app.test_app():
        yield app


async def follow_with_login(app: Quart, answer: AsgiAnswer) -> AsgiAnswer:
    """The token request a client makes from ``answer``'s challenge: its realm, its service
    and no scope (the challenge names none), with the login held for the mirror's name."""
    challenge = parse_challenge(answer.headers["WWW-Authenticate"])
    assert challenge is not None and challenge.realm is not None
    realm = httpx.URL(challenge.realm)
    query = realm.params.merge({"service": challenge.params.get("service", "")})
    headers = [("Authorization", HUB_LOGIN)]
    return await call_asgi(app, "GET", f"{realm.path}?{query}", host=MIRROR, headers=headers)


@pytest.mark.parametrize(
    "asked",
    [
        # the realm of the mirror's /v2/ (no upstream named), the scope naming it by prefix
        "/auth/token?service=docker.io&scope=repository:ghcr.test/owner/img:pull",
        # the realm a by-prefix pull's relayed challenge names, with no scope in it
        "/auth/token?upstream=ghcr.test&via=prefix&service=ghcr-service",
    ],
)
async def test_the_token_endpoints_401_to_a_by_prefix_ask_keeps_the_login_home(asked: str) -> None:
    """A token request for ``mirror.example.com/ghcr.test/owner/img`` with the login the
    client holds for the mirror's name (Docker Hub's) goes to ghcr.test's token service
    anonymously; that service refused it (401). The endpoint's 401 named the plain
    ``?upstream=ghcr.test`` realm, no ``via=prefix``: a client following it with the same
    login had it sent to ghcr.test's token service (``credentials_go_to`` took the request
    for one reached as ghcr.test itself). That 401 says ``via=prefix`` now, as the routes' do
    (1da0ab6)."""
    upstream = FakeUpstream(ghcr_refusing_anonymous)
    async with open_mirror_with_ghcr(upstream) as app:
        login = [("Authorization", HUB_LOGIN)]
        answer = await call_asgi(app, "GET", asked, host=MIRROR, headers=login)
        assert answer.status == 401
        await follow_with_login(app, answer)
    sent = [r for r in upstream.requests if r.url.host == "auth.ghcr.example"]
    assert len(sent) == 2, "a token request never reached ghcr.test's token service"
    assert all("authorization" not in r.headers for r in sent), (
        "the login held for the mirror's name went to ghcr.test's token service"
    )
    assert "via=prefix" in answer.headers["WWW-Authenticate"]


async def test_the_token_endpoints_401_to_an_upstream_reached_as_itself_names_its_realm() -> None:
    """The other side: a client that reached ghcr.test as itself (``?ns=``, its own host
    name: the realm names it, the scope names its repository as ghcr.test does) holds
    ghcr.test's own login. The 401 when ghcr.test refuses it keeps the plain realm, and the
    login goes there again when followed."""
    upstream = FakeUpstream(ghcr_refusing_anonymous)
    async with open_mirror_with_ghcr(upstream) as app:
        login = [("Authorization", HUB_LOGIN)]
        scope = "repository:owner/img:pull"
        asked = f"/auth/token?upstream=ghcr.test&service=ghcr-service&scope={scope}"
        answer = await call_asgi(app, "GET", asked, host=MIRROR, headers=login)
        assert answer.status == 401
        assert "via=prefix" not in answer.headers["WWW-Authenticate"]
        assert "upstream=ghcr.test" in answer.headers["WWW-Authenticate"]
        await follow_with_login(app, answer)
    sent = [r for r in upstream.requests if r.url.host == "auth.ghcr.example"]
    assert [r.headers.get("authorization") for r in sent] == [HUB_LOGIN, HUB_LOGIN]
