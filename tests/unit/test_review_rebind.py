"""Review faults where an upstream's redirect reaches a non-public address through a host *name*
(docxy.upstream.redirects, the fills' direct GET in docxy.upstream.direct), each shown failing
first.

Every server here listens on 127.0.0.190-193, ports 9300-9349. Names are resolved by the
tests' own lookups (``direct.RESOLVE``, ``redirects.RESOLVE``): no DNS is asked. A "public"
upstream is a name the redirect rule is told is 8.8.8.8 (never contacted) while connections to
it go to 127.0.0.190; 127.0.0.192 stands for a public CDN address (the rule is told it is
public), and 127.0.0.191 for the inside (an admin port, a metadata service)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from docxy.config import UpstreamConfig
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct, redirects
from docxy.upstream.client import Upstream, UpstreamClient, make_http_client, read_small
from docxy.upstream.direct import BadRedirect, open_get
from tests.unit.test_review_redirects import BLOB, Bed, _client, _close, beds

REG, INSIDE, CDN = "127.0.0.190", "127.0.0.191", "127.0.0.192"
PUBLIC_NAME = "registry.example"  # the rule's lookup: 8.8.8.8; connected at REG
LAN_NAME = "registry.lan"  # the rule's lookup: 10.0.0.2; connected at REG


def lookup_by(known: dict[str, list[str]]) -> Callable[..., Any]:
    """A ``getaddrinfo`` that takes a literal address as it is and gives each name in ``known``
    its addresses there (the dict may be filled in later); any other name is refused: no DNS
    is asked. Made before ``socket.getaddrinfo`` is replaced by it."""
    real_lookup = socket.getaddrinfo

    def connect_lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if redirects.literal_address(name) is not None:
            return real_lookup(name, port, *args, **kwargs)
        if name not in known:
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        found: list[Any] = []
        for address in known[name]:
            found += real_lookup(address, port, *args, **kwargs)
        return found

    return connect_lookup


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Which addresses the direct path's lookup gives each name (the test fills it in); the
    rule's lookup knows the two upstream names; CDN counts as a public address. Any other name
    is refused: no DNS is asked."""
    known: dict[str, list[str]] = {PUBLIC_NAME: [REG], LAN_NAME: [REG]}
    real_non_public = redirects.non_public_address

    connect_lookup = lookup_by(known)

    def rule_lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        rule = {PUBLIC_NAME: "8.8.8.8", LAN_NAME: "10.0.0.2"}
        if host not in rule:
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (rule[host], 0))]

    def non_public(address: redirects.Address) -> bool:
        return address != ipaddress.ip_address(CDN) and real_non_public(address)

    monkeypatch.setattr(direct, "RESOLVE", connect_lookup)
    monkeypatch.setattr(redirects, "CONNECT_RESOLVE", connect_lookup, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", connect_lookup)  # httpx's own lookups
    monkeypatch.setattr(redirects, "RESOLVE", rule_lookup)
    monkeypatch.setattr(redirects, "non_public_address", non_public)
    yield known


async def _fetch(upstream: Upstream, url: str) -> bytes:
    client = _client()
    try:
        answer = await open_get(client, upstream, url, [])
        try:
            assert answer.status == 200
            return answer.body.read(100)
        finally:
            answer.close()
    finally:
        await _close(client)


# --- 1: a public upstream's redirect to a name that resolves to a non-public address ----------


async def test_a_public_upstreams_redirect_to_a_name_resolving_inside_is_refused(
    names: dict[str, list[str]],
) -> None:
    """A public upstream answers a fill's blob GET 307 to ``http://admin.evil.test:9301/``, a
    name that resolves to 127.0.0.191: the rule judged the name as written (no address), the
    fill connected there, and the inside's answer became the blob's. Now the connection is
    judged by the address it goes to: a bad redirect (502), the inside never asked."""
    names["admin.evil.test"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9301), lambda: Bed(REG, 9300)) as (inside, reg):
        reg.location = "http://admin.evil.test:9301/admin"
        registry = f"http://{PUBLIC_NAME}:9300"
        client = _client()
        try:
            with pytest.raises(BadRedirect, match=r"admin\.evil\.test.* only to non-public"):
                answer = await open_get(client, Upstream(registry), registry + BLOB, [])
                answer.close()
            assert client.health_of(Upstream(registry)).reachable  # it answered
        finally:
            await _close(client)
        assert inside.seen.snapshot() == []
        assert reg.seen.snapshot() == [BLOB]


async def test_a_name_resolving_inside_and_outside_is_connected_outside_only(
    names: dict[str, list[str]],
) -> None:
    """A CDN name that resolves to the inside first and a public address after: the fill
    connected to the first. Now only the public address is tried."""
    names["cdn.evil.test"] = [INSIDE, CDN]
    with beds(lambda: Bed(INSIDE, 9303), lambda: Bed(CDN, 9303), lambda: Bed(REG, 9302)) as (
        inside,
        cdn,
        reg,
    ):
        reg.location = "http://cdn.evil.test:9303/blob"
        registry = f"http://{PUBLIC_NAME}:9302"
        assert await _fetch(Upstream(registry), registry + BLOB) == b"blob"
        assert inside.seen.snapshot() == []
        assert cdn.seen.snapshot() == ["/blob"]


async def test_an_idle_connection_to_the_inside_is_not_reused_for_a_public_upstream(
    names: dict[str, list[str]],
) -> None:
    """A LAN upstream's storage, by name, connected inside and kept idle; then a public
    upstream redirects to that same name (it changed its answer since: DNS rebinding, or a
    name shared): the kept connection to the inside carried the public upstream's GET. Now a
    kept connection is judged by its peer's address as a new one is."""
    names["storage.lan"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9305), lambda: Bed(REG, 9304)) as (inside, reg):
        reg.location = "http://storage.lan:9305/blob"
        lan = f"http://{LAN_NAME}:9304"
        public = f"http://{PUBLIC_NAME}:9304"
        client = _client()
        try:
            answer = await open_get(client, Upstream(lan), lan + BLOB, [])
            assert answer.status == 200 and answer.body.read(10) == b"blob"
            answer.close()  # read to its end: kept
            with pytest.raises(BadRedirect, match="only to non-public"):
                answer = await open_get(client, Upstream(public), public + BLOB, [])
                answer.close()
        finally:
            await _close(client)
        assert inside.seen.snapshot() == ["/blob"]  # the LAN upstream's alone


# --- 1b: the same on httpx's path (manifests, tokens, pass-through) --------------------------


def _pooled() -> UpstreamClient:
    """The mirror's own shared httpx client (its pool, not a fake transport)."""
    config = UpstreamConfig("http://unused.test", None, True, None, None, 5.0, 5.0)
    return UpstreamClient(make_http_client(config))


async def _send(client: UpstreamClient, upstream: Upstream, url: str) -> bytes:
    answer = await client.send(upstream, "GET", url, [])
    assert answer.status_code == 200
    return await read_small(answer)


async def test_a_public_upstreams_redirect_to_a_name_resolving_inside_is_refused_on_httpx(
    names: dict[str, list[str]],
) -> None:
    """A manifest by tag from a public upstream, redirected to a name resolving to
    127.0.0.191: the mirror asked there and relayed the answer. A bad redirect (502) now."""
    names["admin.evil.test"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9321), lambda: Bed(REG, 9320)) as (inside, reg):
        reg.location = "http://admin.evil.test:9321/admin"
        registry = f"http://{PUBLIC_NAME}:9320"
        client = _pooled()
        try:
            with pytest.raises(UpstreamUnavailable, match=r"admin\.evil\.test.* only to non-"):
                await _send(client, Upstream(registry), registry + "/v2/r/manifests/t")
        finally:
            await client.http.aclose()
        assert inside.seen.snapshot() == []
        assert reg.seen.snapshot() == ["/v2/r/manifests/t"]


async def test_a_name_resolving_inside_and_outside_is_connected_outside_only_on_httpx(
    names: dict[str, list[str]],
) -> None:
    names["cdn.evil.test"] = [INSIDE, CDN]
    with beds(lambda: Bed(INSIDE, 9323), lambda: Bed(CDN, 9323), lambda: Bed(REG, 9322)) as (
        inside,
        cdn,
        reg,
    ):
        reg.location = "http://cdn.evil.test:9323/blob"
        registry = f"http://{PUBLIC_NAME}:9322"
        client = _pooled()
        try:
            assert await _send(client, Upstream(registry), registry + BLOB) == b"blob"
        finally:
            await client.http.aclose()
        assert inside.seen.snapshot() == []
        assert cdn.seen.snapshot() == ["/blob"]


async def test_a_pooled_connection_to_the_inside_is_not_reused_for_a_public_upstream(
    names: dict[str, list[str]],
) -> None:
    """A LAN upstream's storage by name, its connection kept in the pool; a public upstream's
    redirect to the same name does not get that connection (nor a new one inside)."""
    names["storage.lan"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9325), lambda: Bed(REG, 9324)) as (inside, reg):
        reg.location = "http://storage.lan:9325/blob"
        lan = f"http://{LAN_NAME}:9324"
        public = f"http://{PUBLIC_NAME}:9324"
        client = _pooled()
        try:
            assert await _send(client, Upstream(lan), lan + BLOB) == b"blob"
            with pytest.raises(UpstreamUnavailable, match="only to non-public"):
                await _send(client, Upstream(public), public + BLOB)
            assert await _send(client, Upstream(lan), lan + BLOB) == b"blob"  # still fine
        finally:
            await client.http.aclose()
        assert inside.seen.snapshot() == ["/blob", "/blob"]  # the LAN upstream's alone


async def test_a_lan_upstream_by_name_may_redirect_inside_on_httpx(
    names: dict[str, list[str]],
) -> None:
    names["storage.lan"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9327), lambda: Bed(REG, 9326)) as (inside, reg):
        registry = f"http://{LAN_NAME}:9326"
        client = _pooled()
        try:
            reg.location = "http://storage.lan:9327/blob"
            assert await _send(client, Upstream(registry), registry + BLOB) == b"blob"
            reg.location = f"http://{INSIDE}:9327/blob"
            assert await _send(client, Upstream(registry), registry + BLOB) == b"blob"
        finally:
            await client.http.aclose()
        assert inside.seen.snapshot() == ["/blob", "/blob"]


# --- 3: a LAN upstream by name still redirects inside; a listed origin too -------------------


async def test_a_lan_upstream_by_name_may_redirect_to_names_and_addresses_inside(
    names: dict[str, list[str]],
) -> None:
    """``registry.lan`` resolves (for the rule) to 10.0.0.2: it may send the fill to its
    storage by a name resolving inside, or by address."""
    names["storage.lan"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9307), lambda: Bed(REG, 9306)) as (inside, reg):
        registry = f"http://{LAN_NAME}:9306"
        reg.location = "http://storage.lan:9307/blob"
        assert await _fetch(Upstream(registry), registry + BLOB) == b"blob"
        reg.location = f"http://{INSIDE}:9307/blob"
        assert await _fetch(Upstream(registry), registry + BLOB) == b"blob"
        assert inside.seen.snapshot() == ["/blob", "/blob"]


async def test_a_public_upstreams_storage_listed_in_ca_origins_may_resolve_inside(
    names: dict[str, list[str]],
) -> None:
    names["storage.corp"] = [INSIDE]
    with beds(lambda: Bed(INSIDE, 9309), lambda: Bed(REG, 9308)) as (inside, reg):
        registry = f"http://{PUBLIC_NAME}:9308"
        reg.location = "http://storage.corp:9309/blob"
        upstream = Upstream(registry, ca_origins=("http://storage.corp:9309",))
        assert await _fetch(upstream, registry + BLOB) == b"blob"
        assert inside.seen.snapshot() == ["/blob"]


async def test_a_public_upstreams_redirect_to_a_public_name_is_followed(
    names: dict[str, list[str]],
) -> None:
    names["cdn.example"] = [CDN]
    with beds(lambda: Bed(CDN, 9311), lambda: Bed(REG, 9310)) as (cdn, reg):
        registry = f"http://{PUBLIC_NAME}:9310"
        reg.location = "http://cdn.example:9311/blob"
        assert await _fetch(Upstream(registry), registry + BLOB) == b"blob"
        assert cdn.seen.snapshot() == ["/blob"]


def test_a_lan_upstream_by_name_may_redirect_inside_by_the_rule(
    names: dict[str, list[str]],
) -> None:
    """The rule alone (nothing contacted): a LAN upstream by name to private literals, a
    public one not."""
    for target in ("http://10.0.0.9:9000/b", "http://[fd00::9]/b", "http://[64:ff9b::a00:9]/"):
        said = redirects.hop_refusal(target, over_https=False, registry="http://registry.lan")
        assert said is None, said
    said = redirects.hop_refusal("http://10.0.0.9/b", over_https=False, registry="http://x.lan")
    assert said is not None  # x.lan does not resolve: public, as before


# --- 2: IPv6 addresses that carry an IPv4 one -------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::a00:5",  # NAT64 of 10.0.0.5
        "64:ff9b:1::a00:5",  # the local-use NAT64 prefix (RFC 8215)
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.5",
    ],
)
def test_an_ipv6_address_carrying_a_non_public_ipv4_one_is_non_public(address: str) -> None:
    assert redirects.non_public_address(ipaddress.ip_address(address))
    said = redirects.hop_refusal(
        f"https://[{address}]/x", over_https=True, registry="https://8.8.8.8"
    )
    assert said is not None and "non-public address" in said


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1"])
def test_an_ipv6_address_carrying_a_public_ipv4_one_stays_public(address: str) -> None:
    assert not redirects.non_public_address(ipaddress.ip_address(address))
    assert (
        redirects.hop_refusal(f"https://[{address}]/x", over_https=True, registry="https://8.8.8.8")
        is None
    )
