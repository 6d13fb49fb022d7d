"""Review faults in how the realm an upstream's ``/v2/`` challenge names is judged (b63a144),
and in the redirect rule's "ANY address non-public" verdict on the upstream's own host.

1. Harbor behind a TLS-terminating proxy advertises ``realm="http://<its own host>/service/
   token"`` for its https registry. Before b63a144 the mirror asked that realm anonymously
   (the login withheld: ``clear_realm_remedy``), following the proxy's redirect to https;
   b63a144 refused it outright for a public registry, and every uncached pull from it failed
   until the operator set ``auth_realm``. A plain-HTTP realm on the registry's own host is
   asked again; one on another host of a public https registry stays refused.
2. A DNS64 resolver's synthesized AAAA records (``64:ff9b::/96``, ``64:ff9b:1::/48``) made a
   public registry (Docker Hub) a "LAN registry" for the rule, relaxing it.

Nothing here is contacted: the upstream is a fake transport, and the rule's lookup of
``registry.example`` is patched (test_review_guards2's ``_rule_says``)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import redirects
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.redirects import HOP_GUARD, HopGuard, RegistryVerdicts
from docxy.upstream.tokens import MirrorTokens
from tests.unit.fakes import reply
from tests.unit.test_review_guards2 import _mirror_token, _rule_says
from tests.unit.test_review_lanredirect import PUBLIC_NAME
from tests.unit.test_routes import DIGEST, MANIFEST, MANIFEST_TYPE, mirror, registry_error

REGISTRY = f"https://{PUBLIC_NAME}"
#: Harbor's realm as a TLS-terminating proxy's inner URL makes it: its own host, plain HTTP
OWN_CLEAR_REALM = f"http://{PUBLIC_NAME}/service/token"
LOGIN = ("mirror-account", "s3cret-pw")

# --- 1: a plain-HTTP realm on the https registry's own host ----------------------------------


def harbor(request: httpx.Request) -> httpx.Response:
    """Harbor behind a TLS proxy: ``/v2/`` names its inner plain-HTTP realm, which the proxy
    redirects to https; manifests only with the token it hands out."""
    url = request.url
    if url.path == "/v2/":
        challenge = f'Bearer realm="{OWN_CLEAR_REALM}",service="harbor-registry"'
        return reply(401, b"{}", {"WWW-Authenticate": challenge})
    if url.path == "/service/token":
        if url.scheme == "http":
            return reply(
                301, headers={"Location": f"https://{url.host}/service/token?{url.query.decode()}"}
            )
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if "/manifests/" in url.path:
        if request.headers.get("authorization") != "Bearer t0ken":
            return registry_error(401, "UNAUTHORIZED")
        headers = {
            "Content-Type": MANIFEST_TYPE,
            "Content-Length": str(len(MANIFEST)),
            "Docker-Content-Digest": DIGEST,
        }
        return reply(200, b"" if request.method == "HEAD" else MANIFEST, headers)
    return registry_error(404, "NOT_FOUND")


@pytest.mark.parametrize("login", [False, True])
async def test_a_public_harbor_behind_a_tls_proxy_is_pulled_through_its_own_clear_realm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    login: bool,
) -> None:
    """Through the mirror, as docker pulls: the client's anonymous token ask, then a manifest
    by tag (the fill's own token). The realm ``http://registry.example/service/token`` was
    refused (b63a144): the client got an offline token, the fill none, the pull failed. Asked
    now, never with the mirror's login (withheld, one WARNING)."""
    _rule_says(monkeypatch, "8.8.8.8")  # a public registry
    settings: dict[str, object] = {
        "upstream.registry": REGISTRY,
        "upstream.auth_realm": "",
        "cache.enabled": "true",
        "cache.dir": str(tmp_path / "cache"),
    }
    if login:
        settings.update({"upstream.username": LOGIN[0], "upstream.password": LOGIN[1]})
    with caplog.at_level(logging.WARNING):
        async with mirror(harbor, settings) as m:
            token = await m.client.get(
                "/auth/token?service=harbor-registry&scope=repository:team/app:pull"
            )
            assert token.status_code == 200
            bearer = (await token.get_json())["token"]
            got = await m.client.get(
                "/v2/team/app/manifests/latest", headers={"Authorization": f"Bearer {bearer}"}
            )
            assert got.status_code == 200, await got.get_data()
            assert await got.get_data() == MANIFEST
            asks = [r for r in m.upstream.requests if r.url.path == "/service/token"]
    clear = [r for r in asks if r.url.scheme == "http"]
    assert clear, [str(r.url) for r in m.upstream.requests]
    assert all("authorization" not in r.headers for r in asks)  # no login in clear, nor after
    assert LOGIN[1] not in caplog.text
    if login:
        withheld = [r for r in caplog.records if "auth_realm to https://" in r.getMessage()]
        assert len(withheld) == 1, caplog.text


@pytest.mark.parametrize(
    "realm",
    [
        OWN_CLEAR_REALM,
        f"http://{PUBLIC_NAME}:8080/service/token",
        f"HTTP://{PUBLIC_NAME.upper()}./service/token",
    ],
)
async def test_the_mirrors_token_from_its_own_hosts_clear_realm(
    monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    """The registry's own host name on any port, however spelled: asked, anonymously."""
    _rule_says(monkeypatch, "8.8.8.8")
    upstream = Upstream(REGISTRY, credentials=LOGIN)
    [ask] = await _mirror_token(upstream, realm)
    assert ask.url.scheme == "http" and ask.url.host.rstrip(".") == PUBLIC_NAME
    assert "authorization" not in ask.headers


@pytest.mark.parametrize(
    "realm",
    [
        "http://auth.example/token",
        f"http://auth.{PUBLIC_NAME}/service/token",  # a subdomain is another host
        f"http://{PUBLIC_NAME}.evil.example/service/token",
    ],
)
async def test_another_hosts_clear_realm_of_a_public_https_registry_stays_refused(
    monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    _rule_says(monkeypatch, "8.8.8.8")
    with pytest.raises(UpstreamUnavailable) as refused:
        await _mirror_token(Upstream(REGISTRY), realm)
    assert "plain-HTTP token service" in refused.value.message
    assert "auth_realm to https://" in refused.value.message


async def test_its_own_hosts_clear_realm_still_connects_only_outside_for_a_public_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The inside/outside rule stands: the realm's connection is made under a guard that
    lets a public upstream's realm go to public addresses only (a name that rebinds to an
    inside address at connect time gains nothing)."""
    _rule_says(monkeypatch, "8.8.8.8")
    guards: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{OWN_CLEAR_REALM}",service="x"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        guards.append(request.extensions.get(HOP_GUARD))
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        await MirrorTokens(UpstreamClient(http)).headers(Upstream(REGISTRY), "library/redis")
    [guard] = guards
    assert isinstance(guard, HopGuard) and not guard.inside_only
    assert guard.allows("8.8.4.4") and not guard.allows("10.0.0.7")
    assert not guard.allows("127.0.0.1")


# --- 2: DNS64's synthesized addresses make no registry a LAN one -----------------------------


def _resolving(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    """The rule's lookup of any name gives ``addresses`` (nothing is asked of DNS)."""

    def lookup(host: str, *args: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in addresses
        ]

    monkeypatch.setattr(redirects, "RESOLVE", lookup)


LOCAL_NAT64 = pytest.mark.xfail(
    strict=True,
    reason="a local-use NAT64 address makes the registry a LAN one (6240034 mended it and "
    "broke IPv6-only hosts behind that DNS64: reverted, 27ac280)",
)


@pytest.mark.parametrize(
    "synthesized",
    [
        "64:ff9b::3416:e4ba",  # the well-known prefix: 52.22.228.186 (public), fine already
        # the local-use prefix (RFC 8215), a network's own translator
        pytest.param("64:ff9b:1::3416:e4ba", marks=LOCAL_NAT64),
        pytest.param("64:ff9b:1:ab::3416:e4ba", marks=LOCAL_NAT64),
    ],
)
def test_a_dns64_synthesized_address_does_not_make_a_public_registry_a_lan_one(
    monkeypatch: pytest.MonkeyPatch, synthesized: str
) -> None:
    """A dual-stack host behind DNS64: the registry's A is public, its AAAA synthesized in a
    NAT64 prefix. The local-use prefix counted as non-public, so Docker Hub was a LAN
    registry for the rule (a hop or realm inside allowed, HTTPS to HTTP allowed)."""
    _resolving(monkeypatch, "52.22.228.186", synthesized)
    assert not redirects.registry_non_public("https://registry-1.docker.io", 1.0)
    assert not RegistryVerdicts().non_public("https://registry-1.docker.io", 1.0)
    refused = redirects.hop_refusal(
        "http://10.0.0.9/blob", over_https=False, registry="https://registry-1.docker.io"
    )
    assert refused is not None and "non-public address" in refused


@pytest.mark.parametrize(
    "addresses",
    [
        ("52.22.228.186", "10.0.0.2"),  # a private A beside a public one: a LAN registry
        ("64:ff9b::a00:2",),  # NAT64 of 10.0.0.2: leads inside, as ever
        ("64:ff9b::3416:e4ba", "fd00::2"),  # a ULA beside a synthesized one
    ],
)
def test_a_registry_with_a_real_inside_address_is_still_a_lan_one(
    monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...]
) -> None:
    _resolving(monkeypatch, *addresses)
    assert redirects.registry_non_public("https://harbor.lan", 1.0)


def test_a_hop_to_a_local_use_nat64_address_is_still_non_public() -> None:
    """The verdict on the registry changes, not the one on a hop's target: a public
    upstream's redirect to the local translator stays a hop inside."""
    assert redirects.non_public_host("64:ff9b:1::a9fe:a9fe")
