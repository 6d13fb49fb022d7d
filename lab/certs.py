"""Certificates for the lab: a self-signed one for the loopback address, and chains of any depth.

`loopback_cert` is its own CA (clients trust it directly: curl `--cacert`, an `ssl` context)
and names 127.0.0.1 and localhost. `issue` makes one certificate of a chain (a root, an
intermediate, a leaf for a name), signed by the `Issued` above it or by itself.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lab.ports import LOOPBACK

DAYS = 2

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: A CA's key usage: signing certificates and CRLs, and its own TLS handshakes (a
#: `loopback_cert` is a CA that serves too).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its key on disk; the certificate is also the trust anchor."""

    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, in memory."""

    key: PrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert: Path, key: Path) -> CertPair:
        """The certificate alone at `cert`, the key at `key` (their directories made)."""
        for path, data in ((cert, self.cert_pem), (key, self.key_pem)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return CertPair(cert, key)


def issue(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    names: Sequence[x509.GeneralName] = (),
    key: PrivateKey | None = None,
    days: float = DAYS,
    valid_from: dt.datetime | None = None,
) -> Issued:
    """A certificate for `common_name` (and the subject alternative `names`), signed by
    `issuer` or, without one, by itself; a new P-256 key unless `key` is given. Valid from
    five minutes ago (clock skew), or from `valid_from`, for `days`.

    It has the extensions RFC 5280 asks for, which Python 3.13's ``ssl.create_default_context``
    checks (``VERIFY_X509_STRICT``): key identifiers, the subject's and its issuer's, and a CA's
    key usage. Without them a client on 3.13 refused every chain longer than its root
    ("Missing Authority Key Identifier"); 3.11 and 3.12 did not look."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer = (key if issuer is None else issuer.key).public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = valid_from or dt.datetime.now(dt.UTC)
    start = now if valid_from else now - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer), False)
    )
    if ca:
        builder = builder.add_extension(CA_KEY_USAGE, critical=True)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(key, builder.sign(key if issuer is None else issuer.key, hashes.SHA256()))


def loopback_cert(directory: Path, name: str = "lab") -> CertPair:
    """Write `<name>-cert.pem` and `<name>-key.pem` into `directory` (created if missing)."""
    names = [x509.IPAddress(IPv4Address(LOOPBACK)), x509.DNSName("localhost")]
    issued = issue(f"docxy {name}", ca=True, names=names)
    return issued.write(directory / f"{name}-cert.pem", directory / f"{name}-key.pem")
