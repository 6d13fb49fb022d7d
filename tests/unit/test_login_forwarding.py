"""Whose login reaches which token service, seen by a real token server on 127.0.0.1.

A second upstream (``ghcr.test``) is a loopback registry whose challenges name **no scope**
(as some registries send them), with the bed's token server (``lab.bed.tokenserver``) behind
it, which records whether a request carried a login. The mirror is the real app with its real
httpx client; the client is played as docker plays it: GET, follow the challenge's realm with
the login it holds for the host name it pulled from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.core.challenge import parse_challenge
from docxy.http.app import create_app
from docxy.http.token_ask import basic_authorization
from lab.bed.httpserver import LoopbackServer, QuietHandler
from lab.bed.tokenserver import AccessPolicy, Signer, TokenRequest, TokenServer
from lab.ports import free_port
from tests.unit.asgi import call_asgi

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

PUBLIC = "https://mirror.example.com"
GHCR_HOST = "ghcr-mirror.example.com"
SERVICE = "ghcr-service"
LOGIN = basic_authorization("bob", "hunter2")  # what docker holds for the host it pulled from


@dataclass
class Ghcr:
    registry: LoopbackServer
    tokens: TokenServer

    def seen(self) -> list[TokenRequest]:
        return self.tokens.log.snapshot()


@contextmanager
def scopeless_registry() -> Iterator[Ghcr]:
    """A registry answering every ``/v2/`` request 401 with a Bearer challenge naming its
    realm and service only, and the token service that realm names."""
    policy = AccessPolicy(users={"bob": "hunter2"}, admins=frozenset(), private_repos=frozenset())
    tokens = TokenServer(policy, SERVICE, Signer("ghcr-issuer"))

    class Registry(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            challenge = f'Bearer realm="{tokens.realm}",service="{SERVICE}"'
            body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
            self.send_bytes(401, body, "application/json", {"WWW-Authenticate": challenge})

    registry = LoopbackServer(Registry)
    tokens.start()
    registry.start()
    try:
        yield Ghcr(registry, tokens)
    finally:
        registry.stop()
        tokens.stop()


@asynccontextmanager
async def mirror_of(ghcr: Ghcr) -> AsyncIterator[Quart]:
    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": f"http://127.0.0.1:{free_port()}",  # never asked here
            "cache.enabled": "false",
            "upstreams": f"ghcr.test={ghcr.registry.url}",
            "upstreams.ghcr.test.hosts": GHCR_HOST,
        },
        environ={},
    )
    app = create_app(config, probe=False)
    async with app.test_app():
        yield app


async def follow(app: Quart, path: str, host: str, login: str = LOGIN) -> int:
    """GET ``path`` on ``host``, then the realm its challenge names with ``login``, as docker
    does (no scope in the challenge: none in the token request). The token answer's status."""
    answer = await call_asgi(app, "GET", path, host=host)
    assert answer.status == 401, answer.body
    challenge = parse_challenge(answer.headers["WWW-Authenticate"])
    assert challenge is not None and challenge.realm is not None
    assert "scope" not in challenge.params
    realm = httpx.URL(challenge.realm)
    assert realm.host == "mirror.example.com"  # the upstream's realm never reaches a client
    query = realm.params.merge({"service": challenge.params.get("service", ""), "account": "bob"})
    headers = [("Authorization", login)]
    token = await call_asgi(app, "GET", f"{realm.path}?{query}", host=host, headers=headers)
    return token.status


async def test_the_mirrors_login_never_reaches_a_prefixed_upstream_without_a_scope() -> None:
    """`docker pull mirror.example.com/ghcr.test/owner/img`: the login is mirror.example.com's
    (Docker Hub's). ghcr.test's challenge names no scope, so no scope says "by prefix" either:
    the token request must still go to ghcr.test's token service without it."""
    with scopeless_registry() as ghcr:
        async with mirror_of(ghcr) as app:
            status = await follow(app, "/v2/ghcr.test/owner/img/manifests/1", "mirror.example.com")
        assert status == 200
        [seen] = ghcr.seen()
    assert (seen.service, seen.scopes) == (SERVICE, ())
    assert not seen.had_basic_auth, "the mirror's login went to ghcr.test's token service"
    assert seen.account is None  # ``account`` names the login left out


async def test_a_posted_password_by_prefix_without_a_scope_stays_too() -> None:
    """The same through the OAuth2 form containerd POSTs: the password grant becomes a login,
    which must not go to ghcr.test's token service either."""
    with scopeless_registry() as ghcr:
        async with mirror_of(ghcr) as app:
            answer = await call_asgi(
                app, "GET", "/v2/ghcr.test/owner/img/manifests/1", host="mirror.example.com"
            )
            challenge = parse_challenge(answer.headers["WWW-Authenticate"])
            assert challenge is not None and challenge.realm is not None
            realm = httpx.URL(challenge.realm)
            form = {"grant_type": "password", "username": "bob", "password": "hunter2"}
            posted = await app.test_client().post(f"{realm.path}?{realm.query.decode()}", form=form)
            assert posted.status_code == 200, await posted.get_data()
        [seen] = ghcr.seen()
    assert not seen.had_basic_auth and seen.account is None


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/v2/", GHCR_HOST),  # `docker login ghcr-mirror.example.com`
        ("/v2/owner/img/manifests/1", GHCR_HOST),
        ("/v2/owner/img/manifests/1?ns=ghcr.test", "mirror.example.com"),  # containerd
    ],
    ids=["login-by-host", "pull-by-host", "pull-by-ns"],
)
async def test_a_login_for_the_upstream_itself_still_reaches_it_without_a_scope(
    path: str, host: str
) -> None:
    """Reached as ghcr.test itself (one of its ``hosts``, or ``?ns=``), the client's login is
    ghcr.test's: it goes there, so a wrong password fails ``docker login`` as it should."""
    with scopeless_registry() as ghcr:
        async with mirror_of(ghcr) as app:
            assert await follow(app, path, host) == 200
            assert await follow(app, path, host, basic_authorization("bob", "wrong")) == 401
        seen = ghcr.seen()
    assert [(s.basic_user, s.status) for s in seen] == [("bob", 200), ("bob", 401)]
