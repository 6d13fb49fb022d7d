"""docxy.tls.lineage without an ACME server: what certbot cannot renew is set aside and obtained
anew, by the renewer, ``docxy certs renew`` and ``docxy certs obtain``.

certbot is replaced where its words matter by a script saying what certbot 2.1 said against
pebble; the real certbot is in tests/e2e/test_renewal_faults_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509

from docxy.tls import certs, lineage
from scheduler import settings as settings_mod
from scheduler import worker
from scheduler.renewal import Renewer
from tests.unit.test_certs import run_cli
from tests.unit.test_scheduler import FakeCertbot, issued_lineage, read_status

#: certbot 2.1.0's stderr for ``renew --cert-name mirror.test`` with its renewal configuration
#: cut short (measured against pebble); it exits 1.
BROKEN_CONF_ERR = """\
Saving debug log to /le/logs/letsencrypt.log
Renewal configuration file /le/renewal/mirror.test.conf is broken.
The error was: renewal config file {'version': '2.1.0', 'archive_dir': '/le/archive/mirror.test', \
'cert': '/le/live/mirror.test/cert.pem'} is missing a required file reference
Skipping.
0 renew failure(s), 1 parse failure(s)
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x.
"""
#: A renewal that failed at the CA: certbot read the configuration well.
CA_DOWN_ERR = """\
Failed to renew certificate mirror.test with error: HTTPSConnectionPool(host='127.0.0.1'): refused
All renewals failed. The following certificates could not be renewed:
  /le/live/mirror.test/fullchain.pem (failure)
1 renew failure(s), 0 parse failure(s)
"""


def certbot_saying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    """``certbot`` (the real run_certbot's) is a script that says `stderr` and exits 1."""
    (tmp_path / "said").write_text(stderr)
    script = tmp_path / "certbot"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'said'} >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(certs, "CERTBOT", str(script))


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture
def le(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """certbot's directory of a renewer (and CLI) for mirror.test; no served paths."""
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")
    monkeypatch.setenv("DOCXY_CERTS_WEBROOT", str(tmp_path / "webroot"))
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(tmp_path / "le"))
    return tmp_path / "le"


@pytest.fixture
def obtain(le: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCertbot:
    """certbot's certonly, writing a new lineage; its renew stays the real one."""
    fake = FakeCertbot(le / "live" / "mirror.test")
    monkeypatch.setattr(certs, "obtain", fake.obtain)
    return fake


def test_two_fallbacks_in_one_second_keep_both_lineages(
    le: Path,
    obtain: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both went to ``orphaned/<the second>/``: the second move found the first's folder there
    and failed (the run with it), or would have mixed two lineages in one folder."""
    now = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(lineage, "_utcnow", lambda: now)
    issued_lineage(le / "live" / "mirror.test")
    renewer = Renewer(settings_mod.load([]))
    serials = []
    for _ in range(2):
        serials.append(serial_of(le / "live" / "mirror.test" / "fullchain.pem"))
        (le / "renewal" / "mirror.test.conf").unlink()
        assert renewer.run() is True, renewer.last_error
    folders = sorted((le / "orphaned").iterdir())
    assert [f.name for f in folders] == ["20261201T120000Z", "20261201T120000Z-2"]
    kept = [serial_of(f / "live" / "mirror.test" / "fullchain.pem") for f in folders]
    assert kept == serials
    assert stat.S_IMODE(folders[0].stat().st_mode) == 0o700  # an archive holds private keys
    assert obtain.calls == ["certonly", "certonly"]


def test_a_renewal_config_certbot_cannot_read_is_set_aside_and_obtained_anew(
    tmp_path: Path,
    le: Path,
    obtain: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """certbot skipped it ("1 parse failure(s)") at every run, and the certificate ran out."""
    issued_lineage(le / "live" / "mirror.test")
    conf = le / "renewal" / "mirror.test.conf"
    conf.write_text("version = 2.1.0\narchive_dir = /le/arch")  # cut short
    old = serial_of(le / "live" / "mirror.test" / "fullchain.pem")
    certbot_saying(tmp_path, monkeypatch, BROKEN_CONF_ERR)
    renewer = Renewer(settings_mod.load([]))
    with caplog.at_level(logging.WARNING):
        assert renewer.run() is True, renewer.last_error
    renewer.write_status(None)
    assert obtain.calls == ["certonly"]
    assert serial_of(le / "live" / "mirror.test" / "fullchain.pem") != old
    (aside,) = (le / "orphaned").iterdir()
    assert (aside / "renewal" / "mirror.test.conf").read_text().endswith("/le/arch")
    assert serial_of(aside / "live" / "mirror.test" / "fullchain.pem") == old
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name != "docxy.tls.context"  # the fake's lineage
    ]
    assert len(warnings) == 1, warnings
    assert f"{conf} is broken (certbot: renewal config file" in warnings[0]
    assert str(aside) in warnings[0]
    said = read_status(le / certs.STATUS_FILE)["set_aside"]
    assert isinstance(said, dict)
    assert said["moved_to"] == str(aside) and "missing a required file" in said["reason"]


def test_a_renewal_the_ca_refused_moves_nothing(
    tmp_path: Path, le: Path, obtain: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued_lineage(le / "live" / "mirror.test")
    certbot_saying(tmp_path, monkeypatch, CA_DOWN_ERR)
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is False
    assert "refused" in str(renewer.last_error)
    assert not (le / "orphaned").exists() and obtain.calls == []
    assert renewer.set_aside is None


def test_a_renewal_config_left_without_its_live_files_is_set_aside_first(
    le: Path, obtain: FakeCertbot
) -> None:
    """live/<domain> deleted, its renewal configuration left: certbot issued into a new lineage
    ``mirror.test-0001`` at every run (against pebble), and nothing installed it."""
    issued_lineage(le / "live" / "mirror.test")
    conf = (le / "renewal" / "mirror.test.conf").read_text()
    for path in (le / "live" / "mirror.test").iterdir():
        path.unlink()
    (le / "live" / "mirror.test").rmdir()
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is True, renewer.last_error
    (aside,) = (le / "orphaned").iterdir()
    assert (aside / "renewal" / "mirror.test.conf").read_text() == conf
    assert renewer.set_aside is not None and "remain" in str(renewer.set_aside["reason"])
    assert obtain.calls == ["certonly"]


def test_a_first_certificate_sets_nothing_aside(le: Path, obtain: FakeCertbot) -> None:
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is True, renewer.last_error
    assert not (le / "orphaned").exists() and renewer.set_aside is None


def test_cli_renew_obtains_anew_what_certbot_cannot_renew(
    le: Path, obtain: FakeCertbot, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It reported certbot's "No certificate found" and left the operator to find out why;
    the renewer, meanwhile, did the fallback."""
    issued_lineage(le / "live" / "mirror.test")
    old = serial_of(le / "live" / "mirror.test" / "fullchain.pem")
    (le / "renewal" / "mirror.test.conf").unlink()
    served = tmp_path / "served"
    cert, key = served / "cert.pem", served / "key.pem"
    assert run_cli(["certs", "renew", "--cert", str(cert), "--key", str(key)]) == 0
    out = capsys.readouterr().out
    (aside,) = (le / "orphaned").iterdir()
    assert f"set aside to {aside} and obtained anew" in out
    assert "renewal configuration" in out and "is missing" in out
    assert serial_of(cert) == serial_of(le / "live" / "mirror.test" / "fullchain.pem") != old
    assert obtain.calls == ["certonly"]


@pytest.mark.parametrize(
    ("flags", "expected", "code"),
    [
        (["--dry-run"], "run without --dry-run to move the lineage to", 1),
        # A setting to give, not a state of the lineage: exit 2 (docxy.cli.exits); it was 1.
        (["--webroot", ""], "config error: certs.webroot: not set (give --webroot", 2),
    ],
)
def test_cli_renew_says_what_to_do_and_moves_nothing(
    le: Path,
    obtain: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
    code: int,
) -> None:
    issued_lineage(le / "live" / "mirror.test")
    (le / "renewal" / "mirror.test.conf").unlink()
    monkeypatch.setattr(certs, "CERTBOT", "/nonexistent/certbot")  # never asked
    if flags[0] == "--webroot":
        monkeypatch.delenv("DOCXY_CERTS_WEBROOT")
        flags = []
    assert run_cli(["certs", "renew", *flags]) == code
    said = capsys.readouterr().err
    assert "renewal configuration" in said and "is missing" in said
    assert expected in said
    assert (le / "live" / "mirror.test" / "fullchain.pem").exists()
    assert not (le / "orphaned").exists() and obtain.calls == []


def test_the_renewer_without_a_webroot_fails_the_run_and_moves_nothing(
    le: Path, obtain: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run fails (retried, in /health) naming the setting; the renewer goes on."""
    issued_lineage(le / "live" / "mirror.test")
    (le / "renewal" / "mirror.test.conf").unlink()
    monkeypatch.delenv("DOCXY_CERTS_WEBROOT")
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is False
    assert str(renewer.last_error).startswith("certs.webroot: not set")
    assert not (le / "orphaned").exists() and obtain.calls == []


def test_the_worker_child_hands_what_it_set_aside_to_the_renewer(
    le: Path,
    obtain: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The waiting renewer writes the status file from the child's one JSON line."""
    issued_lineage(le / "live" / "mirror.test")
    (le / "renewal" / "mirror.test.conf").unlink()
    monkeypatch.setattr(sys, "stdin", io.StringIO("{}"))
    assert worker.main([]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    (aside,) = (le / "orphaned").iterdir()
    assert result["error"] is None and result["set_aside"]["moved_to"] == str(aside)


def leftover_renewal_config(le: Path) -> None:
    """An earlier lineage's renewal configuration and archive, its live/ gone."""
    issued_lineage(le / "live" / "mirror.test")
    (le / "archive" / "mirror.test").mkdir(parents=True)
    for path in (le / "live" / "mirror.test").iterdir():
        path.unlink()
    (le / "live" / "mirror.test").rmdir()


def test_cli_obtain_sets_what_an_earlier_lineage_left_aside_first(
    le: Path, obtain: FakeCertbot, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ran certbot certonly over them, which issued into mirror.test-0001 (against pebble:
    tests/e2e/test_renewal_faults_e2e.py), a lineage nothing installs."""
    leftover_renewal_config(le)
    assert run_cli(["certs", "obtain"]) == 0
    out = capsys.readouterr().out
    (aside,) = (le / "orphaned").iterdir()
    assert (aside / "renewal" / "mirror.test.conf").exists()
    assert (aside / "archive" / "mirror.test").is_dir()
    assert f"set aside to {aside} and obtained anew" in out and "remain" in out
    assert obtain.calls == ["certonly"]


def test_cli_obtain_dry_run_moves_nothing(
    le: Path, obtain: FakeCertbot, capsys: pytest.CaptureFixture[str]
) -> None:
    leftover_renewal_config(le)
    assert run_cli(["certs", "obtain", "--dry-run"]) == 1
    said = capsys.readouterr().err
    assert "remain" in said and "run without --dry-run to move them to" in said
    assert (le / "renewal" / "mirror.test.conf").exists()
    assert not (le / "orphaned").exists() and obtain.calls == []


def test_cli_obtain_renews_an_issued_lineage_and_issues_nothing_over_it(
    le: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a certificate issued, ``obtain`` renews that lineage (when due), as the renewer
    does: certbot certonly is not run over it."""
    issued_lineage(le / "live" / "mirror.test")
    fake = FakeCertbot(le / "live" / "mirror.test")
    monkeypatch.setattr(certs, "obtain", fake.obtain)
    monkeypatch.setattr(certs, "renew", fake.renew)
    assert run_cli(["certs", "obtain"]) == 0
    assert fake.calls == ["renew"]
    assert not (le / "orphaned").exists()
