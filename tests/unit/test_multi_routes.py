"""Several upstreams through one mirror, against ``httpx.MockTransport`` upstreams.

Docker Hub (token auth), a ghcr.io-like registry (token auth of its own) and a lab registry
with Basic auth; each test checks which upstream was asked, with what names and scopes, and
that a request naming anything else is refused with nothing sent at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.core.challenge import parse_challenge
from docxy.http.app import create_app
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import FakeUpstream, reply

PUBLIC = "https://mirror.example.com"
HUB_AUTH = "https://auth.hub.example/token"
GHCR_AUTH = "https://auth.ghcr.example/token"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
SHARED = b"the same layer on two registries"
SHARED_DIGEST = "sha256:" + hashlib.sha256(SHARED).hexdigest()
CHALLENGES = {
    "hub.example": f'Bearer realm="{HUB_AUTH}",service="hub-service"',
    "ghcr.example": f'Bearer realm="{GHCR_AUTH}",service="ghcr-service"',
    "lab.example": 'Basic realm="lab"',
}
JSON = {"Content-Type": "application/json"}


def manifest_body(name: str) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "x", "digest": SHARED_DIGEST, "size": len(SHARED)},
        "layers": [],
        "annotations": {"from": name},
    }
    return json.dumps(doc).encode()


def registries(request: httpx.Request) -> httpx.Response:
    """Three registries by host; a manifest names where it came from."""
    host, path = request.url.host, request.url.path
    if host.startswith("auth."):
        return reply(200, json.dumps({"token": f"token-of-{host}"}).encode(), JSON)
    if host == "lab.example" and request.headers.get("authorization") != "Basic bGFiOnB3":
        return reply(401, b"{}", {"WWW-Authenticate": CHALLENGES[host], **JSON})
    if host != "lab.example" and not request.headers.get("authorization", "").startswith(
        "Bearer token-of-"
    ):
        scope = path.removeprefix("/v2/").rpartition("/manifests/")[0]
        extra = f',scope="repository:{scope}:pull"' if scope else ""
        return reply(401, b"{}", {"WWW-Authenticate": CHALLENGES[host] + extra, **JSON})
    if "/manifests/" in path:
        body = manifest_body(f"{host}{path}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest}
        return reply(200, b"" if request.method == "HEAD" else body, headers, length=True)
    if path.endswith(f"/blobs/{SHARED_DIGEST}"):
        return reply(200, SHARED, {"Content-Type": "application/octet-stream"}, length=True)
    if path == "/v2/":
        return reply(200, b"{}", JSON)
    return reply(404, b'{"errors": [{"code": "NOT_FOUND"}]}', JSON)


@dataclass
class Mirror:
    app: Quart
    upstream: FakeUpstream

    async def get(self, raw_path: str, host: str = "mirror.example.com") -> AsgiAnswer:
        return await call_asgi(self.app, "GET", raw_path, host=host)

    def sent(self) -> list[str]:
        return [f"{r.url.host}{r.url.path}" for r in self.upstream.requests]


@asynccontextmanager
async def mirror(cache: Path | None = None, **settings: object) -> AsyncIterator[Mirror]:
    overrides: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false" if cache is None else "true",
        "upstreams": "ghcr.test=https://ghcr.example,lab.test=https://lab.example",
        "upstreams.lab.test.hosts": "lab-mirror.example.com,127.0.0.2:8080",
        "upstreams.lab.test.username": "lab",
        "upstreams.lab.test.password": "pw",
    }
    if cache is not None:
        overrides["cache.dir"] = str(cache)
    overrides.update(settings)
    config = load_config(overrides, environ={})
    upstream = FakeUpstream(registries)
    app = create_app(config, probe=False, transport=httpx.MockTransport(upstream))
    async with app.test_app():
        yield Mirror(app, upstream)


def errors(answer: AsgiAnswer) -> list[str]:
    return [error["code"] for error in json.loads(answer.body)["errors"]]


def challenge_of(answer: AsgiAnswer) -> dict[str, str]:
    parsed = parse_challenge(answer.headers.get("www-authenticate") or "")
    assert parsed is not None
    return parsed.params


# --- which upstream -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        ("/v2/ghcr.test/owner/img/manifests/1", "mirror.example.com", "ghcr.example"),
        ("/v2/owner/img/manifests/1?ns=ghcr.test", "mirror.example.com", "ghcr.example"),
        ("/v2/owner/img/manifests/1?ns=ghcr.test:443", "mirror.example.com", "ghcr.example"),
        ("/v2/owner/img/manifests/1", "lab-mirror.example.com", "lab.example"),
        ("/v2/owner/img/manifests/1", "127.0.0.2:8080", "lab.example"),
        ("/v2/lab.test/owner/img/manifests/1", "mirror.example.com", "lab.example"),
        ("/v2/owner/img/manifests/1", "mirror.example.com", "hub.example"),
        ("/v2/docker.io/owner/img/manifests/1", "mirror.example.com", "hub.example"),
        ("/v2/owner/img/manifests/1?ns=docker.io", "lab-mirror.example.com", "hub.example"),
    ],
)
async def test_each_way_reaches_its_upstream(path: str, host: str, expected: str) -> None:
    async with mirror() as m:
        answer = await m.get(path, host)
    assert m.sent()[-1] == f"{expected}/v2/owner/img/manifests/1"
    assert {r.url.host for r in m.upstream.requests} <= {expected, "auth.hub.example"}
    if expected == "lab.example":
        # Passed through (the cache is off here) with the mirror's own Basic login: a client
        # can hold no login of its own for a registry without a token service.
        assert answer.status == 200
        assert m.upstream.requests[-1].headers["authorization"] == "Basic bGFiOnB3"


@pytest.mark.parametrize("entry", ["lab-mirror.example.com", "lab-mirror.example.com:443"])
@pytest.mark.parametrize("host", ["lab-mirror.example.com", "lab-mirror.example.com:443"])
async def test_a_host_with_or_without_its_default_port_reaches_its_upstream(
    entry: str, host: str
) -> None:
    settings: dict[str, object] = {"upstreams.lab.test.hosts": entry}
    async with mirror(None, **settings) as m:
        answer = await m.get("/v2/owner/img/manifests/1", host)
    assert answer.status == 200
    assert m.sent()[-1] == "lab.example/v2/owner/img/manifests/1"
    assert {r.url.host for r in m.upstream.requests} == {"lab.example"}


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/owner/img/manifests/1?ns=evil.com", "NAME_UNKNOWN"),
        ("/v2/owner/img/manifests/1?ns=quay.io", "NAME_UNKNOWN"),  # a preset not enabled
        ("/v2/owner/img/manifests/1?ns=ghcr.test:8443", "NAME_UNKNOWN"),  # not a default port
        ("/v2/owner/img/manifests/1?ns=ghcr.test%40evil.com", "NAME_UNKNOWN"),
        ("/v2/owner/img/manifests/1?ns=", "NAME_UNKNOWN"),
        ("/v2/?ns=evil.com", "NAME_UNKNOWN"),
        ("/v2/evil.com/owner/img/manifests/1", "NAME_UNKNOWN"),
        ("/v2/evil.com@ghcr.test/owner/img/manifests/1", "NAME_INVALID"),
        ("/v2/user:pw@ghcr.test/owner/img/manifests/1", "NAME_INVALID"),
        ("/v2/ghcr.test:443/owner/img/manifests/1", "NAME_INVALID"),
        ("/v2/evil.com%2Fghcr.test/owner/img/manifests/1", "NAME_INVALID"),
        ("/v2/ghcr.test%2Fowner/img/manifests/1", "NAME_INVALID"),
        ("/v2/ghcr.test/../evil.com/img/manifests/1", "NAME_INVALID"),
        ("/v2/ghcr.test/%2e%2e/img/manifests/1", "NAME_INVALID"),
        ("/v2/http:%2F%2Fevil.com/img/manifests/1", "NAME_INVALID"),
        ("/v2/ghcr.test/owner/img/blobs/sha256:..%2F..%2Fx", "DIGEST_INVALID"),
    ],
)
async def test_bad_upstreams_are_refused_with_nothing_sent(path: str, code: str) -> None:
    async with mirror() as m:
        answer = await m.get(path)
    assert errors(answer) == [code]
    assert answer.status in (400, 404)
    assert m.upstream.requests == []


async def test_an_unknown_host_header_picks_nothing() -> None:
    """Host names are looked up in `hosts`; anything else is the mirror's own name."""
    async with mirror() as m:
        await m.get("/v2/owner/img/manifests/1", host="ghcr.example")
        await m.get("/v2/owner/img/manifests/1", host="evil.example:443")
    assert {r.url.host for r in m.upstream.requests} <= {"hub.example"}


# --- challenges and tokens ------------------------------------------------------------------


async def test_challenges_name_the_upstream_and_the_clients_repository() -> None:
    async with mirror() as m:
        by_prefix = await m.get("/v2/ghcr.test/owner/img/manifests/1")
        by_ns = await m.get("/v2/owner/img/manifests/1?ns=ghcr.test")
        hub = await m.get("/v2/owner/img/manifests/1")
    assert by_prefix.status == by_ns.status == hub.status == 401
    realm = f"{PUBLIC}/auth/token?upstream=ghcr.test"
    assert challenge_of(by_prefix) == {
        "realm": realm + "&via=prefix",  # the client's login is the mirror's: kept from ghcr
        "service": "ghcr-service",
        "scope": "repository:ghcr.test/owner/img:pull",
    }
    assert challenge_of(by_ns)["scope"] == "repository:owner/img:pull"
    assert challenge_of(by_ns)["realm"] == realm
    assert challenge_of(hub)["realm"] == f"{PUBLIC}/auth/token"


async def test_v2_by_host_answers_for_that_upstream() -> None:
    async with mirror() as m:
        lab = await m.get("/v2/", host="lab-mirror.example.com")
        hub = await m.get("/v2/")
    assert lab.status == 401 and lab.headers.get("www-authenticate") == 'Basic realm="lab"'
    assert challenge_of(hub)["realm"] == f"{PUBLIC}/auth/token"
    assert m.sent() == ["lab.example/v2/", "hub.example/v2/"]


def token_query(m: Mirror) -> tuple[str, list[tuple[str, str]]]:
    (sent,) = [r for r in m.upstream.requests if r.url.host.startswith("auth.")]
    return f"https://{sent.url.host}{sent.url.path}", parse_qsl(sent.url.query.decode())


async def test_token_by_scope_prefix_goes_to_that_upstreams_service() -> None:
    """docker pull mirror/ghcr.test/owner/img: the mirror's /v2/ named Docker Hub's service."""
    async with mirror() as m:
        answer = await m.get(
            "/auth/token?service=hub-service&scope=repository:ghcr.test/owner/img:pull"
        )
    assert answer.status == 200
    assert json.loads(answer.body)["token"] == "token-of-auth.ghcr.example"
    realm, query = token_query(m)
    assert realm == GHCR_AUTH
    assert query == [("service", "ghcr-service"), ("scope", "repository:owner/img:pull")]


async def test_credentials_go_only_to_the_upstream_whose_challenge_named_the_realm() -> None:
    basic = [("Authorization", "Basic Ym9iOmh1bnRlcjI=")]
    async with mirror() as m:
        by_scope = "/auth/token?scope=repository:ghcr.test/owner/img:pull"
        await call_asgi(m.app, "GET", by_scope, host="mirror.example.com", headers=basic)
        by_realm = "/auth/token?upstream=ghcr.test&scope=repository:owner/img:pull"
        await call_asgi(m.app, "GET", by_realm, host="mirror.example.com", headers=basic)
        hub = "/auth/token?scope=repository:redis:pull"
        await call_asgi(m.app, "GET", hub, host="mirror.example.com", headers=basic)
    sent = [r for r in m.upstream.requests if r.url.host.startswith("auth.")]
    assert [(r.url.host, "authorization" in r.headers) for r in sent] == [
        ("auth.ghcr.example", False),  # the mirror's /v2/ realm is Docker Hub's: not ghcr's login
        ("auth.ghcr.example", True),  # a challenge for ghcr.test named this realm
        ("auth.hub.example", True),
    ]


async def test_token_by_realm_parameter() -> None:
    async with mirror() as m:
        answer = await m.get(
            "/auth/token?upstream=ghcr.test&service=ghcr-service"
            "&scope=repository:owner/img:pull&scope=repository:ghcr.test/owner/img:pull"
        )
    assert answer.status == 200
    realm, query = token_query(m)
    assert realm == GHCR_AUTH
    assert ("upstream", "ghcr.test") not in query
    assert [v for k, v in query if k == "scope"] == ["repository:owner/img:pull"] * 2


async def test_docker_hub_tokens_are_unchanged() -> None:
    async with mirror() as m:
        await m.get("/auth/token?service=hub-service&scope=repository:redis:pull")
    realm, query = token_query(m)
    assert realm == HUB_AUTH
    assert query == [("service", "hub-service"), ("scope", "repository:library/redis:pull")]


async def test_an_upstream_without_token_auth_gets_a_mirror_only_token() -> None:
    async with mirror() as m:
        answer = await m.get("/auth/token?scope=repository:lab.test/owner/img:pull")
    assert answer.status == 200
    assert json.loads(answer.body)["token"]
    assert m.sent() == ["lab.example/v2/"]  # asked how it authenticates; no token service


@pytest.mark.parametrize(
    "query",
    [
        "upstream=evil.com&scope=repository:owner/img:pull",
        "scope=repository:evil.com/owner/img:pull",
        "scope=repository:ghcr.test/a/b:pull&scope=repository:library/redis:pull",
    ],
)
async def test_token_requests_for_no_or_two_upstreams_are_refused(query: str) -> None:
    async with mirror() as m:
        answer = await m.get(f"/auth/token?{query}", host="mirror.example.com")
    assert answer.status in (400, 404)
    assert m.upstream.requests == []


# --- one cache ------------------------------------------------------------------------------


async def test_one_cache_blobs_shared_tags_per_upstream(tmp_path: Path) -> None:
    async with mirror(tmp_path / "cache") as m:
        ghcr = await m.get("/v2/ghcr.test/owner/img/manifests/1")
        hub = await m.get("/v2/owner/img/manifests/1")
        lab = await m.get("/v2/owner/img/manifests/1", host="lab-mirror.example.com")
        first = await m.get(f"/v2/ghcr.test/owner/img/blobs/{SHARED_DIGEST}")
        fetched = m.sent().count(f"ghcr.example/v2/owner/img/blobs/{SHARED_DIGEST}")
        again = await m.get(f"/v2/owner/img/blobs/{SHARED_DIGEST}?ns=docker.io")
        later = await m.get("/v2/ghcr.test/owner/img/manifests/1")
    assert [a.status for a in (ghcr, hub, lab, first, again, later)] == [200] * 6
    # Tags per upstream: the same name and tag, three different manifests.
    assert b"ghcr.example/v2/owner/img" in ghcr.body
    assert b"hub.example/v2/owner/img" in hub.body
    assert b"lab.example/v2/owner/img" in lab.body
    assert later.body == ghcr.body
    # Blobs by digest: fetched once, served to the other upstream's client from the cache.
    assert first.body == again.body == SHARED
    assert fetched == 1
    assert not any("hub.example" in s and "/blobs/" in s for s in m.sent())
    # The lab registry's Basic credentials went to the lab registry only.
    basic = [
        r.url.host for r in m.upstream.requests if "Basic" in r.headers.get("authorization", "")
    ]
    assert set(basic) == {"lab.example"}


async def test_health_lists_every_upstream() -> None:
    async with mirror() as m:
        await m.get("/v2/ghcr.test/owner/img/manifests/1")
        answer = await m.get("/health")
    report = json.loads(answer.body)
    assert sorted(report["upstreams"]) == ["docker.io", "ghcr.test", "lab.test"]
    assert report["upstreams"]["ghcr.test"]["registry"] == "https://ghcr.example"
    assert report["upstreams"]["ghcr.test"]["reachable"] is True
    assert report["upstreams"]["lab.test"].get("reachable") is None  # never asked
    assert report["upstream"]["registry"] == "https://hub.example"


async def test_realm_is_built_from_public_url_never_from_host() -> None:
    async with mirror() as m:
        answer = await m.get("/v2/ghcr.test/owner/img/manifests/1", host="evil.example")
    assert urlsplit(challenge_of(answer)["realm"]).netloc == "mirror.example.com"


# --- a client's login for the mirror's name stays with [upstream] ---------------------------

HUB_LOGIN = "Basic " + base64.b64encode(b"bob:hunter2").decode()  # docker login <the mirror>


def sent_to(m: Mirror, host: str, authorization: str) -> list[httpx.Request]:
    return [
        r
        for r in m.upstream.requests
        if r.url.host == host and r.headers.get("authorization") == authorization
    ]


async def test_a_second_authorization_header_takes_no_login_past_the_first_ones_check() -> None:
    """Only the first ``Authorization`` was checked, and every one was passed through: a
    Bearer first let the Basic login for the mirror's name after it reach an upstream named
    by path prefix. A request with two is sent with neither (the upstream's 401 says so)."""
    no_login = {"upstreams.lab.test.username": "", "upstreams.lab.test.password": ""}
    async with mirror(None, **no_login) as m:
        two = [("Authorization", "Bearer lab-token"), ("Authorization", HUB_LOGIN)]
        await call_asgi(
            m.app, "GET", "/v2/lab.test/owner/img/manifests/1", host="mirror.example.com",
            headers=two,
        )  # fmt: skip
        sent = [r for r in m.upstream.requests if r.url.host == "lab.example"]
    assert sent and all(HUB_LOGIN not in r.headers.get_list("authorization") for r in sent)
    assert all("Bearer lab-token" not in r.headers.get_list("authorization") for r in sent)


@pytest.mark.parametrize("lab_login", [False, True])
async def test_a_basic_login_for_the_mirror_never_goes_to_an_upstream_named_by_prefix(
    tmp_path: Path, lab_login: bool
) -> None:
    """containerd and podman answer the Basic challenge a Basic-only upstream's 401 relays
    with the login they hold for the host they talk to: the mirror's, which is Docker Hub's.
    By path prefix it never reaches that upstream (with or without a login of the mirror's own
    for it, and through the cache's HEAD as the client too); by the upstream's own host name
    (``upstreams.lab.test.hosts``) it is that host's login, and goes."""
    settings: dict[str, object] = {}
    if not lab_login:
        settings = {"upstreams.lab.test.username": "", "upstreams.lab.test.password": ""}
    for cache in (None, tmp_path / f"cache-{lab_login}"):
        async with mirror(cache, **settings) as m:
            for path in (
                "/v2/lab.test/owner/img/manifests/1",
                "/v2/ghcr.test/owner/img/manifests/1",
            ):
                await call_asgi(
                    m.app,
                    "GET",
                    path,
                    host="mirror.example.com",
                    headers=[("Authorization", HUB_LOGIN)],
                )
            assert sent_to(m, "lab.example", HUB_LOGIN) == []
            assert sent_to(m, "ghcr.example", HUB_LOGIN) == []
            if cache is None:  # passed through: the client's own login, where it is lab's
                await call_asgi(
                    m.app,
                    "GET",
                    "/v2/owner/img/manifests/1",
                    host="lab-mirror.example.com",
                    headers=[("Authorization", HUB_LOGIN)],
                )
                assert sent_to(m, "lab.example", HUB_LOGIN) != []
