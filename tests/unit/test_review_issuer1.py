"""Review of whose a client's Bearer token is (issuer1): a token the mirror relayed for one
upstream went to another once the mirror's memory of it was gone (a restart, or eviction).

The outside reviewer's repro comes first; then a single-upstream mirror, whose unknown tokens
can only be its upstream's; then tokens told apart by their JWT claims. Nothing leaves the
process: the upstreams are ``httpx.MockTransport`` fakes (``tests.unit.test_multi_routes``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from docxy.config import load_config
from docxy.core.claims import TokenClaims, token_claims
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.upstream.issuers import TokenService, told_for
from tests.unit.asgi import call_asgi
from tests.unit.fakes import FakeUpstream
from tests.unit.test_multi_routes import PUBLIC, Mirror, mirror, registries

LOGIN = [("Authorization", "Basic " + base64.b64encode(b"bob:hunter2").decode())]
HUB_PATH = "/v2/owner/img/manifests/1?ns=docker.io"
GHCR_PATH = "/v2/owner/img/manifests/1?ns=ghcr.test"


def sent_with(m: Mirror, host: str, token: str) -> list[httpx.Request]:
    """The requests to the registry ``host`` that carried ``token``."""
    return [
        r
        for r in m.upstream.requests
        if r.url.host == host and f"Bearer {token}" in r.headers.get_list("authorization")
    ]


async def relayed_token(m: Mirror, query: str) -> str:
    path = f"/auth/token?{query}"
    answer = await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=LOGIN)
    assert answer.status == 200
    token: str = json.loads(answer.body)["token"]
    return token


async def pull(m: Mirror, path: str, token: str) -> int:
    bearer = [("Authorization", f"Bearer {token}")]
    answer = await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=bearer)
    return answer.status


# --- the reviewer's repro: ghcr.io's token to Docker Hub after a restart -------------------


async def test_ghcr_token_reaches_hub_after_restart() -> None:
    """ghcr.io's token, got with the client's ghcr.io login, was kept from Docker Hub while
    the mirror remembered whose it was, and sent there after a restart (containerd reuses it
    for the same scope with ``?ns=docker.io``)."""
    async with mirror() as m:
        token = await relayed_token(m, "upstream=ghcr.test&scope=repository:owner/img:pull")
        await pull(m, HUB_PATH, token)
        assert sent_with(m, "hub.example", token) == []  # remembered: kept from Docker Hub
    async with mirror() as m2:  # the mirror restarted (upgrade, appliance restart)
        await pull(m2, HUB_PATH, token)
        after = sent_with(m2, "hub.example", token)
    assert after == [], f"ghcr.io's token sent to Docker Hub: {[str(r.url) for r in after]}"


# --- one upstream: an unknown token can only be its own ------------------------------------


@asynccontextmanager
async def hub_alone() -> AsyncIterator[Mirror]:
    """``test_multi_routes``'s mirror with Docker Hub (``[upstream]``) alone."""
    overrides: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false",
    }
    upstream = FakeUpstream(registries)
    config = load_config(overrides, environ={})
    app = create_app(config, probe=False, transport=httpx.MockTransport(upstream))
    async with app.test_app():
        yield Mirror(app, upstream)


async def test_a_single_upstream_mirror_forwards_a_token_after_a_restart() -> None:
    """A pull in progress across a restart keeps working: with Docker Hub alone, a token the
    mirror does not know is Docker Hub's, and goes there (opaque, as the fake's are)."""
    async with hub_alone() as m:
        token = await relayed_token(m, "scope=repository:owner/img:pull")
    async with hub_alone() as m2:
        status = await pull(m2, "/v2/owner/img/manifests/1", token)
        forwarded = sent_with(m2, "hub.example", token)
    assert forwarded, "the client's own token was not sent to its only upstream"
    assert status == 200


# --- several upstreams: an unknown token told by its claims --------------------------------


def jwt(claims: dict[str, object]) -> str:
    """An unsigned JWT: the mirror reads its claims only to tell whose it is, never trusts it."""

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def probed(m: Mirror) -> None:
    """What the start-up probe does (off in these tests): each upstream's challenge seen."""
    state = mirror_state(m.app)
    for upstream in state.upstreams.all():
        await state.client.challenge(upstream)


#: The lab registry without the mirror's login: a client's token would go there as it is.
NO_LAB_LOGIN: dict[str, object] = {
    "upstreams.lab.test.username": "",
    "upstreams.lab.test.password": "",
}
HUB_JWT = jwt({"iss": "auth.other.example", "aud": "hub-service", "sub": "bob"})
HUB_BY_ISSUER = jwt({"iss": "auth.hub.example", "sub": "bob"})
GHCR_JWT = jwt({"iss": "auth.ghcr.example", "aud": ["ghcr-service"], "sub": "bob"})


@pytest.mark.parametrize("token", [HUB_JWT, HUB_BY_ISSUER])
async def test_a_token_whose_claims_name_the_upstream_goes_to_it(token: str) -> None:
    """Several upstreams, a restart: Docker Hub's own token (its ``aud`` the ``service`` of
    Docker Hub's challenge, or its ``iss`` the host of Docker Hub's realm) still goes to it."""
    async with mirror() as m:
        await probed(m)
        await pull(m, HUB_PATH, token)
        assert sent_with(m, "hub.example", token)


@pytest.mark.parametrize(
    ("token", "path", "host"),
    [
        (GHCR_JWT, HUB_PATH, "hub.example"),  # ghcr.io's, by its aud and iss
        (HUB_JWT, GHCR_PATH, "ghcr.example"),  # Docker Hub's, to ghcr.io
        (HUB_JWT, "/v2/lab.test/owner/img/manifests/1", "lab.example"),  # to the lab's
        ("opaque-token", HUB_PATH, "hub.example"),  # cannot be told
        (jwt({"sub": "bob"}), HUB_PATH, "hub.example"),  # no aud, no iss: cannot be told
        ("bm90.-a-jwt.x", HUB_PATH, "hub.example"),  # not JSON inside
        (jwt({"aud": ["hub-service", "ghcr-service"]}), HUB_PATH, "hub.example"),  # both
    ],
)
async def test_a_token_not_told_to_be_the_upstreams_stays_here(
    token: str, path: str, host: str
) -> None:
    async with mirror(None, **NO_LAB_LOGIN) as m:
        await probed(m)
        status = await pull(m, path, token)
        assert sent_with(m, host, token) == []
    assert status in (200, 401)  # the mirror's own token, or a challenge to ask again


async def test_a_token_is_not_told_while_another_upstreams_challenge_is_unknown() -> None:
    """Docker Hub's ``aud``, but ghcr.io's challenge not yet seen (its probe failed, or has
    not run since the restart): it may name the same service. Not sent; the client asks the
    mirror for a token again, which the mirror then knows."""
    async with mirror() as m:
        await pull(m, HUB_PATH, HUB_JWT)
        assert sent_with(m, "hub.example", HUB_JWT) == []


# --- the pure parts: a token's claims, and whether they tell whose it is -------------------


@pytest.mark.parametrize(
    ("authorization", "audiences", "issuer"),
    [
        (f"Bearer {HUB_JWT}", {"hub-service"}, "auth.other.example"),
        (f"bearer  {GHCR_JWT} ", {"ghcr-service"}, "auth.ghcr.example"),
        (f"Bearer {jwt({'aud': ['a', 7, '', 'b']})}", {"a", "b"}, None),
        (f"Bearer {jwt({'iss': 'https://Auth.Hub.example/'})}", set(), "https://Auth.Hub.example/"),
    ],
)
def test_token_claims_of_a_jwt(authorization: str, audiences: set[str], issuer: str) -> None:
    claims = token_claims(authorization)
    assert claims is not None
    assert claims.audiences == audiences
    assert claims.issuer == issuer


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic Ym9iOmh1bnRlcjI=",
        "Bearer ",
        "Bearer opaque-token",
        "Bearer a.b",
        f"Bearer {HUB_JWT}.extra.parts",  # a JWE: its claims are not readable
        "Bearer bm90.-a-jwt.x",
        "Bearer e30.e30.e30",  # {} : no aud, no iss
        f"Bearer {jwt({'aud': 7, 'iss': ''})}",
        "Bearer x.W10.x",  # [] : JSON, but not an object
        "Bearer x.%%%%.x",
    ],
)
def test_token_claims_of_anything_else(authorization: str | None) -> None:
    assert token_claims(authorization) is None


HUB = TokenService(frozenset({"hub-service"}), frozenset({"auth.hub.example"}))
GHCR = TokenService(frozenset({"ghcr-service"}), frozenset({"auth.ghcr.example"}))
NONE = TokenService(frozenset(), frozenset())  # a Basic or open registry


@pytest.mark.parametrize(
    ("claims", "routed", "others", "told"),
    [
        (TokenClaims(frozenset({"hub-service"}), None), HUB, [GHCR, NONE], True),
        (TokenClaims(frozenset(), "auth.hub.example"), HUB, [GHCR], True),
        (TokenClaims(frozenset(), "https://AUTH.hub.example/"), HUB, [GHCR], True),
        (TokenClaims(frozenset({"ghcr-service"}), None), HUB, [GHCR], False),
        (TokenClaims(frozenset({"hub-service"}), "auth.ghcr.example"), HUB, [GHCR], False),
        (TokenClaims(frozenset({"hub-service"}), None), NONE, [HUB], False),
        (TokenClaims(frozenset({"hub-service"}), None), None, [GHCR], False),  # not seen
        (TokenClaims(frozenset({"hub-service"}), None), HUB, [GHCR, None], False),  # not seen
        (None, HUB, [GHCR], False),  # opaque
    ],
)
def test_told_for(
    claims: TokenClaims | None,
    routed: TokenService | None,
    others: list[TokenService | None],
    told: bool,
) -> None:
    assert told_for(claims, routed, others) is told
