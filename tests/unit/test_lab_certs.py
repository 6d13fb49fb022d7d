"""The lab's certificates (lab.certs) verify under every Python the project supports.

Python 3.13's ``ssl.create_default_context`` sets ``VERIFY_X509_STRICT``: OpenSSL then holds
each certificate of a chain to RFC 5280 (an Authority Key Identifier on every one its issuer
signed, a Subject Key Identifier and key usage on a CA). The lab's chains had none of these,
and on 3.13 test_review_tls's reload test failed: its client refused the leaf and
intermediate the mirror served ("Missing Authority Key Identifier"). The tests here set the
flag themselves, so that 3.11 and 3.12 hold the lab to the same rules.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from lab.certs import Issued, issue, loopback_cert

HANDSHAKE_TURNS = 10  # a TLS 1.3 handshake takes two or three; more means it is stuck


def strict_client(cafile: Path) -> ssl.SSLContext:
    """A client as Python 3.13's default context makes it, on any Python."""
    client = ssl.create_default_context(cafile=str(cafile))
    client.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return client


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A whole TLS handshake between the two in memory (no socket); raises
    ``ssl.SSLCertVerificationError`` if the client refuses what the server presents."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    ends = (
        client.wrap_bio(client_in, client_out, server_hostname=hostname),
        server.wrap_bio(server_in, server_out, server_side=True),
    )
    for _ in range(HANDSHAKE_TURNS):
        finished = 0
        for end in ends:
            try:
                end.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished == len(ends):
            return
    raise AssertionError(f"no handshake after {HANDSHAKE_TURNS} turns")


def serving(tmp_path: Path, leaf: Issued, *chain: Issued) -> ssl.SSLContext:
    """A server context presenting ``leaf`` and then ``chain`` (its intermediates)."""
    cert, key = tmp_path / "fullchain.pem", tmp_path / "key.pem"
    cert.write_bytes(leaf.cert_pem + b"".join(link.cert_pem for link in chain))
    key.write_bytes(leaf.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server


@pytest.mark.parametrize("intermediates", [0, 1, 2])
def test_a_chain_the_lab_issues_verifies_under_the_strict_rules_of_python_3_13(
    tmp_path: Path, intermediates: int
) -> None:
    root = issue("lab root", ca=True)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    issuers = [root]
    for depth in range(intermediates):
        issuers.append(issue(f"lab intermediate {depth}", issuers[-1], ca=True))
    leaf = issue("localhost", issuers[-1], names=[x509.DNSName("localhost")])
    server = serving(tmp_path, leaf, *reversed(issuers[1:]))
    handshake(strict_client(tmp_path / "root.pem"), server, "localhost")


def test_the_loopback_certificate_verifies_under_the_strict_rules_of_python_3_13(
    tmp_path: Path,
) -> None:
    """A single self-signed certificate, trusted as itself: the lab's servers and clients."""
    pair = loopback_cert(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)
    handshake(strict_client(pair.cert), server, "localhost")
