"""Review s46 (tls): an expired served certificate, as /health and the log tell it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from docxy.http.health import health_report
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_tls_expiry import served_pair


def test_an_expired_certificate_is_one_clients_refuse(tmp_path: Path) -> None:
    """README (Health): `tls.clients_refuse` is "true while clients refuse the certificate
    served, for its names, issuer or dates", and "with or without a domain" a certificate out
    of its dates has `tls.warning` say which date. An expired one (renewals failed for 30
    days, a restored backup) is refused by every client (x509: certificate has expired), but
    the public /health said `clients_refuse: false` and /status.json `warning: null`."""
    state = make_state(tmp_path)
    tls = served_pair(tmp_path, issued_days_ago=91, days_left=-1)
    state.extras["health"] = {"tls": tls.status}
    shown = health_report(state)["tls"]
    assert isinstance(shown, dict)
    assert shown["clients_refuse"] is True, shown
    assert tls.status()["warning"], tls.status()


def test_an_expired_certificate_is_not_logged_as_expiring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The mirror started with (or still serving) an expired certificate logged
    "expires in -10.0 days, at <a past time>": it has expired, and the log should say so."""
    with caplog.at_level(logging.WARNING, logger="docxy.tls.context"):
        served_pair(tmp_path, issued_days_ago=100, days_left=-10)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "expires in -" not in said, said
    assert "expired" in said, said
