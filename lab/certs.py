"""A self-signed certificate for the loopback address, for peers that serve TLS in the lab.

The certificate is its own CA (clients trust it directly: curl `--cacert`, an `ssl` context)
and names 127.0.0.1 and localhost. Its skeleton is Docxy's own `self_signed_builder()`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.tls.context import self_signed_builder
from lab.ports import LOOPBACK

DAYS = 2


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its key on disk; the certificate is also the trust anchor."""

    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert))


def loopback_cert(directory: Path, name: str = "lab") -> CertPair:
    """Write `<name>-cert.pem` and `<name>-key.pem` into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(IPv4Address(LOOPBACK)), x509.DNSName("localhost")]
    cert = (
        self_signed_builder(key, f"docxy {name}", DAYS)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(directory / f"{name}-cert.pem", directory / f"{name}-key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair
