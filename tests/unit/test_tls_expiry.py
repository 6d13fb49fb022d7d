"""What an operator sees when the served certificate nears its end and renewals keep failing:
``/health`` degraded, the public-facing ``status`` a monitor checks, and a warning in the log."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.http.health import health_report
from docxy.tls.context import ReloadableTLS
from docxy.tls.files import write_pair
from tests.unit.test_observe_metrics import make_state


def served_pair(tmp_path: Path, *, issued_days_ago: float, days_left: float) -> ReloadableTLS:
    """A served pair issued `issued_days_ago`, ending in `days_left`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=issued_days_ago))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    write_pair(cert_path, key_path, cert.public_bytes(serialization.Encoding.PEM), key_pem)
    return ReloadableTLS(cert_path, key_path)


def test_a_certificate_days_from_its_end_degrades_health(tmp_path: Path) -> None:
    """A 90-day certificate with 5 days left: certbot renews at 30, so renewals have failed
    for 25 days. /health said `ok` until the day it expired, a monitor of `status` saw nothing."""
    state = make_state(tmp_path)
    tls = served_pair(tmp_path, issued_days_ago=85, days_left=5)
    state.extras["health"] = {"tls": tls.status}
    report = health_report(state)
    assert report["status"] == "degraded", report
    shown = report["tls"]
    assert isinstance(shown, dict) and shown["expires_soon"] is True


def test_an_expired_certificate_degrades_health(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    tls = served_pair(tmp_path, issued_days_ago=91, days_left=-1)
    state.extras["health"] = {"tls": tls.status}
    assert health_report(state)["status"] == "degraded"


@pytest.mark.parametrize(
    ("issued_days_ago", "days_left"),
    [(60, 30), (1, 89), (5, 1.5)],  # due for renewal, fresh, a short-lived one mid-life
)
def test_a_certificate_with_time_left_keeps_health_ok(
    tmp_path: Path, issued_days_ago: float, days_left: float
) -> None:
    state = make_state(tmp_path)
    tls = served_pair(tmp_path, issued_days_ago=issued_days_ago, days_left=days_left)
    state.extras["health"] = {"tls": tls.status}
    report = health_report(state)
    assert report["status"] == "ok", report
    shown = report["tls"]
    assert isinstance(shown, dict) and shown["expires_soon"] is False


def test_the_mirror_warns_of_a_certificate_near_its_end_once_a_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = served_pair(tmp_path, issued_days_ago=85, days_left=5)
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    now = dt.datetime.now(dt.UTC)
    tls.warn_if_expiring(now)
    tls.warn_if_expiring(now + dt.timedelta(hours=1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "expires in 5.0 days" in warnings[0] and str(tls.cert_path) in warnings[0]
    tls.warn_if_expiring(now + dt.timedelta(hours=24))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_a_clock_set_back_does_not_silence_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A host whose clock ran a month ahead (warned then, by that clock) and was set right:
    the once-a-day quiet time was counted from the warning's future time, so the real days
    before the end passed without a warning."""
    tls = served_pair(tmp_path, issued_days_ago=85, days_left=5)  # warns once at start
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    caplog.clear()
    now = dt.datetime.now(dt.UTC)
    tls.warn_if_expiring(now + dt.timedelta(days=30))  # the clock a month ahead
    tls.warn_if_expiring(now)  # set right
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "expires in 5.0 days" in warnings[-1], warnings
