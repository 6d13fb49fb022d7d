"""Faults in the self-running TLS (certificate reload, renewal, install) found by the third
review (docxy.tls, scheduler): each test asserts the right behaviour and is expected to fail
on the current code (xfail, strict)."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.tls import certs
from docxy.tls.context import CertError, ReloadableTLS
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer
from scheduler.runs import RunFailed

DOMAIN = "mirror.test"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert(
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    name: str = DOMAIN,
) -> x509.Certificate:
    """A self-signed certificate for ``name`` and ``key``, valid between the two times."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _valid(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return _cert(key, now - dt.timedelta(days=1), now + dt.timedelta(days=80))


def _expired(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return _cert(key, now - dt.timedelta(days=100), now - dt.timedelta(days=10))


def _served_certificate(context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a client gets in a handshake with ``context`` (in memory, no socket)."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=DOMAIN)
    server = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):  # bounded: a TLS 1.3 handshake takes two or three rounds
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        der = client.getpeercert(binary_form=True) if client.version() else None
        if der:
            return x509.load_der_x509_certificate(der)
    raise AssertionError("no handshake within 20 rounds")


# --- what the mirror checks is what it serves --------------------------------------------------


def test_the_certificate_served_is_the_one_at_cert_path(tmp_path: Path) -> None:
    """A key file that holds a certificate too (key and certificate in one PEM, as HAProxy and
    many how-tos make it) with the certificate of an earlier issuance for the same key: the
    mirror checks the key against tls.cert_path's certificate and reports that one (/health,
    the expiry warning), but OpenSSL takes the first certificate of the file it is given, the
    key file's first, so clients get the old (here expired) one, and every renewal installed
    at tls.cert_path changes nothing clients see."""
    key = ec.generate_private_key(ec.SECP256R1())
    new, old = _valid(key), _expired(key)
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_path.write_bytes(_pem(new))
    key_path.write_bytes(_key_pem(key) + _pem(old))
    key_path.chmod(0o600)
    tls = ReloadableTLS(cert_path, key_path)
    assert tls.status()["serial"] == format(new.serial_number, "x")  # what it reports
    assert _served_certificate(tls.context).serial_number == new.serial_number


# --- the renewer never swaps a valid served certificate for an expired one --------------------


@pytest.fixture
def renewer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A renewer's settings for mirror.test with served paths (no other DOCXY_*); its certbot
    config dir."""
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    config_dir = tmp_path / "le"
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", DOMAIN)
    monkeypatch.setenv("DOCXY_CERTS_WEBROOT", str(tmp_path / "webroot"))
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(config_dir))
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(served / "fullchain.pem"))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(served / "privkey.pem"))
    return config_dir


def _certbot_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: list[str], **_: object) -> str:
        raise certs.CertbotError(f"certbot {args[0]} failed: Detail: the CA is unreachable")

    monkeypatch.setattr(certs, "run_certbot", run)


def test_a_failed_run_does_not_replace_a_valid_served_certificate_by_an_expired_one(
    renewer_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Renewals have failed for weeks (the lineage's certificate has expired); the operator
    put a valid certificate for the domain at tls.cert_path by hand to keep clients pulling.
    The next failed run (every retry) installs the lineage's expired pair over it, "the
    certificate issued last", and the mirror reloads it: every client fails again, and the
    renewer starts at once on each restart to do it again (its install is 'owed')."""
    live = renewer_env / "live" / DOMAIN
    live.mkdir(parents=True)
    lineage_key = ec.generate_private_key(ec.SECP256R1())
    (live / "fullchain.pem").write_bytes(_pem(_expired(lineage_key)))
    (live / "privkey.pem").write_bytes(_key_pem(lineage_key))
    (renewer_env / "renewal").mkdir()
    (renewer_env / "renewal" / f"{DOMAIN}.conf").write_text("# certbot's lineage\n")
    served_key = ec.generate_private_key(ec.SECP256R1())
    valid = _valid(served_key)
    served = tmp_path / "served"
    (served / "fullchain.pem").write_bytes(_pem(valid))
    (served / "privkey.pem").write_bytes(_key_pem(served_key))
    _certbot_fails(monkeypatch)
    renewer = Renewer(settings_mod.load([]))
    with pytest.raises(RunFailed):
        renewer.attempt()
    assert (served / "fullchain.pem").read_bytes() == _pem(valid)


def test_a_reload_keeps_a_valid_certificate_rather_than_serve_an_expired_one(
    tmp_path: Path,
) -> None:
    """The served files are replaced by an expired pair (a backup of the certificate volume
    restored, the renewer installing a lineage whose renewals failed for months, a `cp` of
    the wrong files): the watch or SIGHUP swaps the certificate every client accepts for one
    every client refuses, while the old one had weeks left. A pair that cannot serve is a
    failed reload: the old one stays, the error shows in /health."""
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    valid = _valid(key)
    cert_path.write_bytes(_pem(valid))
    key_path.write_bytes(_key_pem(key))
    tls = ReloadableTLS(cert_path, key_path)
    other = ec.generate_private_key(ec.SECP256R1())
    cert_path.write_bytes(_pem(_expired(other)))
    key_path.write_bytes(_key_pem(other))
    try:
        tls.reload()
    except CertError:
        pass  # refused: the right answer
    assert _served_certificate(tls.context).serial_number == valid.serial_number
