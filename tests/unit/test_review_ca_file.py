"""Review of an upstream's ``ca_file`` (docxy.upstream.trust): what the first tests missed.

Real handshakes on 127.0.0.7x, with a private CA made here: a connection verified with an
upstream's CAs is not reused once its origin is no longer trusted with them (another upstream
without a ca_file uses it too, or the realm moved), through the shared pool and the fills' direct
GETs alike; and the 502's advice to name the CA in ca_file is given only when the issuer was
unknown (not for an expired certificate, nor for one of another host).
"""

from __future__ import annotations

import datetime as dt
import http.server
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.config import CaFile, load_config, read_ca_file
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import (
    Upstream,
    UpstreamClient,
    make_http_client,
    read_small,
    upstream_ssl_context,
)
from docxy.upstream.trust import UpstreamTrust, trusting_transport
from lab.certs import Issued, issue
from lab.clients.background import Background
from lab.ports import on_own_port
from tests.unit.test_upstream_ca_file import _Handler, tls_server, trusting_client, trusting_direct

REGISTRY_HOST = "127.0.0.71"  # the private registry
REALM_HOST = "127.0.0.72"  # a token service, on a host of its own
HUB_HOST = "127.0.0.73"  # another upstream's registry, without a ca_file (never contacted)
Routes = dict[str, tuple[int, dict[str, str], bytes]]
TOKEN: Routes = {"/token": (200, {"Content-Type": "application/json"}, b'{"token": "t"}')}
BLOB: Routes = {"/blob": (200, {}, b"a blob")}


@dataclass(frozen=True)
class PrivateCA:
    root: Issued
    ca_file: CaFile

    def leaf(self, host: str) -> Issued:
        return issue(host, self.root, names=[x509.IPAddress(IPv4Address(host))])

    def expired_leaf(self, host: str) -> Issued:
        """A certificate for ``host`` that expired yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.root.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root.key.public_key()),
                False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(host))]), critical=False
            )
            .sign(self.root.key, hashes.SHA256())
        )
        return Issued(key, cert)


def made_private_ca(tmp_path_factory: pytest.TempPathFactory, name: str) -> PrivateCA:
    """A CA named ``name``, its certificate in a ``ca_file`` of its own (for a fixture: one
    imported into another test module would be defined there twice)."""
    root = issue(name, ca=True)
    path = tmp_path_factory.mktemp("ca") / "lab-ca.pem"
    path.write_bytes(root.cert_pem)
    return PrivateCA(root, read_ca_file(path))


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return made_private_ca(tmp_path_factory, "docxy review private CA")


@pytest.fixture(autouse=True)
def keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers keep their connections open (HTTP/1.1), as registries do."""
    monkeypatch.setattr(_Handler, "protocol_version", "HTTP/1.1")


@dataclass
class Shared:
    """The lab (a ca_file) and the hub (none), and the shared client's pool over both."""

    lab: Upstream
    hub: Upstream
    trust: UpstreamTrust
    client: UpstreamClient


@pytest.fixture
def shared(private_ca: PrivateCA) -> Shared:
    lab = Upstream(f"https://{REGISTRY_HOST}:1", ca_file=private_ca.ca_file, name="lab")
    hub = Upstream(f"https://{HUB_HOST}:1", name="hub")
    trust = UpstreamTrust([lab, hub], upstream_ssl_context)
    http = trusting_client(trust)
    return Shared(lab, hub, trust, UpstreamClient(http, None, trust))


# --- a connection verified with the CA, kept idle, after its origin lost it --------------------


async def test_the_pool_does_not_reuse_a_connection_whose_origin_lost_the_ca(
    private_ca: PrivateCA, tmp_path: Path, shared: Shared
) -> None:
    """The lab's realm is trusted with its CA until the hub (no ca_file) names the same realm:
    then the hub's token GET must verify with certifi's CAs alone, which refuse the private
    CA's certificate. It was sent on the lab's idle connection, verified with the lab's CA, and
    went through (the hub's login would go to whoever that CA vouched for)."""
    trust, client, lab, hub = shared.trust, shared.client, shared.lab, shared.hub
    with tls_server(REALM_HOST, private_ca.leaf(REALM_HOST), tmp_path, TOKEN) as realm:
        try:
            trust.learned(lab, realm.url + "/token")
            answer = await client.send(lab, "GET", realm.url + "/token", [])
            assert await read_small(answer) == b'{"token": "t"}'  # kept idle in the pool
            trust.learned(hub, realm.url + "/token")
            assert trust.context_for_url(realm.url) is trust.default
            with pytest.raises(UpstreamUnavailable) as caught:
                answer = await client.send(hub, "GET", realm.url + "/token", [])
                await read_small(answer)
            assert "its certificate could not be verified" in caught.value.message
            # The lab's realm moves back to being its own: a new connection verifies again.
            trust.learned(hub, "https://auth.example.invalid/token")
            answer = await client.send(lab, "GET", realm.url + "/token", [])
            assert await read_small(answer) == b'{"token": "t"}'
        finally:
            await client.http.aclose()


def test_a_direct_get_does_not_reuse_a_connection_whose_origin_lost_the_ca(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The same for the fills' idle ``http.client`` connections: the lab's realm moved away
    from an origin, whose idle connection (verified with the lab's CA) must not serve the next
    GET there."""
    lab = Upstream(f"https://{REGISTRY_HOST}:1", ca_file=private_ca.ca_file, name="lab")
    trust = UpstreamTrust([lab], upstream_ssl_context)
    settings = trusting_direct(trust)
    with tls_server(REALM_HOST, private_ca.leaf(REALM_HOST), tmp_path, BLOB) as server:
        try:
            trust.learned(lab, server.url + "/token")
            answer = direct.get(settings, server.url + "/blob", [])
            assert answer.body.read(100) == b"a blob"
            answer.close()
            assert len(settings.idle) == 1
            trust.learned(lab, "https://auth.example.invalid/token")  # it moved
            with pytest.raises(UpstreamUnavailable) as caught:
                direct.get(settings, server.url + "/blob", []).close()
            assert "its certificate could not be verified" in caught.value.message
        finally:
            settings.idle.close()


# --- the 502's advice -------------------------------------------------------------------------


async def test_an_expired_certificate_is_not_told_to_go_in_ca_file(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The CA is in ca_file already; the certificate expired: naming the CA again cannot help."""
    leaf = private_ca.expired_leaf(REGISTRY_HOST)
    with tls_server(REGISTRY_HOST, leaf, tmp_path, TOKEN) as registry:
        lab = Upstream(registry.url, ca_file=private_ca.ca_file, name="lab")
        trust = UpstreamTrust([lab], upstream_ssl_context)
        client = UpstreamClient(
            trusting_client(trust),
            None,
            trust,
        )
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.send(lab, "GET", registry.url + "/token", [])
        finally:
            await client.http.aclose()
    message = caught.value.message
    assert "its certificate could not be verified (certificate has expired); the server's " in (
        message
    )
    assert message.endswith("to be renewed, or this machine's clock is wrong")
    assert "ca_file" not in message


def test_a_certificate_for_another_host_is_not_told_to_go_in_ca_file(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The registry shows the certificate of another host (issued by the CA in ca_file)."""
    leaf = private_ca.leaf(REALM_HOST)
    with tls_server(REGISTRY_HOST, leaf, tmp_path, BLOB) as registry:
        lab = Upstream(registry.url, ca_file=private_ca.ca_file, name="lab")
        trust = UpstreamTrust([lab], upstream_ssl_context)
        settings = trusting_direct(trust)
        with pytest.raises(UpstreamUnavailable) as caught:
            direct.get(settings, registry.url + "/blob", [])
    message = caught.value.message
    assert "its certificate could not be verified (IP address mismatch" in message
    assert message.endswith(f"; it is not a certificate for {REGISTRY_HOST}:{registry.port}")
    assert "ca_file" not in message


# --- httpcore before 1.0.6 --------------------------------------------------------------------


class _Before106(httpx.AsyncBaseTransport):
    """What httpx's transport does over httpcore 1.0.0 to 1.0.5 (which pyproject allows): its
    anyio backend maps no ``ssl.SSLError`` of the handshake to ``ConnectError``, so the ``ssl``
    error itself comes out of ``send``. Here a real handshake with certifi's CAs alone."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, port = request.url.host, request.url.port or 443
        with socket.create_connection((host, port), timeout=5) as raw:
            with upstream_ssl_context().wrap_socket(raw, server_hostname=host):
                pass
        raise AssertionError("the handshake went through")


async def test_an_ssl_error_not_mapped_by_httpcore_is_still_a_502_saying_why(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    with tls_server(REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, TOKEN) as registry:
        upstream = Upstream(registry.url, name="lab")
        http = make_http_client(load_config(environ={}).upstream, _Before106())
        client = UpstreamClient(http)
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.challenge(upstream)
        finally:
            await http.aclose()
    message = caught.value.message
    assert "its certificate could not be verified (unable to get local issuer certificate)" in (
        message
    )
    assert caught.value.status == 502
    assert client.health_of(upstream).last_error_message == message


# --- a redirect's host, which no ca_file covers -----------------------------------------------

CDN_HOST = "127.0.0.76"  # where the registry's blobs redirect to: its storage, same private CA
ADD_THE_CA = "name that CA's certificate in the upstream's ca_file"
NOT_COVERED = (
    "; an upstream's ca_file is trusted for its registry, its token service and its ca_origins "
    "only, not for"
)


def _redirecting(cdn: str) -> Routes:
    return {"/v2/r/blobs/sha256:1": (307, {"Location": cdn + "/blob"}, b"")}


async def test_a_redirects_host_is_not_told_to_go_in_ca_file_through_the_pool(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The lab's CA is in its ca_file; its blobs redirect to storage with a certificate of the
    same CA, which ca_file does not cover: naming the CA there again cannot help."""
    with (
        tls_server(CDN_HOST, private_ca.leaf(CDN_HOST), tmp_path, BLOB) as cdn,
        tls_server(
            REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, _redirecting(cdn.url)
        ) as registry,
    ):
        lab = Upstream(registry.url, ca_file=private_ca.ca_file, name="lab")
        message = await _pool_refused(lab, registry.url + "/v2/r/blobs/sha256:1")
    assert f"({CDN_HOST}:{cdn.port}): its certificate could not be verified (unable to" in message
    assert ADD_THE_CA not in message
    assert f"{NOT_COVERED} {CDN_HOST}:{cdn.port}: " in message


@contextmanager
def plain_server(host: str, routes: Routes) -> Iterator[str]:
    """An HTTP server (no TLS) on ``host``, a free port below 10000: its URL."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = on_own_port(lambda port: http.server.ThreadingHTTPServer((host, port), handler))
    with Background(server) as served:
        yield served.url


def test_a_redirects_host_is_not_told_to_go_in_ca_file_by_a_direct_get(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The same for a fill's direct GET."""
    with (
        tls_server(CDN_HOST, private_ca.leaf(CDN_HOST), tmp_path, BLOB) as cdn,
        tls_server(
            REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, _redirecting(cdn.url)
        ) as registry,
    ):
        lab = Upstream(registry.url, ca_file=private_ca.ca_file, name="lab")
        message = _direct_refused(lab, registry.url)
    assert f"({CDN_HOST}:{cdn.port}): its certificate could not be verified (unable" in message
    assert ADD_THE_CA not in message
    assert f"{NOT_COVERED} {CDN_HOST}:{cdn.port}: " in message


def test_a_redirects_host_is_not_told_to_go_in_ca_file_without_any_ca_file(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """No upstream has a ca_file (the direct GETs then keep the one context): a plain-HTTP
    registry's redirect to storage a private CA vouches for is still none ca_file can mend."""
    with (
        tls_server(CDN_HOST, private_ca.leaf(CDN_HOST), tmp_path, BLOB) as cdn,
        plain_server(REGISTRY_HOST, _redirecting(cdn.url)) as registry,
    ):
        message = _direct_refused(Upstream(registry, name="lab"), registry)
    assert f"({CDN_HOST}:{cdn.port}): its certificate could not be verified (unable" in message
    assert ADD_THE_CA not in message
    assert f"{NOT_COVERED} {CDN_HOST}:{cdn.port}: " in message


async def test_a_registry_without_a_ca_file_is_told_to_name_its_ca_in_one(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The first thing a private registry behind a company CA meets: no ca_file yet, its own
    certificate's issuer unknown. The 502 (through the pool and a fill's direct GET) says to
    name the CA in its ca_file (before: "list https://HOST in that upstream's ca_origins", which
    needs a ca_file, and is for other hosts than the registry's own)."""
    with tls_server(REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, BLOB) as registry:
        lab = Upstream(registry.url, name="lab")
        by_pool = await _pool_refused(lab, registry.url + "/blob")
        by_direct = _direct_refused(lab, registry.url)
    for message in (by_pool, by_direct):
        assert f"({REGISTRY_HOST}:{registry.port}): its certificate could not be" in message
        assert message.endswith(f"; if a private CA issued it, {ADD_THE_CA}"), message


async def _pool_refused(upstream: Upstream, url: str) -> str:
    """The 502's message for a GET of ``url`` through the shared httpx client."""
    trust = UpstreamTrust([upstream], upstream_ssl_context)
    http = trusting_client(trust)
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await UpstreamClient(http, None, trust).send(upstream, "GET", url, [])
    finally:
        await http.aclose()
    return caught.value.message


def _direct_refused(upstream: Upstream, registry: str) -> str:
    trust = UpstreamTrust([upstream], upstream_ssl_context)
    settings = trusting_direct(trust)
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            direct.get(settings, registry + "/v2/r/blobs/sha256:1", [])
    finally:
        settings.idle.close()
    return caught.value.message


# --- a registry whose host name is not ASCII (an IDN) -----------------------------------------


def test_an_idn_registry_is_trusted_with_its_ca_file_through_the_pool_too(
    private_ca: PrivateCA,
) -> None:
    """httpx sends an IDN host in its ASCII form (xn--...), which httpcore's origin, and so the
    pool's new connection, carries: the registry's context must be found by it too, as the
    direct GETs find it by the name as written."""
    registry = "https://bücher.example:5000"
    lab = Upstream(registry, ca_file=private_ca.ca_file, name="lab")
    trust = UpstreamTrust([lab], upstream_ssl_context)
    extended = trust.context_for_url(registry)
    assert extended is not trust.default
    url = httpx.Request("GET", registry + "/v2/").url
    assert url.raw_host == b"xn--bcher-kva.example"
    pool = trusting_transport(trust, httpx.Limits())._pool
    made = pool.create_connection(httpcore.Origin(b"https", url.raw_host, 5000))
    inner = made._connection._connection  # type: ignore[attr-defined]  # _Verified, _Guarded
    assert isinstance(inner, httpcore.AsyncHTTPConnection)
    assert inner._ssl_context is extended  # what its handshake will verify with
    assert trust.context_for(("https", "bücher.example", 5000)) is extended  # a direct GET's
    assert trust.covers(str(url))


# --- a private key in the CA file -------------------------------------------------------------


def test_a_private_key_in_the_ca_file_is_told_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PEM of a certificate and its key (a client's certificate and key, as Docker's
    certs.d has them beside ca.crt, or a CA's own key) is no CA file: the key is left out, and
    that is said at start (its path, never the key), not passed over in silence."""
    root = issue("docxy review CA with its key", ca=True)
    path = tmp_path / "with-key.pem"
    path.write_bytes(root.cert_pem + root.key_pem)
    ca_file = read_ca_file(path)
    assert ca_file.count == 1 and "PRIVATE KEY" not in ca_file.pem
    caplog.set_level("INFO", logger="docxy.upstream.trust")
    lab = Upstream(f"https://{REGISTRY_HOST}:1", ca_file=ca_file, name="lab")
    UpstreamTrust([lab], upstream_ssl_context)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"upstream trust: {path} holds a private key besides its certificates: the key is left "
        "out (ca_file takes CA certificates alone; a key does not belong in a file others read)"
    ]
    body = b"".join(root.key_pem.splitlines()[1:-1]).decode()
    assert all(body[:40] not in r.getMessage() for r in caplog.records)
    clean = read_ca_file(_written(tmp_path / "clean.pem", root.cert_pem))
    caplog.clear()
    UpstreamTrust([Upstream(lab.registry, ca_file=clean, name="lab")], upstream_ssl_context)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
