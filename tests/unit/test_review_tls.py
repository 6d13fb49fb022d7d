"""Review faults in TLS loading and reloading (docxy.tls), each shown by a failing test first."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from docxy.tls.context import ReloadableTLS, self_signed
from lab.certs import issue


@contextlib.asynccontextmanager
async def _tls_server(tls: ReloadableTLS) -> AsyncIterator[int]:
    """Each connection's handshake with the context of the moment, as the edge does it."""

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.start_tls(tls.context)
            writer.write(b"hello\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0)
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
    root = issue("review root", ca=True)
    intermediate = issue("review intermediate", root, ca=True)
    leaf = issue("localhost", intermediate, names=[x509.DNSName("localhost")])
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    served = leaf.write(tmp_path / "cert.pem", tmp_path / "key.pem")  # the leaf alone
    tls = ReloadableTLS(served.cert, served.key)
    async with _tls_server(tls) as port:
        assert not await _verifies(port, tmp_path / "root.pem")
        served.cert.write_bytes(leaf.cert_pem + intermediate.cert_pem)  # the full chain
        assert tls.reload() is True
        assert await _verifies(port, tmp_path / "root.pem")


def _rsa_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate for localhost (its own trust anchor), PKCS#8 key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = issue("localhost", names=[x509.DNSName("localhost")], key=key).write(
        directory / "cert.pem", directory / "key.pem"
    )
    return pair.cert, pair.key


async def _presented(port: int, *, ecdsa_only: bool, sni: bool = True) -> bytes:
    """The DER certificate the server presents to a client that accepts anything; with
    ``ecdsa_only`` the client offers only ECDSA suites (TLS 1.2), as a client preferring ECDSA
    signatures would be served."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if ecdsa_only:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost" if sni else ""
    )
    der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    await reader.readline()
    writer.close()
    return der


async def test_a_reload_to_another_key_type_stops_serving_the_old_certificate(
    tmp_path: Path,
) -> None:
    """The first start with certs.domain serves an ECDSA bootstrap certificate at the cert
    paths; the operator then installs their own RSA certificate there (or moves from an RSA
    certificate to Let's Encrypt's ECDSA one). OpenSSL keeps one certificate per key type in
    a context, so loading the new pair into the live context left the old one in its slot:
    every client that offers (or prefers) the old type's signatures still got the old,
    bootstrap or expiring, certificate after the reload, while /health showed the new one."""
    cert, key = self_signed(tmp_path / "ec", "localhost")  # ECDSA P-256, as the bootstrap
    served = (tmp_path / "cert.pem", tmp_path / "key.pem")
    served[0].write_bytes(cert.read_bytes())
    served[1].write_bytes(key.read_bytes())
    tls = ReloadableTLS(*served)
    rsa_cert, rsa_key = _rsa_pair(tmp_path / "rsa")
    new_der = x509.load_pem_x509_certificate(rsa_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    async with _tls_server(tls) as port:
        served[0].write_bytes(rsa_cert.read_bytes())
        served[1].write_bytes(rsa_key.read_bytes())
        assert tls.reload() is True
        assert await _presented(port, ecdsa_only=False) == new_der
        # A client that sends no server name (a mirror reached by IP address) too.
        assert await _presented(port, ecdsa_only=False, sni=False) == new_der
        # A client that cannot take RSA now fails the handshake: it must not get the old one.
        try:
            shown = await _presented(port, ecdsa_only=True)
        except (ssl.SSLError, ConnectionError):
            shown = b""
        assert shown != x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )


def _client_hello(server_name: bytes) -> bytes:
    """A real ClientHello whose SNI is ``server_name`` (same length as ``a.test``)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    talker = client.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        talker.do_handshake()
    hello = outgoing.read()
    assert len(server_name) == len(b"a.test") and hello.count(b"a.test") == 1
    return hello.replace(b"a.test", server_name)


async def test_a_server_name_beyond_ascii_makes_no_python_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python SNI callback (how the context used to be switched after a reload) makes
    CPython decode every client's server name as ASCII first: a hostile ClientHello with other
    bytes there printed an 'Exception ignored' UnicodeDecodeError to stderr for each
    connection. Nothing in Python looks at the server name now: OpenSSL answers it."""
    ignored: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: ignored.append(raised.exc_value))
    cert, key = self_signed(tmp_path, "localhost")
    tls = ReloadableTLS(cert, key)
    async with _tls_server(tls) as port:
        for name in (b"a.test", b"\xff.test", b"\xc3\xa9test"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_client_hello(name))
            await writer.drain()
            answer = await reader.read(5)
            writer.close()
            assert answer[:1] == b"\x16", (name, answer)  # a handshake record: a ServerHello
    assert ignored == []
