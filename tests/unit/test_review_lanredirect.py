"""Review faults where the redirect rule (docxy.upstream.redirects) broke LAN set-ups that
worked before: an HTTPS LAN registry whose storage is plain-HTTP MinIO, a dual-stack LAN
registry name, a lookup of the upstream's name on every hop, and a guarded connection that
tried its addresses one after another. Each shown failing first.

Every server here listens on 127.0.0.226-229, ports 9750-9799. Names are resolved by the
tests' own lookups (``direct.RESOLVE``, ``redirects.RESOLVE``, ``redirects.CONNECT_RESOLVE``):
no DNS is asked. Public addresses (8.8.8.8, 2606:4700::1) are only ever told to the rule,
never contacted."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpcore
import pytest
from cryptography import x509

from docxy.config import UpstreamConfig
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct, redirects
from docxy.upstream.client import Upstream, UpstreamClient, make_http_client, read_small
from docxy.upstream.direct import BadRedirect, open_get
from lab.certs import issue
from tests.unit.test_review_rebind import lookup_by
from tests.unit.test_review_redirects import BLOB, Bed, _client, _close, beds

REG, STORE, OUTSIDE, SPARE = "127.0.0.226", "127.0.0.227", "127.0.0.228", "127.0.0.229"
LAN_NAME = "harbor.lan"  # the rule's lookup: 10.0.0.2 (and, where a test says, a global AAAA)
PUBLIC_NAME = "registry.example"  # the rule's lookup: 8.8.8.8


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a certificate naming 127.0.0.226 and harbor.lan."""
    names = [x509.IPAddress(IPv4Address(REG)), x509.DNSName(LAN_NAME)]
    pair = issue("docxy lanredirect", ca=True, names=names).write(
        tmp_path / "cert.pem", tmp_path / "key.pem"
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)
    return server, pair.context()


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Which addresses connections to each name go to (the test fills it in), and which the
    rule's lookup of an upstream's name gives (``rule:NAME`` keys); OUTSIDE counts as a
    public address. Lookups are counted under ``asked:NAME``. Any other name is refused."""
    known: dict[str, list[str]] = {
        LAN_NAME: [REG],
        PUBLIC_NAME: [REG],
        f"rule:{LAN_NAME}": ["10.0.0.2"],
        f"rule:{PUBLIC_NAME}": ["8.8.8.8"],
    }
    real_non_public = redirects.non_public_address

    connect_lookup = lookup_by(known)

    def rule_lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        known.setdefault(f"asked:{host}", []).append(host)
        if f"rule:{host}" not in known:
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in known[f"rule:{host}"]
        ]

    def non_public(address: redirects.Address) -> bool:
        return address != ipaddress.ip_address(OUTSIDE) and real_non_public(address)

    monkeypatch.setattr(direct, "RESOLVE", connect_lookup)
    monkeypatch.setattr(redirects, "CONNECT_RESOLVE", connect_lookup)
    monkeypatch.setattr(socket, "getaddrinfo", connect_lookup)  # httpx's own lookups
    monkeypatch.setattr(redirects, "RESOLVE", rule_lookup)
    monkeypatch.setattr(redirects, "non_public_address", non_public)
    yield known


def _pooled(context: ssl.SSLContext | None = None, connect: float = 5.0) -> UpstreamClient:
    """The mirror's own shared httpx client (its guarded pool, not a fake transport)."""
    config = UpstreamConfig("http://unused.test", None, True, None, None, connect, 5.0)
    return UpstreamClient(make_http_client(config, ssl_context=context))


async def _direct(client: UpstreamClient, upstream: Upstream, url: str) -> bytes:
    answer = await open_get(client, upstream, url, [])
    try:
        assert answer.status == 200
        return answer.body.read(100)
    finally:
        answer.close()


async def _send(client: UpstreamClient, upstream: Upstream, url: str) -> bytes:
    answer = await client.send(upstream, "GET", url, [])
    assert answer.status_code == 200
    return await read_small(answer)


# --- 1: an HTTPS LAN registry whose storage is plain-HTTP MinIO -------------------------------


@pytest.mark.parametrize(
    "registry", ["https://10.1.2.3", "https://127.0.0.1:5000", "https://[fd00::5]"]
)
def test_a_non_public_https_upstream_may_redirect_to_plain_http_inside(registry: str) -> None:
    """The rule alone (nothing contacted): a LAN registry over HTTPS, its blobs on plain-HTTP
    storage at a private address, or by a name (judged where it connects)."""
    for target in ("http://10.0.0.5:9000/b", "http://127.0.0.1:9000/b", "http://minio.lan:9000/b"):
        said = redirects.hop_refusal(target, over_https=True, registry=registry)
        assert said is None, said


def test_a_public_https_upstream_still_may_not_downgrade() -> None:
    """Neither to a private address, nor a LAN registry to a public one."""
    for registry, target in [
        ("https://8.8.8.8", "http://10.0.0.5:9000/b"),
        ("https://8.8.8.8", "http://minio.lan:9000/b"),
        ("https://10.1.2.3", "http://8.8.4.4/b"),
        ("https://10.1.2.3", "http://[2606:4700::1]/b"),
    ]:
        said = redirects.hop_refusal(target, over_https=True, registry=registry)
        assert said is not None and "from HTTPS to plain HTTP" in said, (registry, target)


async def test_an_https_lan_registrys_blob_on_plain_http_storage_is_followed(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Harbor over HTTPS at a private address, its S3 driver redirecting blobs to
    ``http://10.0.0.5:9000/...`` (MinIO): docker follows it; the mirror answered 502 for every
    blob (no downgrade), on both paths. Followed now."""
    server_context, client_context = tls
    with beds(lambda: Bed(STORE, 9751), lambda: Bed(REG, 9750, context=server_context)) as (
        storage,
        reg,
    ):
        reg.location = f"{storage.url}/blob"
        upstream = Upstream(reg.url)
        client = _client(client_context)
        try:
            assert await _direct(client, upstream, reg.url + BLOB) == b"blob"
            assert await _send(client, upstream, reg.url + BLOB) == b"blob"
        finally:
            await _close(client)
        assert storage.seen.snapshot() == ["/blob", "/blob"]


async def test_an_https_lan_registry_by_name_may_send_blobs_to_plain_http_minio_by_name(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], names: dict[str, list[str]]
) -> None:
    """``https://harbor.lan`` (10.0.0.2 for the rule) to ``http://minio.lan:9753`` (connected
    at 127.0.0.227): followed on both paths, the connection going to the inside address."""
    server_context, client_context = tls
    names["minio.lan"] = [STORE]
    with beds(lambda: Bed(STORE, 9753), lambda: Bed(REG, 9752, context=server_context)) as (
        storage,
        reg,
    ):
        reg.location = "http://minio.lan:9753/blob"
        registry = f"https://{LAN_NAME}:9752"
        client = _client(client_context)
        pooled = _pooled(client_context)
        try:
            assert await _direct(client, Upstream(registry), registry + BLOB) == b"blob"
            assert await _send(pooled, Upstream(registry), registry + BLOB) == b"blob"
        finally:
            await _close(client)
            await pooled.http.aclose()
        assert storage.seen.snapshot() == ["/blob", "/blob"]


async def test_a_downgraded_hop_to_a_name_resolving_outside_is_refused(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], names: dict[str, list[str]]
) -> None:
    """A LAN registry's plain-HTTP hop to a name that resolves to a public address (here
    127.0.0.228, which the rule is told is public) would cross the Internet in clear: refused
    on both paths, nothing asked there."""
    server_context, client_context = tls
    names["minio.evil"] = [OUTSIDE]
    with beds(lambda: Bed(OUTSIDE, 9755), lambda: Bed(REG, 9754, context=server_context)) as (
        outside,
        reg,
    ):
        reg.location = "http://minio.evil:9755/blob"
        registry = f"https://{LAN_NAME}:9754"
        client = _client(client_context)
        pooled = _pooled(client_context)
        try:
            with pytest.raises(BadRedirect, match="minio.evil"):
                await _direct(client, Upstream(registry), registry + BLOB)
            with pytest.raises(UpstreamUnavailable, match="minio.evil"):
                await _send(pooled, Upstream(registry), registry + BLOB)
        finally:
            await _close(client)
            await pooled.http.aclose()
        assert outside.seen.snapshot() == []


# --- 2: an upstream's name with a private and a public address --------------------------------


def test_a_dual_stack_lan_registry_name_counts_as_non_public(
    names: dict[str, list[str]],
) -> None:
    """``harbor.lan`` with a private A and a global AAAA (common on a dual-stack LAN): the
    rule counted it public and refused its storage at a private address."""
    names[f"rule:{LAN_NAME}"] = ["10.0.0.2", "2606:4700::1"]
    said = redirects.hop_refusal(
        "http://10.0.0.9:9000/b", over_https=False, registry=f"http://{LAN_NAME}"
    )
    assert said is None, said
    names[f"rule:{PUBLIC_NAME}"] = ["8.8.8.8", "2606:4700::1"]
    said = redirects.hop_refusal(
        "http://10.0.0.9:9000/b", over_https=False, registry=f"http://{PUBLIC_NAME}"
    )
    assert said is not None  # every address public: public


# --- 3: the upstream's verdict, kept -----------------------------------------------------------


async def test_the_upstreams_name_is_looked_up_once_for_many_hops(
    names: dict[str, list[str]],
) -> None:
    """A LAN registry by name whose blobs redirect to its storage inside (by address, and by
    name): each hop looked ``harbor.lan`` up again, in a thread of its own. Once now."""
    names["storage.lan"] = [STORE]
    with beds(lambda: Bed(STORE, 9757), lambda: Bed(REG, 9756)) as (storage, reg):
        registry = f"http://{LAN_NAME}:9756"
        client = _client()
        try:
            for location in (f"{storage.url}/blob", "http://storage.lan:9757/blob"):
                reg.location = location
                for _ in range(3):
                    assert await _direct(client, Upstream(registry), registry + BLOB) == b"blob"
                    assert await _send(client, Upstream(registry), registry + BLOB) == b"blob"
        finally:
            await _close(client)
        assert len(storage.seen.snapshot()) == 12
    assert names[f"asked:{LAN_NAME}"] == [LAN_NAME]


def test_a_kept_verdict_expires_and_a_failed_lookup_is_retried_soon(
    names: dict[str, list[str]],
) -> None:
    now = [1000.0]
    verdicts = redirects.RegistryVerdicts(clock=lambda: now[0])
    registry = f"http://{LAN_NAME}"
    del names[f"rule:{LAN_NAME}"]  # the lookup fails
    assert not verdicts.non_public(registry, 1.0)
    assert not verdicts.non_public(registry, 1.0)  # kept a moment: no storm of lookups
    assert len(names[f"asked:{LAN_NAME}"]) == 1
    now[0] += redirects.FAILED_VERDICT_SECONDS + 0.1
    names[f"rule:{LAN_NAME}"] = ["10.0.0.2"]  # it answers again
    assert verdicts.non_public(registry, 1.0)
    assert len(names[f"asked:{LAN_NAME}"]) == 2
    now[0] += redirects.VERDICT_SECONDS - 1
    names[f"rule:{LAN_NAME}"] = ["8.8.8.8"]
    assert verdicts.non_public(registry, 1.0)  # kept
    now[0] += 2
    assert not verdicts.non_public(registry, 1.0)  # looked up again
    assert len(names[f"asked:{LAN_NAME}"]) == 3


def test_the_kept_verdicts_are_bounded(names: dict[str, list[str]]) -> None:
    verdicts = redirects.RegistryVerdicts(size=3)
    for n in range(10):
        names[f"rule:r{n}.lan"] = ["10.0.0.2"]
        assert verdicts.non_public(f"http://r{n}.lan", 1.0)
    assert len(verdicts) == 3
    assert verdicts.non_public("http://r9.lan", 1.0)
    assert len(names["asked:r9.lan"]) == 1  # the newest kept


# --- 4: a guarded connection's addresses raced, not tried one after another --------------------


class Unanswering:
    """A listener on ``host:port`` whose backlog is full: a further connect to it hangs (its
    SYN dropped), as one to a host with broken IPv6 does."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.create_server((host, port), backlog=0)
        self.held: list[socket.socket] = []
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect((host, port))
            except BlockingIOError:
                pass
            self.held.append(sock)
        time.sleep(0.1)

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.listener.close()


async def test_a_guarded_hop_does_not_wait_out_an_address_that_never_answers(
    names: dict[str, list[str]],
) -> None:
    """A CDN name whose first address never answers (broken IPv6): httpx's path tried it for
    the whole connect timeout (4 s here) before the next one; anyio's own connect raced them.
    The next address is tried after a short stagger now."""
    names["cdn.lan"] = [OUTSIDE, STORE]  # OUTSIDE never answers; the rule calls it public
    hanging = Unanswering(OUTSIDE, 9759)
    try:
        with beds(lambda: Bed(STORE, 9759), lambda: Bed(REG, 9758)) as (storage, reg):
            reg.location = "http://cdn.lan:9759/blob"
            registry = f"http://{REG}:9758"
            client = _pooled(connect=4.0)
            try:
                started = time.monotonic()
                assert await _send(client, Upstream(registry), registry + BLOB) == b"blob"
                waited = time.monotonic() - started
            finally:
                await client.http.aclose()
            assert storage.seen.snapshot() == ["/blob"]
    finally:
        hanging.close()
    assert waited < 2.5, f"waited {waited:.1f}s for an address that never answers"


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


def _entries(*addresses: str) -> list[tuple[Any, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 80)) for a in addresses]


async def test_guarded_attempts_are_staggered_within_one_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduling alone, with a fake connect (nothing contacted): a refused address gives
    way at once, a hanging one after the stagger, a late winner is closed, and the whole has
    the connect timeout."""
    addresses = ["8.8.8.1", "8.8.8.2", "8.8.8.3"]
    monkeypatch.setattr(redirects, "CONNECT_RESOLVE", lambda *a: _entries(*addresses))
    guard = redirects.HopGuard("cdn.example", "https://8.8.8.8", 1.0)
    started: list[tuple[str, float]] = []
    made: list[_Stream] = []
    behaviour: dict[str, str] = {}

    async def connect(host: str) -> httpcore.AsyncNetworkStream:
        started.append((host, time.monotonic()))
        if behaviour[host] == "refuse":
            raise httpcore.ConnectError("refused")
        if behaviour[host] == "hang":
            await asyncio.sleep(60)
        if behaviour[host] == "slow":
            await asyncio.sleep(0.6)
        stream = _Stream(host)
        made.append(stream)
        return stream

    # refused, then one that answers: no stagger waited
    behaviour.update({"8.8.8.1": "refuse", "8.8.8.2": "ok", "8.8.8.3": "ok"})
    t0 = time.monotonic()
    got = await redirects._connect_guarded(guard, "cdn.example", 80, 5.0, connect)
    assert isinstance(got, _Stream) and got.name == "8.8.8.2"
    assert time.monotonic() - t0 < 0.2

    # hanging, then one that answers: after the stagger, well inside the timeout
    started.clear()
    behaviour.update({"8.8.8.1": "hang", "8.8.8.2": "ok"})
    t0 = time.monotonic()
    async with asyncio.timeout(6):  # the test's own bound
        got = await redirects._connect_guarded(guard, "cdn.example", 80, 5.0, connect)
    assert isinstance(got, _Stream) and got.name == "8.8.8.2"
    assert 0.1 <= time.monotonic() - t0 < 2.5
    assert [host for host, _ in started] == ["8.8.8.1", "8.8.8.2"]

    # every one hangs: the whole has the connect timeout, not one per address
    behaviour.update({"8.8.8.1": "hang", "8.8.8.2": "hang", "8.8.8.3": "hang"})
    t0 = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout):
        await redirects._connect_guarded(guard, "cdn.example", 80, 1.5, connect)
    assert time.monotonic() - t0 < 2.5

    # every one refused: the last error
    behaviour.update({"8.8.8.1": "refuse", "8.8.8.2": "refuse", "8.8.8.3": "refuse"})
    with pytest.raises(httpcore.ConnectError, match="refused"):
        await redirects._connect_guarded(guard, "cdn.example", 80, 5.0, connect)

    # a slow first and a quick second: the second wins, the first is cancelled (not left open)
    made.clear()
    behaviour.update({"8.8.8.1": "slow", "8.8.8.2": "ok"})
    got = await redirects._connect_guarded(guard, "cdn.example", 80, 5.0, connect)
    assert isinstance(got, _Stream) and got.name == "8.8.8.2"
    await asyncio.sleep(0.8)
    assert [s.name for s in made] == ["8.8.8.2"]
