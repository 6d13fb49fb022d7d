"""docxy.tls.certs without an ACME server: certbot's reasons, atomic install, the CLI's errors.

The real certbot against a real ACME server (pebble) is in test_certs_e2e.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from docxy.cli.exits import EXIT_CONFIG
from docxy.cli.main import config_from_args, main
from docxy.core import stamps
from docxy.tls import certs
from docxy.tls.certs import CertbotError, certbot_reason, install, register_cli
from docxy.tls.context import CertError, self_signed
from lab.certs import issue

CA_REFUSED = """\
Requesting a certificate for other.test

Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority \
reported these problems:
  Domain: other.test
  Type:   unauthorized
  Detail: Non-200 status code from HTTP: http://other.test:18080/.well-known/acme-challenge/Ax \
returned 404

Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.
"""
CA_REFUSED_ERR = """\
Saving debug log to /tmp/pb/logs/letsencrypt.log
Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x.
"""
RENEW_ERR = """\
Saving debug log to /tmp/pb/logs/letsencrypt.log
Failed to renew certificate mirror.test with error: HTTPSConnectionPool(host='127.0.0.1', \
port=14111): Max retries exceeded with url: /dir (Caused by NewConnectionError('refused'))
All renewals failed. The following certificates could not be renewed:
  /tmp/pb/cfg/live/mirror.test/fullchain.pem (failure)
1 renew failure(s), 0 parse failure(s)
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x.
"""
UNEXPECTED_ERR = """\
Saving debug log to /tmp/x.log
An unexpected error occurred:
Error creating new order :: too many certificates already issued
Ask for help or search for solutions at https://community.letsencrypt.org.
"""
PLAIN_ERR = """\
/tmp/pb/elsewhere does not exist or is not a directory
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x.
"""


@pytest.mark.parametrize(
    ("stdout", "stderr", "expected"),
    [
        (CA_REFUSED, CA_REFUSED_ERR, "Domain: other.test Type:   unauthorized Detail: Non-200"),
        ("", RENEW_ERR, "HTTPSConnectionPool(host='127.0.0.1', port=14111): Max retries"),
        ("", UNEXPECTED_ERR, "Error creating new order :: too many certificates"),
        ("", PLAIN_ERR, "/tmp/pb/elsewhere does not exist or is not a directory"),
        ("", "Saving debug log to x\n", "certbot exited with status 1"),
    ],
)
def test_certbot_reason(stdout: str, stderr: str, expected: str) -> None:
    reason = certbot_reason(stdout, stderr, 1)
    assert reason.startswith(expected)
    assert "Ask for help" not in reason and "Saving debug log" not in reason


def test_certbot_reason_is_bounded() -> None:
    assert len(certbot_reason("", "x" * 5000, 1)) <= 600


def lineage(tmp_path: Path, name: str) -> Path:
    live = tmp_path / "live" / name
    self_signed(live, name, cert_name="fullchain.pem", key_name="privkey.pem")
    return live


def test_install_is_atomic_private_and_idempotent(tmp_path: Path) -> None:
    live = lineage(tmp_path, "a.test")
    cert, key = tmp_path / "served" / "cert.pem", tmp_path / "served" / "key.pem"
    assert install(live, cert, key) is True
    assert cert.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert key.read_bytes() == (live / "privkey.pem").read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    inode = cert.stat().st_ino
    assert install(live, cert, key) is False
    assert cert.stat().st_ino == inode
    # A new lineage replaces the files (new inodes: readers never see a half-written file).
    assert install(lineage(tmp_path, "b.test"), cert, key) is True
    assert cert.stat().st_ino != inode
    assert sorted(p.name for p in cert.parent.iterdir()) == ["cert.pem", "key.pem"]


def test_install_refuses_a_mismatched_lineage(tmp_path: Path) -> None:
    live = lineage(tmp_path, "a.test")
    other = lineage(tmp_path, "b.test")
    (live / "privkey.pem").write_bytes((other / "privkey.pem").read_bytes())
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(CertError, match="does not match"):
        install(live, cert, key)
    assert not cert.exists() and not key.exists()


def test_install_names_a_missing_lineage(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="nowhere.*unreadable"):
        install(tmp_path / "nowhere", tmp_path / "c", tmp_path / "k")


def test_missing_certbot_is_a_certbot_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "CERTBOT", "/nonexistent/certbot")
    with pytest.raises(CertbotError, match="not installed"):
        certs.renew(config_dir=Path("/nonexistent"), ca_bundle=None)


def test_obtain_refuses_server_and_staging(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        certs.obtain(
            "a.test",
            "a@a.test",
            webroot=tmp_path,
            config_dir=tmp_path,
            acme_server="https://127.0.0.1:1/dir",
            ca_bundle=None,
            staging=True,
        )


@pytest.mark.parametrize("email", ["ops@a.test", None])
def test_obtain_registers_with_the_email_or_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, email: str | None
) -> None:
    seen: list[list[str]] = []

    def run_certbot(args: list[str], **_: object) -> str:
        seen.append(args)
        return ""

    monkeypatch.setattr(certs, "run_certbot", run_certbot)
    certs.obtain(
        "a.test", email, webroot=tmp_path, config_dir=tmp_path, acme_server=None,
        ca_bundle=None, staging=False,
    )  # fmt: skip
    (args,) = seen
    if email is None:
        assert "--register-unsafely-without-email" in args and "--email" not in args
    else:
        assert args[args.index("--email") + 1] == email
        assert "--register-unsafely-without-email" not in args


def run_cli(argv: list[str]) -> int:
    """As `docxy` runs a registered command: args.handler(args, config_from_args)."""
    parser = argparse.ArgumentParser(prog="docxy")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.handler(args, config_from_args)
    return code


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_cli_obtain_names_the_missing_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obtain = ["certs", "obtain", "--config-dir", str(tmp_path), "--email", "a@a.test"]
    assert run_cli(obtain) == EXIT_CONFIG  # as `docxy serve` exits on a config error
    assert "certs.domain: not set" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_cli_config_errors_exit_2_as_every_docxy_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad setting, and a pair of flags that cannot go together, are config errors (exit 2,
    docxy.cli.exits), not a failure to obtain (1); certbot is never run."""
    assert main(["certs", "status", "--set", "server.listen=nowhere"]) == EXIT_CONFIG
    assert "server.listen" in capsys.readouterr().err
    both = ["--domain", "mirror.test", "--webroot", str(tmp_path), "--config-dir", str(tmp_path)]
    staging = ["--staging", "--acme-server", "https://127.0.0.1:14000/dir"]
    assert main(["certs", "obtain", *both, *staging]) == EXIT_CONFIG
    assert "not both" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_cli_status_shows_the_installed_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "mirror.test")
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    assert run_cli(["certs", "status"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sans"] == ["mirror.test"]
    assert 89 < shown["days_left"] <= 90


@pytest.mark.usefixtures("clean_env")
def test_cli_status_says_whether_clients_take_the_pair_for_the_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With certs.domain, as /health: the bootstrap's self-signed pair is one clients refuse
    (shown, exit 0: the command worked), a CA's certificate for the domain is not."""
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")
    cert, key = self_signed(tmp_path, "mirror.test")
    assert run_cli(["certs", "status", "--cert", str(cert), "--key", str(key)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["served"], shown["domain"]) == ("self-signed", "mirror.test")
    assert "self-signed" in shown["warning"] and "mirror.test" in shown["warning"]
    root = issue("Test CA", ca=True)
    issued = issue("mirror.test", root, names=[x509.DNSName("mirror.test")])
    cert.write_bytes(issued.cert_pem + root.cert_pem)  # the full chain, as certbot's
    key.write_bytes(issued.key_pem)
    assert run_cli(["certs", "status", "--cert", str(cert), "--key", str(key)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["served"], shown["warning"]) == ("ca-issued", None)


@pytest.mark.usefixtures("clean_env")
def test_cli_status_reports_a_broken_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = self_signed(tmp_path / "a", "a.test")
    _, key = self_signed(tmp_path / "b", "b.test")
    assert run_cli(["certs", "status", "--cert", str(cert), "--key", str(key)]) == 1
    assert "does not match" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.usefixtures("clean_env")
def test_cli_status_without_tls_says_what_that_means_and_what_to_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(["certs", "status"]) == EXIT_CONFIG
    said = capsys.readouterr().err
    assert "no certificate is managed" in said and "plain HTTP" in said
    assert "DOCXY_DOMAIN" in said  # the appliance
    assert "DOCXY_TLS_CERT_PATH" in said and "DOCXY_TLS_KEY_PATH" in said  # elsewhere


def test_renewal_status_for_health(tmp_path: Path) -> None:
    assert "no renewer status" in str(certs.renewal_status(tmp_path)["error"])
    (tmp_path / certs.STATUS_FILE).write_text("[1]")
    assert "not a JSON object" in str(certs.renewal_status(tmp_path)["error"])
    (tmp_path / certs.STATUS_FILE).write_text('{"last_error": null, "failures": 0}')
    assert certs.renewal_status(tmp_path) == {"last_error": None, "failures": 0}


def test_renewal_status_tells_the_certificates_days_left_as_of_now(tmp_path: Path) -> None:
    """The renewer writes its status twice a day at most: the days left and the warning it
    wrote were those of its last run, and /health showed them for hours after."""
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(days=87), now + dt.timedelta(days=3)
    written = {
        "subject": "CN=mirror.example.com",
        "not_before": not_before.isoformat(),  # as a renewer of an older version wrote them
        "not_after": not_after.isoformat(),
        "days_left": 80.0,
        "expires_soon": False,
    }
    (tmp_path / certs.STATUS_FILE).write_text(json.dumps({"certificate": written}))
    certificate = certs.renewal_status(tmp_path)["certificate"]
    assert isinstance(certificate, dict)
    assert 2.9 < certificate["days_left"] <= 3.0
    assert certificate["expires_soon"] is True
    assert certificate["not_after"] == stamps.utc_stamp(not_after)
    assert certificate["subject"] == "CN=mirror.example.com"


@pytest.mark.parametrize("not_after", ["soon", "2026-12-01T10:14:00", None, 5])
def test_renewal_status_leaves_a_certificate_without_a_readable_end_as_written(
    tmp_path: Path, not_after: object
) -> None:
    written = {"not_after": not_after, "days_left": 80.0, "expires_soon": False}
    (tmp_path / certs.STATUS_FILE).write_text(json.dumps({"certificate": written}))
    assert certs.renewal_status(tmp_path)["certificate"] == written
