"""An upstream's ``ca_file``: CAs trusted besides certifi's on that upstream's origins only.

The setting in every layer (file, environment, flag; ``[upstream]`` and ``[[upstreams]]``),
its start-up errors, ``--show-config``; and real TLS handshakes on 127.0.0.8x: the context for
the upstream's registry and token service (configured, or learned from its challenge) trusts
the private CA, the one for any other origin does not, through the shared httpx client and the
fills' direct GETs alike; a certificate that does not verify is a 502 that says so.
"""

from __future__ import annotations

import http.server
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from docxy.config import describe, load_config
from docxy.core.errors import ConfigError, UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import (
    MAX_CONNECTIONS,
    Upstream,
    UpstreamClient,
    make_http_client,
    read_small,
    upstream_ssl_context,
)
from docxy.upstream.direct import DirectSettings
from docxy.upstream.trust import UpstreamTrust
from lab.certs import Issued, issue
from lab.clients.background import Background
from lab.ports import on_own_port

REGISTRY_HOST = "127.0.0.81"  # the private registry
REALM_HOST = "127.0.0.82"  # its token service, on a host of its own
OTHER_HOST = "127.0.0.83"  # another origin with a certificate from the same private CA
TIMEOUT = 5.0
UPSTREAM_FLAGS = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_PARTIAL_CHAIN


# --- certificates and files -------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateCA:
    root: Issued
    pem_file: Path

    def leaf(self, host: str) -> Issued:
        return issue(host, self.root, names=[x509.IPAddress(IPv4Address(host))])


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    root = issue("docxy test private CA", ca=True)
    path = tmp_path_factory.mktemp("ca") / "lab-ca.pem"
    # As a bundle is written: a comment (not ASCII), then the certificate.
    path.write_bytes("# Issuer: CN=Főtanúsítvány\n".encode() + root.cert_pem)
    return PrivateCA(root, path)


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(**kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# --- the setting in every layer ---------------------------------------------------------------


def test_upstream_ca_file_in_the_file_the_environment_and_a_flag(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(issue("another CA", ca=True).cert_pem)
    toml = tmp_path / "docxy.toml"
    toml.write_text(f'[upstream]\nca_file = "{private_ca.pem_file}"\n')

    from_file = load_config(config_file=toml, environ={})
    assert from_file.upstream.ca_file is not None
    assert from_file.upstream.ca_file.path == private_ca.pem_file
    assert from_file.upstream.ca_file.count == 1
    assert from_file.sources["upstream.ca_file"] == f"file {toml}"
    assert "Főtanúsítvány" not in from_file.upstream.ca_file.pem  # the certificates alone

    env = {"DOCXY_UPSTREAM_CA_FILE": str(other)}
    from_env = load_config(config_file=toml, environ=env)
    assert from_env.upstream.ca_file is not None and from_env.upstream.ca_file.path == other
    assert from_env.sources["upstream.ca_file"] == "env DOCXY_UPSTREAM_CA_FILE"

    flagged = load_config({"upstream.ca_file": str(private_ca.pem_file)}, toml, env)
    assert flagged.upstream.ca_file == from_file.upstream.ca_file
    assert flagged.sources["upstream.ca_file"] == "flag"

    rows = {key: (shown, source) for key, shown, source in describe(from_env)}
    assert rows["upstream.ca_file"] == (str(other), "env DOCXY_UPSTREAM_CA_FILE")
    unset = {key: shown for key, shown, _ in describe(load_config(environ={}))}
    assert unset["upstream.ca_file"] == "(none)"


def test_named_upstream_ca_file_in_every_layer(private_ca: PrivateCA, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(issue("another CA", ca=True).cert_pem)
    toml = tmp_path / "docxy.toml"
    toml.write_text(
        "[[upstreams]]\n"
        'name = "registry.lab.example"\n'
        'registry = "https://registry.lab.example"\n'
        f'ca_file = "{private_ca.pem_file}"\n'
    )
    key = "upstreams.registry.lab.example.ca_file"

    (named,) = load_config(config_file=toml, environ={}).upstreams
    assert named.ca_file is not None and named.ca_file.path == private_ca.pem_file

    variable = "DOCXY_UPSTREAMS_REGISTRY_LAB_EXAMPLE_CA_FILE"
    config = load_config(config_file=toml, environ={variable: str(other)})
    assert config.upstreams[0].ca_file is not None
    assert config.upstreams[0].ca_file.path == other
    assert config.sources[key] == f"env {variable}"
    rows = {row[0]: row[1:] for row in describe(config)}
    assert rows[key] == (str(other), f"env {variable}")

    flagged = load_config({key: str(private_ca.pem_file)}, toml, {variable: str(other)})
    assert flagged.upstreams[0].ca_file is not None
    assert flagged.upstreams[0].ca_file.path == private_ca.pem_file
    assert flagged.sources[key] == "flag"

    listed = load_config(
        {"upstreams": "lab.test=https://lab.test:5000", "upstreams.lab.test.ca_file": str(other)},
        environ={},
    )
    assert listed.upstreams[0].ca_file is not None and listed.upstreams[0].ca_file.count == 1


def test_ca_file_is_a_setting_not_the_secret_ca_in_a_file(private_ca: PrivateCA) -> None:
    """``*_file`` names a secret's file only for the secrets: ``ca_file`` is the path itself
    (there is no ``ca``), and it does not stand in for the password's file or take one."""
    config = load_config(environ={"DOCXY_UPSTREAM_CA_FILE": str(private_ca.pem_file)})
    assert config.upstream.password is None
    assert config.upstream.ca_file is not None
    message = config_error(environ={"DOCXY_UPSTREAM_CA": str(private_ca.pem_file)})
    assert message.startswith("upstream.ca: unknown key (env DOCXY_UPSTREAM_CA)")
    message = config_error(environ={"DOCXY_UPSTREAM_CA_FILE_FILE": str(private_ca.pem_file)})
    assert message.startswith("upstream.ca_file_file: unknown key")
    assert "only the secret settings take a file" in message


# --- errors at start-up -----------------------------------------------------------------------


def test_a_missing_file_stops_start_up_naming_key_source_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = config_error(environ={"DOCXY_UPSTREAM_CA_FILE": str(missing)})
    assert message == (
        f"upstream.ca_file: cannot read {missing}: No such file or directory "
        "(env DOCXY_UPSTREAM_CA_FILE)"
    )
    message = config_error(environ={"DOCXY_UPSTREAM_CA_FILE": str(tmp_path)})
    assert message.startswith(f"upstream.ca_file: cannot read {tmp_path}: Is a directory")


def test_a_file_without_a_certificate_stops_start_up(tmp_path: Path) -> None:
    key_only = tmp_path / "key.pem"
    key_only.write_bytes(issue("a leaf").key_pem)
    message = config_error(overrides={"upstream.ca_file": str(key_only)}, environ={})
    assert message.startswith(f"upstream.ca_file: no PEM certificate in {key_only}")
    assert message.endswith("(flag)")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    message = config_error(overrides={"upstream.ca_file": str(broken)}, environ={})
    assert message.startswith(f"upstream.ca_file: a certificate in {broken} cannot be read")


def test_a_named_upstreams_bad_file_names_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "lab.pem"
    environ = {
        "DOCXY_UPSTREAMS": "lab.test=https://lab.test",
        "DOCXY_UPSTREAMS_LAB_TEST_CA_FILE": str(missing),
    }
    assert config_error(environ=environ) == (
        f"upstreams.lab.test.ca_file: cannot read {missing}: No such file or directory "
        "(env DOCXY_UPSTREAMS_LAB_TEST_CA_FILE)"
    )


def test_two_upstreams_on_one_host_with_other_ca_files_are_refused(
    private_ca: PrivateCA,
) -> None:
    environ = {
        "DOCXY_UPSTREAM_REGISTRY": "https://lab.test",
        "DOCXY_UPSTREAMS": "lab.test=https://lab.test",
        "DOCXY_UPSTREAMS_LAB_TEST_CA_FILE": str(private_ca.pem_file),
    }
    assert "with another ca_file" in config_error(environ=environ)


# --- the contexts: real handshakes ------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, headers, body = self.routes.get(self.path.split("?")[0], (404, {}, b""))
        self.send_response(status)
        for name, value in (headers | {"Content-Length": str(len(body))}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class TLSServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


@contextmanager
def tls_server(
    host: str, leaf: Issued, tmp_path: Path, routes: dict[str, tuple[int, dict[str, str], bytes]]
) -> Iterator[TLSServer]:
    """An HTTPS server on ``host`` (a free port below 10000) serving ``leaf`` and ``routes``."""
    cert, key = tmp_path / f"{host}-cert.pem", tmp_path / f"{host}-key.pem"
    leaf.write(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = on_own_port(lambda port: http.server.ThreadingHTTPServer((host, port), handler))
    port = server.server_address[1]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with Background(server):
        yield TLSServer(host, port)


def trusting_client(trust: UpstreamTrust) -> httpx.AsyncClient:
    """The shared httpx client as the app makes it with ``trust`` (the default settings)."""
    return make_http_client(load_config(environ={}).upstream, None, trust.default, trust)


def trusting_direct(trust: UpstreamTrust) -> DirectSettings:
    """The fills' direct GET settings as the app makes them with ``trust``."""
    settings = direct.direct_settings(load_config(environ={}).upstream, trust.default, None, trust)
    assert settings is not None
    return settings


def handshake_with(context: ssl.SSLContext, server: TLSServer) -> Exception | None:
    """The error a handshake with ``server`` meets with ``context``, None when through."""
    try:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=server.host):
                return None
    except (OSError, ssl.SSLError) as exc:
        return exc


def test_the_upstreams_origin_trusts_its_ca_and_another_does_not(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    config = load_config(environ={"DOCXY_UPSTREAM_CA_FILE": str(private_ca.pem_file)})
    with (
        tls_server(REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, {}) as registry,
        tls_server(OTHER_HOST, private_ca.leaf(OTHER_HOST), tmp_path, {}) as other,
    ):
        upstream = Upstream(registry.url, ca_file=config.upstream.ca_file)
        trust = UpstreamTrust([upstream], upstream_ssl_context)
        assert trust.extends
        extended = trust.context_for_url(registry.url + "/v2/")
        assert extended is not trust.default
        assert extended.verify_flags == UPSTREAM_FLAGS  # the same flags as the default
        assert len(extended.get_ca_certs()) == len(trust.default.get_ca_certs()) + 1
        assert handshake_with(extended, registry) is None
        assert trust.context_for_url(other.url) is trust.default
        refused = handshake_with(trust.context_for_url(other.url), other)
        assert isinstance(refused, ssl.SSLCertVerificationError)
        # the port is part of the origin: the registry's host on another port is another
        assert trust.context_for_url(f"https://{REGISTRY_HOST}:1") is trust.default


def test_the_realm_origin_configured_or_learned_trusts_the_ca(private_ca: PrivateCA) -> None:
    config = load_config(environ={"DOCXY_UPSTREAM_CA_FILE": str(private_ca.pem_file)})
    ca_file = config.upstream.ca_file
    realm = f"https://{REALM_HOST}:7443/token"
    fixed = Upstream(f"https://{REGISTRY_HOST}:7000", realm, ca_file=ca_file)
    trust = UpstreamTrust([fixed], upstream_ssl_context)
    assert trust.context_for_url(realm) is not trust.default
    trust.learned(fixed, f"https://{OTHER_HOST}/token")  # auth_realm set: that one stands
    assert trust.context_for_url(f"https://{OTHER_HOST}/token") is trust.default

    discovered = Upstream(f"https://{REGISTRY_HOST}:7000", ca_file=ca_file)
    hub = Upstream("https://registry-1.docker.io", name="docker.io")
    trust = UpstreamTrust([discovered, hub], upstream_ssl_context)
    assert trust.context_for_url(realm) is trust.default  # not learned yet
    trust.learned(discovered, realm)
    assert trust.context_for_url(realm) is trust.context_for_url(discovered.registry)
    trust.learned(discovered, f"https://{OTHER_HOST}/token")  # it moved
    assert trust.context_for_url(realm) is trust.default
    assert trust.context_for_url(f"https://{OTHER_HOST}/token") is not trust.default
    # A realm an upstream without a ca_file uses too stays on certifi's CAs alone.
    trust.learned(hub, f"https://{OTHER_HOST}/token")
    assert trust.context_for_url(f"https://{OTHER_HOST}/token") is trust.default
    trust.learned(hub, "https://auth.docker.io/token")
    assert trust.context_for_url(f"https://{OTHER_HOST}/token") is not trust.default


def test_without_a_ca_file_nothing_changes() -> None:
    trust = UpstreamTrust([Upstream("https://registry-1.docker.io")], upstream_ssl_context)
    assert not trust.extends
    http = make_http_client(load_config({}, environ={}).upstream, None, trust.default, trust)
    assert type(http._transport) is httpx.AsyncHTTPTransport


def _token_routes(realm: str) -> dict[str, tuple[int, dict[str, str], bytes]]:
    challenge = f'Bearer realm="{realm}",service="lab"'
    return {"/v2/": (401, {"WWW-Authenticate": challenge}, b"{}")}


async def test_the_shared_client_reaches_registry_and_learned_realm_in_one_pool(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """The probe's ``/v2/`` (registry) and the token GET (the realm it names, on another host)
    go through with the private CA; another origin with a certificate of the same CA (a CDN,
    say) is refused with a 502 that says why and names ``ca_file``."""
    config = load_config(environ={"DOCXY_UPSTREAM_CA_FILE": str(private_ca.pem_file)})
    token = {"/token": (200, {"Content-Type": "application/json"}, b'{"token": "t"}')}
    with (
        tls_server(REALM_HOST, private_ca.leaf(REALM_HOST), tmp_path, token) as realm,
        tls_server(
            REGISTRY_HOST,
            private_ca.leaf(REGISTRY_HOST),
            tmp_path,
            _token_routes(realm.url + "/token"),
        ) as registry,
        tls_server(OTHER_HOST, private_ca.leaf(OTHER_HOST), tmp_path, token) as other,
    ):
        upstream = Upstream(registry.url, ca_file=config.upstream.ca_file)
        trust = UpstreamTrust([upstream], upstream_ssl_context)
        http = make_http_client(config.upstream, None, trust.default, trust)
        client = UpstreamClient(http, None, trust)
        try:
            pool = http._transport._pool  # type: ignore[attr-defined]
            assert pool._max_connections == MAX_CONNECTIONS  # one pool, the same limits
            assert await client.auth_realm(upstream) == realm.url + "/token"
            answer = await client.send(upstream, "GET", realm.url + "/token", [])
            assert answer.status_code == 200
            assert await read_small(answer) == b'{"token": "t"}'
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.send(upstream, "GET", other.url + "/token", [])
            message = caught.value.message
            assert f"cannot reach the upstream registry ({OTHER_HOST}:{other.port})" in message
            assert "its certificate could not be verified" in message
            assert "ca_file" in message
            assert caught.value.status == 502
        finally:
            await http.aclose()


async def test_without_the_ca_file_the_probe_fails_saying_why(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    config = load_config(environ={})
    with tls_server(
        REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, _token_routes("https://x/t")
    ) as registry:
        upstream = Upstream(registry.url)
        trust = UpstreamTrust([upstream], upstream_ssl_context)
        http = make_http_client(config.upstream, None, trust.default, trust)
        client = UpstreamClient(http, None, trust)
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.challenge(upstream)
        finally:
            await http.aclose()
    message = caught.value.message
    assert "its certificate could not be verified (" in message
    assert "unable to get local issuer certificate" in message
    assert "ca_file" in message
    assert client.health_of(upstream).last_error_message == message


def test_the_direct_get_picks_the_context_per_origin(private_ca: PrivateCA, tmp_path: Path) -> None:
    """A fill's direct GET (``http.client``) to the registry verifies with the private CA; its
    redirect to another origin (a CDN) with the default context, and is refused there."""
    config = load_config(environ={"DOCXY_UPSTREAM_CA_FILE": str(private_ca.pem_file)})
    blob = b"a blob from a private registry"
    with tls_server(OTHER_HOST, private_ca.leaf(OTHER_HOST), tmp_path, {}) as cdn:
        routes = {
            "/v2/r/blobs/sha256:1": (200, {}, blob),
            "/v2/r/blobs/sha256:2": (307, {"Location": cdn.url + "/blob"}, b""),
        }
        with tls_server(REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, routes) as reg:
            upstream = Upstream(reg.url, ca_file=config.upstream.ca_file)
            trust = UpstreamTrust([upstream], upstream_ssl_context)
            settings = direct.direct_settings(config.upstream, trust.default, None, trust)
            assert settings is not None
            try:
                answer = direct.get(settings, reg.url + "/v2/r/blobs/sha256:1", [])
                try:
                    assert answer.status == 200
                    assert answer.body.read(1 << 16) == blob
                finally:
                    answer.close()
                with pytest.raises(UpstreamUnavailable) as caught:
                    direct.get(settings, reg.url + "/v2/r/blobs/sha256:2", [])
            finally:
                settings.idle.close()
    message = caught.value.message
    assert f"({OTHER_HOST}:{cdn.port}): its certificate could not be verified" in message
    assert "ca_file" in message


def test_direct_settings_without_a_ca_file_keep_the_one_context() -> None:
    config = load_config(environ={})
    trust = UpstreamTrust([Upstream.from_config(config.upstream)], upstream_ssl_context)
    one = upstream_ssl_context()
    settings = direct.direct_settings(config.upstream, one, None, trust)
    assert settings is not None and settings.trust is trust  # which origins it covers
    assert settings.context_for(("https", "registry-1.docker.io", 443)) is one
