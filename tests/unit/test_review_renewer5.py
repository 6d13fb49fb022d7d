"""Review of the renewer's held state and the mirror's certificate reload: a renewer holding
on refused ``[scheduler]`` settings that needed a restart once they were mended, a refusal
without ``certs.domain`` that showed only in the log, a pair not valid yet that the mirror's
own reload served at once, and root's leftovers in ``certs.config_dir`` told only as
"Permission denied".

Nothing here listens: no address, no port (this review's range was 127.0.44.1-9:10350-10399).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from docxy.cli.owner import Owner
from docxy.config import load_config
from docxy.http.health import health_report
from docxy.tls import context
from docxy.tls.context import ReloadableTLS
from lab.certs import issue
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_review_renewer import DOMAIN, stop
from tests.unit.test_review_rootcerts import OWNER, Appliance, _older_root_run
from tests.unit.test_review_rootcerts import appliance as appliance  # noqa: F401  (fixture)
from tests.unit.test_scheduler import HANG, fake_certbot_on_path, issued_lineage, poll
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)

# --- 1. a held renewer takes up its mended settings ---------------------------------------------


def _config(path: Path, interval: str) -> Path:
    path.write_text(f'[scheduler]\ninterval = "{interval}"\n')
    return path


def _refused(status_file: Path) -> object:
    if not status_file.exists():
        return None
    return json.loads(status_file.read_text()).get("refused")


def test_a_held_renewer_resumes_on_sighup_once_its_settings_are_mended(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """A bad ``scheduler.interval``: the renewer held (status ``refused``, /health degraded).
    Mended, it went on holding until restarted (and a SIGHUP, supervisorctl's ``signal HUP``,
    killed it). Now SIGHUP makes it read its settings again: the refusal is dropped and its
    first run made, without a restart."""
    config_dir = Path(env["DOCXY_CERTS_CONFIG_DIR"])
    issued_lineage(config_dir / "live" / DOMAIN)
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    config = _config(tmp_path / "docxy.toml", "soon")
    status_file = config_dir / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "--config", str(config)],
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def held() -> bool:
            assert proc.poll() is None, "the renewer exited"
            return bool(_refused(status_file))

        poll(held)
        _config(config, "1h")
        proc.send_signal(signal.SIGHUP)

        def resumed() -> bool:
            assert proc.poll() is None, "the renewer exited"
            return calls.exists() and _refused(status_file) is None

        poll(resumed)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "mended" in out, out


@pytest.fixture
def terminate_after() -> Iterator[None]:
    """Bounds a hold in this process: SIGTERM to it (the hold's own stop) after HANG s."""
    done = threading.Event()

    def later() -> None:
        if not done.wait(HANG):
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    yield
    done.set()
    thread.join()


@pytest.mark.usefixtures("terminate_after")
def test_a_held_renewer_reads_its_settings_again_on_its_own(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a signal too: every HOLD_RECHECK seconds (a minute; here a tenth of a second).
    It hands back the mended settings, the signals as before."""
    monkeypatch.setattr(scheduler_main, "HOLD_RECHECK", 0.1)
    config = _config(tmp_path / "docxy.toml", "soon")
    flags = ["--config", str(config)]
    held = settings_mod.held(flags)
    assert held is not None and held.halted is not None
    status_file = held.status_file

    def mend() -> None:
        poll(lambda: _refused(status_file))
        _config(config, "2h")

    mender = threading.Thread(target=mend, daemon=True)
    mender.start()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    resumed = scheduler_main.hold(held, flags)
    mender.join(timeout=HANG)
    assert isinstance(resumed, settings_mod.Settings), resumed
    assert resumed.interval == 7200 and resumed.halted is None
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask  # SIGTERM reaches it again


# --- 2. a refusal without certs.domain -----------------------------------------------------------


def test_a_refusal_without_a_domain_shows_on_health_and_goes_once_mended(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """No ``certs.domain``: the renewer held and wrote ``refused``, but the mirror reads the
    status file only with a domain, so /health said ``ok`` and the refusal was in the log
    alone. Now /health is degraded with it, as with a domain, and says nothing of the
    renewer otherwise (no status file, no domain: nothing to report)."""
    from docxy.http.server import renewal_provider

    config_dir = Path(env["DOCXY_CERTS_CONFIG_DIR"])
    config = load_config({"certs.config_dir": str(config_dir)}, environ={})
    assert config.certs.domain is None
    provider = renewal_provider(config)
    assert provider is not None
    state = make_state(tmp_path / "cache")
    state.extras["health"] = {"renewal": provider}
    assert "renewal" not in health_report(state)  # nothing written: nothing said
    config_dir.mkdir(parents=True)
    # written without a domain (test_review_renewer6: one written with a domain is not shown)
    status = {"failures": 0, "next_run": None, "refused": "scheduler.interval: bad", "domain": None}
    (config_dir / "status.json").write_text(json.dumps(status))
    report = health_report(state)
    assert report["status"] == "degraded", report
    assert "scheduler.interval" in str(report["renewal"]), report


def test_a_renewer_without_a_domain_drops_a_refusal_once_mended(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """The settings mended, the renewer (no domain: it idles) restarted: the ``refused`` the
    held one wrote stayed in the status file, and /health (above) would stay degraded."""
    proc_env = fake_certbot_on_path(tmp_path, "exit 1\n")
    del proc_env["DOCXY_CERTS_DOMAIN"]
    status_file = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    status_file.parent.mkdir(parents=True)
    status_file.write_text(json.dumps({"failures": 0, "refused": "scheduler.interval: bad"}))
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler"], env=proc_env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        poll(lambda: "certbot is not run" in log.read_text())
        assert _refused(status_file) is None, status_file.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- 3. the mirror's reload and a pair not valid yet ---------------------------------------------


def _ca_pair(directory: Path, valid_from: dt.datetime | None = None) -> tuple[Path, Path]:
    """A CA's certificate for DOMAIN (with its chain) and key, as the renewer installs them."""
    ca = issue("Docxy Review5 CA", ca=True, days=30)
    leaf = issue(DOMAIN, ca, names=[x509.DNSName(DOMAIN)], valid_from=valid_from)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    cert.write_bytes(leaf.cert_pem + ca.cert_pem)
    key.write_bytes(leaf.key_pem)
    return cert, key


def test_the_mirror_waits_for_a_pair_not_valid_yet_then_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pair put in place by hand whose notBefore is three hours ahead: the mirror served it at
    once, and clients (whose clocks agree with this host's) refused it. Now the valid one
    stays served, /health says the new one waits (and until when), and the first look after
    its notBefore serves it."""
    served = tmp_path / "served"
    cert, key = _ca_pair(served)
    tls = ReloadableTLS(cert, key, domain=DOMAIN)
    old = tls.status()["serial"]
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    new = tmp_path / "new"
    _ca_pair(new, valid_from=ahead)
    os.replace(new / "privkey.pem", key)
    os.replace(new / "fullchain.pem", cert)
    with caplog.at_level(logging.WARNING):
        assert tls.reload() is False
    status = tls.status()
    assert status["serial"] == old, status
    waiting = status["waiting"]
    assert isinstance(waiting, dict) and waiting["serial"] != old, status
    assert str(waiting["not_before"]).startswith(ahead.strftime("%Y-%m-%dT%H:%M")), status
    assert status["last_error"] is None, status  # nothing wrong with the pair: it waits
    assert "not valid before" in caplog.text, caplog.text
    from docxy.observe import status as status_page

    shown = status_page._certificate(status, None)
    assert "next certificate" in shown and str(waiting["serial"]) in shown, shown
    tls._watch_once()  # a look before its time: still the old one
    assert tls.status()["serial"] == old
    later = ahead + dt.timedelta(minutes=1)
    monkeypatch.setattr(context, "_utcnow", lambda: later)
    tls._watch_once()
    status = tls.status()
    assert status["serial"] == waiting["serial"], status
    assert status["waiting"] is None, status


# --- 4. root's leftovers in certs.config_dir -----------------------------------------------------


def test_roots_leftovers_are_named_with_the_fix(
    appliance: Appliance,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An older root run left certbot's directory root's: the renewer's runs (as the
    directory's owner) failed saying "Permission denied", no more. Now the run's error names
    a file of root's and how to hand them back."""
    _older_root_run(appliance)
    renewer = Renewer(settings_mod.load([]))
    with caplog.at_level(logging.WARNING), Owner(OWNER, OWNER, appliance.config_dir).acting():
        assert renewer.run() is False
        renewer.write_status(None)
    error = str(renewer.last_error)
    assert "Permission denied" in error, error
    assert str(appliance.config_dir) in error.split("Permission denied", 1)[1], error
    assert "docxy certs renew" in error and "chown" in error, error
    assert "uid 0" in error, error
    # the status file is root's directory's too: the log says it, and the fix
    written = [r.getMessage() for r in caplog.records if "renewer status" in r.getMessage()]
    assert written and "docxy certs renew" in written[-1], written
