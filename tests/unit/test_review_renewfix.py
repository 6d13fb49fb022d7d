"""Review of today's renewer fixes: a status file from the future (the clock stepped back) taken
up after every run, a CA's certificate not valid yet by a clock that is behind kept out in
favour of the self-signed bootstrap pair no client trusts, and a renewer whose mended settings
left the old ``refused`` in its status file until its first run ended.

Nothing here listens: no address, no port (this review's range was 127.0.0.230-233:9800-9849).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from cryptography import x509

from docxy.tls import certs
from docxy.tls.context import CertError, self_signed
from lab.certs import Issued, issue
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer
from tests.unit.test_review_renewer import DOMAIN
from tests.unit.test_scheduler import FakeCertbot, issued_lineage
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)
from tests.unit.test_scheduler import fake_certbot as fake_certbot  # noqa: F401  (fixture)


def write_status(path: Path, **fields: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


def status_of(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


# --- 1. a status file from the future -----------------------------------------------------------

#: A status file the renewer wrote before NTP stepped the clock back by a day.
AHEAD = dt.timedelta(days=1)


def _future_status(path: Path, failures: int) -> None:
    then = (dt.datetime.now(dt.UTC) + AHEAD).isoformat()
    write_status(
        path,
        last_run=then,
        last_success=None if failures else then,
        last_error="certbot renew failed: the old failure" if failures else None,
        failures=failures,
        failing_since=then if failures else None,
        next_run=None,
    )


@pytest.mark.parametrize(
    ("before", "fail_now"),
    [(3, False), (0, True)],
    ids=["success-not-reported-as-the-old-failure", "failure-not-reported-as-the-old-success"],
)
def test_a_status_file_from_the_future_is_not_taken_up_after_the_run(
    fake_certbot: FakeCertbot,  # noqa: F811
    before: int,
    fail_now: bool,
) -> None:
    """The renewer restarted after the clock stepped back: its status file's last_run is a day
    ahead. Its run's catch_up took that file for a newer run made beside it and restored it:
    a success reported as the old failures (and backed off), a failure as the old success
    (and no retry), until real time passed the file's last_run."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    _future_status(settings.status_file, before)
    renewer = Renewer(settings)
    renewer.restore()
    scheduler = scheduler_main.build(renewer)  # not started: its job is called here
    fake_certbot.fail_next = 1 if fail_now else 0
    started = dt.datetime.now(dt.UTC)
    scheduler.get_job(scheduler_main.RENEW_JOB).func()
    status = status_of(settings.status_file)
    last_run = dt.datetime.fromisoformat(str(status["last_run"]))
    assert started <= last_run <= dt.datetime.now(dt.UTC), status  # this run's, not the file's
    if fail_now:
        assert status["failures"] == 1 and "nap" in str(status["last_error"]), status
        assert renewer.failures == 1  # its retry's backoff counts from this one
    else:
        assert status["failures"] == 0 and status["last_error"] is None, status
        assert status["last_success"] == status["last_run"], status
        assert renewer.failures == 0  # no backoff


def test_a_one_off_run_does_not_take_up_a_status_file_from_the_future(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """``--once`` after the clock stepped back: it exits 1 for its own failure, but its
    status file said the old success (no failure, /health ok)."""
    issued_lineage(fake_certbot.live)
    status_file = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    _future_status(status_file, 0)
    fake_certbot.fail_next = 1
    assert scheduler_main.main(["--once"]) == 1
    status = status_of(status_file)
    assert status["failures"] == 1 and "nap" in str(status["last_error"]), status


def test_a_run_made_beside_this_one_is_still_taken_up(
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """What da037e0 is for stands: a file whose last run began after this run's, and not in
    the future, is another run's newer outcome."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    renewer = Renewer(settings)
    renewer.last_run = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    beside = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    write_status(settings.status_file, last_run=beside.isoformat(), last_success=beside.isoformat())
    assert renewer.catch_up() is True
    assert renewer.last_run == beside


# --- 2. a CA's certificate not valid yet over the bootstrap pair --------------------------------


def ca_issued_lineage(live: Path, valid_from: dt.datetime | None = None) -> None:
    """certbot's lineage of a certificate a CA issued (not self-signed), its chain with it."""
    ca = issue("Docxy Review CA", ca=True, days=30)
    leaf: Issued = issue(DOMAIN, ca, names=[x509.DNSName(DOMAIN)], valid_from=valid_from)
    live.mkdir(parents=True, exist_ok=True)
    (live / "fullchain.pem").write_bytes(leaf.cert_pem + ca.cert_pem)
    (live / "privkey.pem").write_bytes(leaf.key_pem)


def _ahead(hours: float = 3) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)


def test_a_ca_certificate_not_valid_yet_replaces_the_bootstrap_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first issuance while this host's clock is behind by more than the CA's backdating:
    the CA's certificate was refused, and clients (whose clocks are right) kept getting the
    self-signed bootstrap pair, which none trusts. Installed now, with a warning."""
    served_cert, served_key = self_signed(tmp_path / "served", DOMAIN)  # the bootstrap pair
    live = tmp_path / "live" / DOMAIN
    ca_issued_lineage(live, valid_from=_ahead())
    with caplog.at_level(logging.WARNING):
        assert certs.install(live, served_cert, served_key) is True
    assert served_cert.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert served_key.read_bytes() == (live / "privkey.pem").read_bytes()
    assert "clock" in caplog.text and "behind" in caplog.text, caplog.text


def test_the_renewer_installs_a_ca_certificate_not_valid_yet_over_the_bootstrap_pair(
    tmp_path: Path,
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed(tmp_path / "tls", DOMAIN)  # what the mirror serves at first
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))

    def obtain(*args: object, **kwargs: object) -> Path:
        ca_issued_lineage(fake_certbot.live, valid_from=_ahead())
        return fake_certbot.live

    monkeypatch.setattr(certs, "obtain", obtain)
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is True, renewer.last_error
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()


def test_a_ca_certificate_not_valid_yet_is_still_kept_out_over_a_valid_ca_one(
    tmp_path: Path,
) -> None:
    """4a5ff01's case stands (a guard, not a fault): a valid CA-issued pair served is kept."""
    served = tmp_path / "served"
    ca_issued_lineage(served)
    served_cert, served_key = served / "fullchain.pem", served / "privkey.pem"
    before = served_cert.read_bytes(), served_key.read_bytes()
    live = tmp_path / "live" / DOMAIN
    ca_issued_lineage(live, valid_from=_ahead())
    with pytest.raises(CertError, match="not valid before"):
        certs.install(live, served_cert, served_key)
    assert (served_cert.read_bytes(), served_key.read_bytes()) == before


# --- 3. the refusal left in the status file after the settings were mended ----------------------


def test_a_renewer_started_with_mended_settings_drops_the_refusal_at_once(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """The settings mended and the renewer restarted: the old ``refused`` stayed in the status
    file (and /health degraded) until the first run ended, minutes later with the wait for
    the mirror and certbot. Now the status is written at start, before any run; what the file
    said of the runs before (and a one-off run's interruption) stays."""
    path = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    then = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    interrupted = {"at": then, "signal": "SIGTERM"}
    write_status(
        path,
        last_run=then,
        last_success=then,
        failures=0,
        refused="scheduler.interval: bad",
        interrupted=interrupted,
    )
    issued_lineage(fake_certbot.live)
    running = Renewer(settings_mod.load(["--interval", "3600"]))
    running.restore()
    scheduler_main.build(running)  # started, not run yet
    assert fake_certbot.calls == []
    status = status_of(path)
    assert "refused" not in status, status
    assert status["last_run"] == then and status["failures"] == 0, status
    assert status["interrupted"] == interrupted, status
    assert status["next_run"] is not None, status


def test_a_ca_certificate_not_valid_yet_replaces_a_staging_one(tmp_path: Path) -> None:
    """A staging CA's certificate is trusted by no client either (the bootstrap's case)."""
    staging_ca = issue("(STAGING) Review Ersatz CA", ca=True, days=30)
    leaf = issue(DOMAIN, staging_ca, names=[x509.DNSName(DOMAIN)])
    served_cert, served_key = tmp_path / "served" / "cert.pem", tmp_path / "served" / "key.pem"
    leaf.write(served_cert, served_key)
    live = tmp_path / "live" / DOMAIN
    ca_issued_lineage(live, valid_from=_ahead())
    assert certs.install(live, served_cert, served_key) is True
    assert served_cert.read_bytes() == (live / "fullchain.pem").read_bytes()
