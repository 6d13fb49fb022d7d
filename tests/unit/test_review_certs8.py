"""Review of the served bootstrap pair's renewal (test_review_certs7): a self-signed pair made
by hand with ``openssl req -x509`` (30 days by default, ``CN`` its one name) was taken for the
mirror's own and written over at start, the operator's key lost; a start with an issued pair
there took the directory's lock (a directory it may not read refused the start); and the hourly
renewal said it made a new certificate when the files held an issued one and it wrote none."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.http.server import load_tls
from docxy.tls import files
from lab.certs import Issued
from tests.unit.test_review_certs7 import _config, _files, _install_issued, _served, _tls

NAME = "a.mirror.test"


def _openssl_like(tmp: Path, days: int) -> None:
    """What ``openssl req -x509 -newkey ec -subj /CN=NAME -addext subjectAltName=DNS:NAME``
    writes: a self-signed EC pair whose subject is ``CN=NAME``, with key identifiers and
    ``basicConstraints = critical, CA:TRUE`` (openssl.cnf's ``v3_ca``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    Issued(key, cert).write(*_served(tmp))


@pytest.mark.parametrize("days", [30, 90])
def test_a_pair_made_by_hand_with_openssl_is_never_written_over(tmp_path: Path, days: int) -> None:
    _openssl_like(tmp_path, days)
    before = _files(tmp_path)
    tls = _tls(tmp_path, NAME)
    assert _files(tmp_path) == before  # not at start, with 30 days or less left
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=days - 1)
    assert tls.renew_own_if_due(late) is False  # nor while it runs
    assert _files(tmp_path) == before


def test_a_start_with_an_issued_pair_takes_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving an issued pair needs its files readable, not its directory: the lock (which
    opens the directory) is only for a pair the mirror may write."""
    _install_issued(tmp_path, NAME)

    def unreadable(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path.parent))

    monkeypatch.setattr(files, "directory_lock", unreadable)
    tls = load_tls(_config(tmp_path, NAME))
    assert tls is not None and tls.status()["served"] == "ca-issued"


def test_the_renewal_says_nothing_made_when_an_issued_pair_came_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = _tls(tmp_path, NAME)  # the bootstrap pair, served
    _install_issued(tmp_path, NAME)  # the renewer's first install, not loaded yet
    caplog.set_level(logging.INFO)
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=61)
    assert tls.renew_own_if_due(late) is False
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("made a new one" in m or "making a new one" in m for m in said), said
