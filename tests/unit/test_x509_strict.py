"""The mirror's X.509 behaviour is the same on every Python it runs on (3.11, 3.12, 3.13).

Python 3.13's ``ssl.create_default_context`` sets ``VERIFY_X509_STRICT`` (and
``VERIFY_X509_PARTIAL_CHAIN``); 3.11 and 3.12 set neither. Two things follow, each held here on
any Python by setting or checking the flags in the test itself:

- the certificates the mirror makes (its client CA and the client certificates ``docxy clients
  add`` issues, its bootstrap self-signed server certificate) pass a strict verifier: a client
  certificate without an Authority Key Identifier was refused ("Missing Authority Key
  Identifier");
- the upstream context is not strict on any Python (Docker's Go client is not), so a registry
  whose hand-made certificate lacks those extensions works through the mirror on every Python,
  and not on 3.11 and 3.12 only.

Every handshake is a real one over TCP on 127.0.0.7x.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from docxy.access.clientca import CA_KEY, ClientCA
from docxy.config import load_config
from docxy.tls.context import ReloadableTLS, self_signed
from docxy.upstream.client import make_http_client, upstream_ssl_context
from lab.certs import CA_KEY_USAGE, Issued, issue
from lab.ports import bound_socket

MIRROR_HOST = "127.0.0.70"  # the mirror's own listener
UPSTREAM_HOST = "127.0.0.71"  # a private registry
REGISTRY_NAME = "registry.internal"
TIMEOUT = 5.0  # seconds any socket operation here may take
STRICT_MESSAGE = "Missing Authority Key Identifier"


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` verifying as Python 3.13's default context does, on any Python."""
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


@contextmanager
def listening(host: str) -> Iterator[socket.socket]:
    """A TCP socket listening on ``host``, on a free port below 10000."""
    with bound_socket(host) as sock:
        sock.listen(1)
        sock.settimeout(TIMEOUT)
        yield sock


@dataclass
class Outcome:
    """What each end of one handshake saw."""

    client_error: Exception | None = None
    server_error: Exception | None = None
    #: The certificate the client presented, as the server got it (DER), if any.
    presented: bytes | None = None


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, host: str, server_hostname: str
) -> Outcome:
    """One TLS handshake over TCP on ``host``. The server sends one byte once it is through,
    and the client reads it: under TLS 1.3 the client is done before the server has checked
    its certificate, and learns of a refusal only from the next read."""
    outcome = Outcome()
    with listening(host) as sock:

        def serve() -> None:
            try:
                conn, _ = sock.accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    with server.wrap_socket(conn, server_side=True) as tls:
                        outcome.presented = tls.getpeercert(binary_form=True)
                        tls.sendall(b"!")
            except (OSError, ssl.SSLError) as exc:
                outcome.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(sock.getsockname(), timeout=TIMEOUT) as raw:
                with client.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    if tls.recv(1) != b"!":
                        raise ConnectionError("the server closed without a byte")
        except (OSError, ssl.SSLError) as exc:
            outcome.client_error = exc
        finally:
            thread.join(2 * TIMEOUT)
    assert not thread.is_alive(), "the server's side of the handshake never ended"
    return outcome


def test_a_client_certificate_the_mirror_issues_passes_a_strict_verifier(
    tmp_path: Path,
) -> None:
    """The mirror's own listener (its server pair and client CA), made strict as 3.13's
    ``create_default_context(Purpose.CLIENT_AUTH)`` would make it, takes a kit from ``docxy
    clients add``. Before, the client certificate had no Authority Key Identifier and the
    handshake failed with "Missing Authority Key Identifier"."""
    ca = ClientCA(tmp_path / "auth")
    ca.issue("laptop", tmp_path / "kit")
    outcome = _kit_to_strict_listener(tmp_path, ca)
    assert outcome.server_error is None, outcome.server_error
    assert outcome.client_error is None, outcome.client_error
    assert outcome.presented is not None
    assert ca.client_of(outcome.presented) == "laptop"


def test_the_certificates_the_mirror_issues_carry_the_extensions_of_rfc_5280(
    tmp_path: Path,
) -> None:
    """Each by name, so that a failure says which one is missing: the CA's key identifier,
    critical basic constraints and key usage with keyCertSign; the client certificate's
    identifiers, the first matching the CA's."""
    ca = ClientCA(tmp_path / "auth")
    ca.issue("laptop", tmp_path / "kit")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "kit" / "client.cert").read_bytes())
    ext = ca_cert.extensions
    ca_ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def _kit_to_strict_listener(tmp_path: Path, ca: ClientCA) -> Outcome:
    """A handshake of the kit in ``tmp_path / "kit"`` with the mirror's own listener (its
    bootstrap pair and ``ca``), made strict as 3.13's ``create_default_context`` would."""
    cert, key = self_signed(tmp_path / "tls", MIRROR_HOST)
    listener = strict(ReloadableTLS(cert, key, client_ca=ca.cert_path).context)
    client = ssl.create_default_context(cafile=str(cert))
    client.load_cert_chain(tmp_path / "kit" / "client.cert", tmp_path / "kit" / "client.key")
    return handshake(listener, client, MIRROR_HOST, MIRROR_HOST)


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _bare(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, days: int
) -> x509.CertificateBuilder:
    """A certificate for ``key`` with no extensions yet, valid from five minutes ago."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _ca_as_made_before(directory: Path) -> None:
    """A client CA as the mirror made it before key identifiers came with the builder: with a
    Subject Key Identifier, but no Authority Key Identifier (what a running mirror keeps)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _common_name("docxy client CA")
    cert = (
        _bare(name, name, key, days=30)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / CA_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_a_client_ca_made_before_issues_certificates_a_strict_verifier_takes(
    tmp_path: Path,
) -> None:
    """A mirror upgraded in place keeps its CA (a root needs no Authority Key Identifier): what
    it issues from now on passes strict verification too."""
    _ca_as_made_before(tmp_path / "auth")
    ca = ClientCA(tmp_path / "auth")
    ca.issue("ci", tmp_path / "kit")
    outcome = _kit_to_strict_listener(tmp_path, ca)
    assert outcome.server_error is None, outcome.server_error
    assert outcome.presented is not None and ca.client_of(outcome.presented) == "ci"


def _client_kit_as_made_before(ca: ClientCA, out: Path) -> None:
    """A client certificate as ``docxy clients add`` wrote it before: no key identifiers."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.dir / CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _bare(_common_name("old"), ca_cert.subject, key, days=30)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True)
    (out / "client.cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_the_listener_still_takes_a_kit_issued_before_on_every_python(tmp_path: Path) -> None:
    """The mirror's listener builds its context with ``ssl.SSLContext``, not
    ``create_default_context``: it is not strict on any Python, so client certificates issued
    before this change (no Authority Key Identifier) keep working after an upgrade, 3.13
    included. The strict control shows the kit is one a strict verifier refuses."""
    ca = ClientCA(tmp_path / "auth")
    ca.ensure()
    _client_kit_as_made_before(ca, tmp_path / "kit")
    cert, key = self_signed(tmp_path / "tls", MIRROR_HOST)
    listener = ReloadableTLS(cert, key, client_ca=ca.cert_path).context
    assert not listener.verify_flags & ssl.VERIFY_X509_STRICT

    def presenting() -> ssl.SSLContext:
        client = ssl.create_default_context(cafile=str(cert))
        client.load_cert_chain(tmp_path / "kit" / "client.cert", tmp_path / "kit" / "client.key")
        return client

    outcome = handshake(listener, presenting(), MIRROR_HOST, MIRROR_HOST)
    assert outcome.server_error is None, outcome.server_error
    assert outcome.presented is not None
    strict_listener = strict(ReloadableTLS(cert, key, client_ca=ca.cert_path).context)
    refused = handshake(strict_listener, presenting(), MIRROR_HOST, MIRROR_HOST)
    assert STRICT_MESSAGE in str(refused.server_error)


def test_the_bootstrap_certificate_passes_a_strict_verifier(tmp_path: Path) -> None:
    """A client holding the mirror's self-signed certificate (``configure-client.sh`` fetches
    it) as its trust anchor, verifying as 3.13 does; the certificate names its key."""
    cert, key = self_signed(tmp_path / "tls", MIRROR_HOST)
    listener = ReloadableTLS(cert, key).context
    client = strict(ssl.create_default_context(cafile=str(cert)))
    outcome = handshake(listener, client, MIRROR_HOST, MIRROR_HOST)
    assert outcome.client_error is None, outcome.client_error
    made = x509.load_pem_x509_certificate(cert.read_bytes())
    ski = made.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = made.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    constraints = made.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca


#: What every upstream connection verifies with, on every Python: OpenSSL's default flag, and
#: partial chains as 3.13 (and Go) allow them; never strict.
UPSTREAM_FLAGS = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_PARTIAL_CHAIN


def test_the_upstream_context_verifies_alike_on_every_python() -> None:
    """The flags are the same on 3.11, 3.12 and 3.13 (before: none of the two on 3.11 and 3.12,
    both on 3.13); the rest is httpx's context as it was: certificates required, hostnames
    checked, certifi's store, the same protocol options."""
    context = upstream_ssl_context()
    assert context.verify_flags == UPSTREAM_FLAGS
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    httpx_default = httpx.create_ssl_context(trust_env=False)
    assert context.get_ca_certs() == httpx_default.get_ca_certs()
    assert len(context.get_ca_certs()) > 50  # certifi's roots, not an empty store
    assert context.options == httpx_default.options
    assert context.minimum_version == httpx_default.minimum_version


def test_an_http_client_made_without_a_context_uses_the_upstream_one() -> None:
    """``make_http_client`` without a context (before: httpx's own, strict on 3.13) verifies
    with the same flags. httpx keeps the context on its transport's pool (httpx 0.28)."""
    http = make_http_client(load_config({}, environ={}).upstream)
    transport = http._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert transport._pool._ssl_context is not None
    assert transport._pool._ssl_context.verify_flags == UPSTREAM_FLAGS


def _hand_made_leaf(issuer: Issued, name: str) -> Issued:
    """A registry's certificate as made by hand (``openssl x509 -req`` with only a
    subjectAltName): no key identifiers, no basic constraints. Docker's Go client takes it."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _bare(_common_name(name), issuer.cert.subject, key, days=1)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _root_without_subject_key_id() -> Issued:
    """A root CA as an old one can be (TWCA Global Root CA in certifi's store is one): basic
    constraints and key usage, but no Subject Key Identifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _common_name("root without a key id")
    cert = (
        _bare(name, name, key, days=1)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _proper_leaf(issuer: Issued, name: str) -> Issued:
    """A leaf with every extension a strict verifier asks of it (lab.certs.issue's)."""
    return issue(name, issuer, names=[x509.DNSName(name)])


def _private_root() -> Issued:
    return issue("private registry CA", ca=True)


#: Chains Docker's Go client takes and a strict verifier refuses: (root, leaf maker, why).
LENIENT_CHAINS: dict[str, tuple[Callable[[], Issued], Callable[[Issued, str], Issued], str]] = {
    "leaf-without-aki": (
        _private_root,
        _hand_made_leaf,
        "Missing Authority Key Identifier",
    ),
    "root-without-ski": (
        _root_without_subject_key_id,
        _proper_leaf,
        "Missing Subject Key Identifier",
    ),
}


def _registry_serving(tmp_path: Path, leaf: Issued) -> ssl.SSLContext:
    (tmp_path / "registry-cert.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "registry-key.pem").write_bytes(leaf.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "registry-cert.pem", tmp_path / "registry-key.pem")
    return server


def _upstream_trusting(root: Issued) -> ssl.SSLContext:
    """The upstream context with the registry's CA added to its store (the test's only
    change to it: certifi does not hold a private CA)."""
    context = upstream_ssl_context()
    context.load_verify_locations(cadata=root.cert_pem.decode())
    return context


@pytest.mark.parametrize("chain", sorted(LENIENT_CHAINS))
def test_a_registry_whose_chain_lacks_key_identifiers_is_reached(
    tmp_path: Path, chain: str
) -> None:
    """A handshake with the upstream context succeeds on every Python; the same context with
    VERIFY_X509_STRICT set (what it was on 3.13) is refused for the missing identifier, so this
    would catch strictness coming back. Verification itself stays: an unknown issuer and
    another name are refused."""
    make_root, make_leaf, refusal = LENIENT_CHAINS[chain]
    root = make_root()
    server = _registry_serving(tmp_path, make_leaf(root, REGISTRY_NAME))

    reached = handshake(server, _upstream_trusting(root), UPSTREAM_HOST, REGISTRY_NAME)
    assert reached.client_error is None, reached.client_error

    control = handshake(server, strict(_upstream_trusting(root)), UPSTREAM_HOST, REGISTRY_NAME)
    assert isinstance(control.client_error, ssl.SSLCertVerificationError)
    assert refusal in str(control.client_error)

    unknown = handshake(server, upstream_ssl_context(), UPSTREAM_HOST, REGISTRY_NAME)
    assert isinstance(unknown.client_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(unknown.client_error)

    other = handshake(server, _upstream_trusting(root), UPSTREAM_HOST, "other.internal")
    assert isinstance(other.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(other.client_error)
