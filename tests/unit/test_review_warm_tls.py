"""Review of ``docxy warm`` over HTTPS (f967ec4): the hints of its TLS failures, real
handshakes on 127.0.0.9x with the mirror's own listener context, as in ``test_warm_tls``."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.tls.context import ReloadableTLS
from lab.certs import issue
from tests.unit.test_warm_tls import _ip_name, _served, _write, serving, warm

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


# --- an untrusted certificate: --ca-file is the hint only where a CA is what is missing -----


def test_a_certificate_for_another_name_is_not_a_ca_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its CA given and trusted, the certificate is for another address: warm says so and does
    not send the user to --ca-file, which they gave (before: "--ca-file PEM adds the CA")."""
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name("127.0.0.90"))
    ca_file = _write(tmp_path / "ca.pem", root.cert_pem)
    with serving("127.0.0.91", _served(tmp_path, leaf)) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", ca_file)
    assert code == 1 and server.paths == []
    assert "IP address mismatch" in err, err
    assert "--ca-file" not in err, err
    assert "not for 127.0.0.91" in err and "--mirror" in err, err


def test_an_expired_certificate_is_not_a_ca_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate of the trusted CA that has expired: the mirror's certificate is to be
    renewed (or this machine's clock is wrong); --ca-file cannot help."""
    host = "127.0.0.92"
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name(host), days=-0.001)  # ended 86 s ago
    ca_file = _write(tmp_path / "ca.pem", root.cert_pem)
    with serving(host, _served(tmp_path, leaf)) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", ca_file)
    assert code == 1 and server.paths == []
    assert "certificate has expired" in err, err
    assert "--ca-file" not in err, err
    assert "renew" in err and "clock" in err, err


def test_a_certificate_of_an_unknown_issuer_still_names_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case --ca-file is for keeps its hint: the mirror's self-signed certificate."""
    from docxy.tls.context import self_signed

    host = "127.0.0.93"
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    with serving(host, ReloadableTLS(cert, key).context) as (url, _):
        code, _, err = warm(capsys, url)
    assert code == 1
    assert "does not trust" in err and "--ca-file PEM adds the CA" in err, err
