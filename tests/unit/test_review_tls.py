"""Review faults in TLS loading and reloading (docxy.tls), each shown by a failing test first."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.tls.context import ReloadableTLS

Issued = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _issue(name: str, issuer: Issued | None, *, ca: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextlib.asynccontextmanager
async def _tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(b"hello\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _verifies(port: int, root: Path) -> bool:
    """Whether a client that trusts only ``root`` accepts what the server presents."""
    client = ssl.create_default_context(cafile=str(root))
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
    except ssl.SSLCertVerificationError:
        return False
    await reader.readline()
    writer.close()
    return True


async def test_a_reload_that_adds_the_missing_intermediate_serves_the_whole_chain(
    tmp_path: Path,
) -> None:
    """The usual first mistake: cert.pem (the leaf alone) installed instead of fullchain.pem.
    Clients then fail with 'certificate signed by unknown authority'; the operator puts the
    full chain in place and sends SIGHUP. The leaf is the same, so the reload must not be
    taken for 'unchanged': the chain is what changed."""
    root = _issue("review root", None, ca=True)
    intermediate = _issue("review intermediate", root, ca=True)
    leaf_key, leaf = _issue("localhost", intermediate, ca=False)
    (tmp_path / "root.pem").write_bytes(_pem(root[1]))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(_pem(leaf))  # the leaf alone
    tls = ReloadableTLS(cert, key)
    async with _tls_server(tls.context) as port:
        assert not await _verifies(port, tmp_path / "root.pem")
        cert.write_bytes(_pem(leaf) + _pem(intermediate[1]))  # the full chain
        assert tls.reload() is True
        assert await _verifies(port, tmp_path / "root.pem")
