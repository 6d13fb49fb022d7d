"""Review of the request path's front: the routes, the token endpoint and the mirror's tokens.

Each test is a fault found by reading ``docxy/http/routes.py``, ``auth.py``, ``token_ask.py`` and
``docxy/access/``, reproduced through the app (the ASGI call hypercorn makes) with the unit
tests' fake upstream, then mended.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from quart import Quart

from docxy.access.users import UsersFile
from docxy.config import load_config
from docxy.core.challenge import parse_challenge
from docxy.http.app import create_app
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import FakeUpstream, reply
from tests.unit.test_access_routes import CERTS, presenting

PUBLIC = "https://mirror.example.com"
MIRROR = "mirror.example.com"
JSON = {"Content-Type": "application/json"}
#: what a client holds for the mirror's main name: Docker Hub's login, never ghcr.test's
HUB_LOGIN = "Basic " + base64.b64encode(b"bob:hunter2").decode()
GHCR_CHALLENGE = 'Bearer realm="https://auth.ghcr.example/token",service="ghcr-service"'


def ghcr_refusing_the_mirror(request: httpx.Request) -> httpx.Response:
    """A registry (ghcr.example) whose token service refuses the mirror's anonymous ask (as a
    service may for a private repository); every registry request is a 401 challenge."""
    if request.url.host == "auth.ghcr.example":
        return reply(401, b'{"details": "authentication required"}', JSON)
    return reply(401, b"{}", {"WWW-Authenticate": GHCR_CHALLENGE, **JSON})


@asynccontextmanager
async def users_mirror_with_ghcr(tmp_path: Path, handler: FakeUpstream) -> AsyncIterator[Quart]:
    """Users mode, client certificates that may bring their own upstream login, and ghcr.test
    beside Docker Hub; requests made inside present the certificate of client ``laptop``."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false",
        "upstreams": "ghcr.test=https://ghcr.example",
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.upstream_logins": "true",
        **CERTS,
    }
    app = create_app(load_config(settings, environ={}), probe=False,
                     transport=httpx.MockTransport(handler))  # fmt: skip
    async with app.test_app(), presenting(tmp_path, "laptop"):
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


async def test_a_by_prefix_pull_refused_at_the_token_service_keeps_the_login_home(
    tmp_path: Path,
) -> None:
    """``mirror.example.com/ghcr.test/owner/img`` by a certificate client under
    ``auth.upstream_logins``, whose mirror token ghcr.test's token service refuses: the 401 got
    the challenge ``own_challenge`` builds, whose realm lacked ``via=prefix``. Followed with the
    login the client holds for the mirror's name (Docker Hub's), that login went to ghcr.test's
    token service. A by-prefix pull's challenges all say ``via=prefix`` (README, Several
    upstreams), this one too."""
    upstream = FakeUpstream(ghcr_refusing_the_mirror)
    async with users_mirror_with_ghcr(tmp_path, upstream) as app:
        path = "/v2/ghcr.test/owner/img/manifests/1"
        answer = await call_asgi(app, "GET", path, host=MIRROR)
        assert answer.status == 401
        await follow_with_login(app, answer)
    sent = [r for r in upstream.requests if r.url.host == "auth.ghcr.example"]
    assert sent, "the token request never reached ghcr.test's token service"
    assert all("authorization" not in r.headers for r in sent), (
        "the login held for the mirror's name went to ghcr.test's token service"
    )
