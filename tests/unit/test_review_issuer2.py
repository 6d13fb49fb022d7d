"""Review r4 of whose a client's Bearer token is (issuer2): what the withheld token's client is
told, how often the routed upstream is probed for it, the ``/v2/`` ping, ``?ns=`` ports, and
upstreams whose ``/v2/`` names no Bearer challenge. Nothing leaves the process: the upstreams
are ``httpx.MockTransport`` fakes (``tests.unit.test_multi_routes``'s three registries).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from docxy.config import load_config
from docxy.core.challenge import parse_challenge, split_challenges, with_error
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.upstream.client import Upstream
from docxy.upstream.routing import Upstreams, UpstreamUnknown
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import FakeUpstream, reply
from tests.unit.test_multi_routes import CHALLENGES, JSON, PUBLIC, Mirror, registries
from tests.unit.test_review_issuer1 import jwt

HUB_CLIENT = jwt({"iss": "auth.hub.example", "aud": "hub-service", "sub": "bob"})
OWN = {"hub.example": HUB_CLIENT, "ghcr.example": "ghcr-client"}
PRIVATE = "/v2/private/img/manifests/1"
MANIFEST = {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}


class Registries:
    """``test_multi_routes``' registries, with ``private/img`` on Docker Hub for bob's token
    alone, ghcr.io down when asked, and the lab registry (Basic) open when asked."""

    def __init__(self) -> None:
        self.ghcr_down = False
        self.ghcr_ping_down = False  # ghcr.io's /v2/ alone answers 503
        self.lab_open = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if self.ghcr_down and host == "ghcr.example":
            return reply(503, b"{}", JSON)
        if self.ghcr_ping_down and host == "ghcr.example" and path == "/v2/":
            return reply(503, b"{}", JSON)
        if self.lab_open and host == "lab.example" and path == "/v2/":
            return reply(200, b"{}", JSON)
        if "/private/" in path and host in ("hub.example", "ghcr.example"):
            if request.headers.get("authorization") != f"Bearer {OWN[host]}":
                headers = {"WWW-Authenticate": CHALLENGES[host], **JSON}
                return reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', headers)
            return reply(200, b"{}", MANIFEST, length=True)
        return registries(request)


@asynccontextmanager
async def mirror(fake: Registries, **settings: object) -> AsyncIterator[Mirror]:
    overrides: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false",
        "upstreams": "ghcr.test=https://ghcr.example,lab.test=https://lab.example",
        "upstreams.lab.test.username": "lab",
        "upstreams.lab.test.password": "pw",
    }
    overrides.update(settings)
    upstream = FakeUpstream(fake)
    app = create_app(
        load_config(overrides, environ={}), probe=False, transport=httpx.MockTransport(upstream)
    )
    async with app.test_app():
        yield Mirror(app, upstream)


async def probe_all(m: Mirror) -> None:
    """What the start-up probe does (off in these tests); one that fails is left unseen."""
    state = mirror_state(m.app)
    for upstream in state.upstreams.all():
        try:
            await state.client.challenge(upstream)
        except Exception:  # noqa: BLE001, S110 - a registry down: its challenge stays unseen
            pass


async def get(m: Mirror, path: str, token: str | None) -> AsgiAnswer:
    headers = [] if token is None else [("Authorization", f"Bearer {token}")]
    return await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=headers)


def errors_of(answer: AsgiAnswer) -> list[str | None]:
    """The ``error`` parameter of each Bearer challenge of a ``401``."""
    assert answer.status == 401
    found = []
    for value in answer.headers.getlist("www-authenticate"):
        for text in split_challenges(value):
            parsed = parse_challenge(text)
            assert parsed is not None
            if parsed.scheme.lower() == "bearer":
                found.append(parsed.params.get("error"))
    assert found, "no Bearer challenge"
    return found


def sent_with(m: Mirror, host: str, token: str) -> list[str]:
    return [
        str(r.url)
        for r in m.upstream.requests
        if r.url.host == host and r.headers.get("authorization") == f"Bearer {token}"
    ]


# --- fault 1: a withheld token's 401 says it is invalid, so containerd asks for a new one ----


async def test_a_withheld_tokens_challenge_says_invalid_token() -> None:
    """Docker Hub's private pull across a restart while ghcr.io is down (its challenge unseen,
    so Docker Hub's JWT cannot be told apart from ghcr.io's): withheld, and the ``401`` says
    ``error="invalid_token"`` (RFC 6750 §3.1), without which containerd resends the same token
    until its retries run out."""
    fake = Registries()
    fake.ghcr_down = True
    async with mirror(fake) as m:
        await probe_all(m)
        answer = await get(m, PRIVATE, HUB_CLIENT)
        assert sent_with(m, "hub.example", HUB_CLIENT) == []
    assert errors_of(answer) == ["invalid_token"]


async def test_another_upstreams_relayed_token_gets_invalid_token() -> None:
    """ghcr.io's relayed token, reused by containerd for Docker Hub's same scope: withheld,
    and told invalid, so containerd drops its handler (ghcr.io's realm) and asks anew."""
    async with mirror(Registries()) as m:
        said = await call_asgi(
            m.app,
            "GET",
            "/auth/token?upstream=ghcr.test&scope=repository:private/img:pull",
            host="mirror.example.com",
        )
        token = json.loads(said.body)["token"]
        answer = await get(m, PRIVATE + "?ns=docker.io", token)
        assert sent_with(m, "hub.example", token) == []
    assert errors_of(answer) == ["invalid_token"]


async def test_a_401_without_a_client_token_names_no_error() -> None:
    """The ordinary start of the token dance: no client token, no ``error`` (a client would
    take it for a refused token)."""
    async with mirror(Registries()) as m:
        await probe_all(m)
        answer = await get(m, PRIVATE, None)
    assert errors_of(answer) == [None]


async def test_a_forwarded_tokens_401_names_no_error_of_the_mirrors() -> None:
    """A token that went upstream and was refused there: the upstream's own word, relayed."""
    async with mirror(Registries()) as m:
        await probe_all(m)
        other = jwt({"iss": "auth.hub.example", "aud": "hub-service", "sub": "eve"})
        answer = await get(m, PRIVATE, other)
        assert sent_with(m, "hub.example", other)
    assert errors_of(answer) == [None]


# --- fault 2: the routed upstream down, probed at most once, never twice a request --------


def probes(m: Mirror, since: int, host: str) -> list[str]:
    return [
        str(r.url)
        for r in m.upstream.requests[since:]
        if r.url.host == host and r.url.path == "/v2/"
    ]


async def test_a_down_upstream_is_probed_once_for_many_unknown_tokens() -> None:
    fake = Registries()
    fake.ghcr_down = True
    async with mirror(fake) as m:
        before = len(m.upstream.requests)
        for _ in range(3):
            await get(m, "/v2/owner/img/manifests/1?ns=ghcr.test", HUB_CLIENT)
        assert len(probes(m, before, "ghcr.example")) <= 1


async def test_one_request_probes_the_routed_upstream_once_at_most() -> None:
    fake = Registries()
    fake.ghcr_down = True
    async with mirror(fake) as m:
        await get(m, "/v2/owner/img/manifests/1?ns=ghcr.test", HUB_CLIENT)
        assert len(probes(m, 0, "ghcr.example")) <= 1


async def test_a_cache_hit_waits_for_no_probe(tmp_path: object) -> None:
    """A manifest by digest the cache holds, asked with a token the mirror does not know for
    an upstream never probed: served from the cache, no ``/v2/`` asked first."""
    async with mirror(Registries(), **{"cache.enabled": "true", "cache.dir": str(tmp_path)}) as m:
        await probe_all(m)
        first = await get(m, "/v2/owner/img/manifests/1?ns=ghcr.test", None)
        assert first.status == 200
        digest = first.headers["docker-content-digest"]
        state = mirror_state(m.app)
        state.client._realms.clear()  # a restart: no challenge seen yet
        before = len(m.upstream.requests)
        answer = await get(m, f"/v2/owner/img/manifests/{digest}?ns=ghcr.test", HUB_CLIENT)
        assert answer.status == 200
        assert probes(m, before, "ghcr.example") == []


async def test_a_down_upstream_is_probed_once_for_many_pass_throughs() -> None:
    """ghcr.io's ``/v2/`` down, its private repository answering the mirror's token ``401``:
    each request passes through, and its unknown JWT cannot be told. One probe for them all
    (then :data:`~docxy.upstream.client.PROBE_RETRY` without), each told its token invalid."""
    fake = Registries()
    fake.ghcr_ping_down = True
    async with mirror(fake) as m:
        answers = [await get(m, PRIVATE + "?ns=ghcr.test", HUB_CLIENT) for _ in range(3)]
        assert len(probes(m, 0, "ghcr.example")) == 1
        assert sent_with(m, "ghcr.example", HUB_CLIENT) == []
    assert [errors_of(a) for a in answers] == [["invalid_token"]] * 3


async def test_an_untold_token_is_told_by_the_pass_through() -> None:
    """A restart, Docker Hub's challenge not seen yet (the others' are): the private pull's
    token is not told when the request comes in (no probe before the cache), but the
    pass-through probes Docker Hub's ``/v2/`` once, tells it, and sends it: the pull works."""
    async with mirror(Registries()) as m:
        await probe_all(m)
        state = mirror_state(m.app)
        del state.client._realms["hub.example"]
        before = len(m.upstream.requests)
        answer = await get(m, PRIVATE, HUB_CLIENT)
        assert len(probes(m, before, "hub.example")) == 1
    assert answer.status == 200


# --- fault 3: the /v2/ ping keeps another upstream's token -------------------------------


async def test_the_ping_keeps_another_upstreams_token() -> None:
    async with mirror(Registries()) as m:
        await probe_all(m)
        said = await call_asgi(
            m.app,
            "GET",
            "/auth/token?upstream=ghcr.test&scope=repository:o/i:pull",
            host="mirror.example.com",
        )
        token = json.loads(said.body)["token"]
        answer = await get(m, "/v2/?ns=docker.io", token)
        assert sent_with(m, "hub.example", token) == []
    assert errors_of(answer) == ["invalid_token"]


async def test_the_ping_forwards_the_upstreams_own_token() -> None:
    async with mirror(Registries()) as m:
        await probe_all(m)
        await get(m, "/v2/", HUB_CLIENT)
        assert sent_with(m, "hub.example", HUB_CLIENT)


# --- fault 4: ?ns= with :443 is the name without, whatever the upstream's scheme ----------

PLAIN = Upstream("http://10.0.0.5:5000", library_prefix=False, name="registry.lab.example")
SECURE = Upstream("https://secure.example", library_prefix=False, name="secure.test")
HUB = Upstream("https://hub.example", library_prefix=True, name="docker.io")


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        ("registry.lab.example:443", PLAIN),
        ("registry.lab.example", PLAIN),
        ("secure.test:443", SECURE),
    ],
)
def test_ns_443_is_no_port_for_every_upstream(ns: str, expected: Upstream) -> None:
    assert Upstreams(HUB, [SECURE, PLAIN]).route("app", ns=ns).upstream is expected


@pytest.mark.parametrize(
    "ns",
    ["registry.lab.example:80", "secure.test:80", "secure.test:8443"],
)
def test_ns_any_other_port_is_another_registry(ns: str) -> None:
    with pytest.raises(UpstreamUnknown):
        Upstreams(HUB, [SECURE, PLAIN]).route("app", ns=ns)


# --- fault 5: an upstream with no Bearer challenge of its own is told apart ---------------


async def test_an_auth_realm_upstream_with_a_basic_challenge_is_told_apart() -> None:
    """The lab registry's ``/v2/`` says Basic, and an ``auth_realm`` is set for it: it was
    never seen to name a service, yet Docker Hub's JWT (Docker Hub's ``aud`` and ``iss``,
    not the lab realm's host) is told to be Docker Hub's."""
    settings = {"upstreams.lab.test.auth_realm": "https://auth.lab.example/token"}
    async with mirror(Registries(), **settings) as m:
        await probe_all(m)
        await get(m, "/v2/owner/img/manifests/1", HUB_CLIENT)
        assert sent_with(m, "hub.example", HUB_CLIENT)


async def test_an_auth_realm_upstreams_own_issuer_is_not_told() -> None:
    """A JWT whose ``iss`` is the lab's configured realm's host is not Docker Hub's."""
    settings = {"upstreams.lab.test.auth_realm": "https://auth.lab.example/token"}
    token = jwt({"iss": "auth.lab.example", "aud": "hub-service"})
    async with mirror(Registries(), **settings) as m:
        await probe_all(m)
        await get(m, "/v2/owner/img/manifests/1", token)
        assert sent_with(m, "hub.example", token) == []


async def test_an_open_upstream_with_an_auth_realm_is_told_apart() -> None:
    fake = Registries()
    fake.lab_open = True
    settings = {"upstreams.lab.test.auth_realm": "https://auth.lab.example/token"}
    async with mirror(fake, **settings) as m:
        await probe_all(m)
        await get(m, "/v2/owner/img/manifests/1", HUB_CLIENT)
        assert sent_with(m, "hub.example", HUB_CLIENT)


# --- the pure part: a challenge told its token is invalid ----------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer realm="r",service="s"', 'Bearer realm="r",service="s",error="invalid_token"'),
        ('bearer realm="r"', 'bearer realm="r",error="invalid_token"'),
        (
            'Bearer realm="r",error="insufficient_scope"',
            'Bearer realm="r",error="insufficient_scope"',
        ),
        ('Basic realm="lab"', 'Basic realm="lab"'),
        ("Bearer", 'Bearer error="invalid_token"'),
    ],
)
def test_with_error(header: str, expected: str) -> None:
    assert with_error(header, "invalid_token") == expected
