"""Review of the renewer and ``docxy certs status`` (review certs4):

1. ``docxy certs status`` without TLS stopped at "no TLS" before the renewer's recorded refusal;
2. a SIGHUP during the renewer's imports (before main() installs its handler) killed it;
3. the old pair's "expires soon" warning said "has not been renewed" while a renewed pair
   waited for its notBefore (``tls.waiting``);
4. a ``certs.config_dir`` itself root's (not the service user's): the hint (path, owner, chown)
   reached the renewer's log only, not the status, ``docxy certs status`` or /status.json.

Nothing here listens: no address, no port (this review's range: 127.0.69.1-9:11600-11649).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docxy.cli.exits import EXIT_CONFIG
from docxy.cli.owner import Owner
from docxy.tls import certs
from docxy.tls.context import ReloadableTLS
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer
from tests.unit.test_certs import clean_env as clean_env  # noqa: F401  (fixture)
from tests.unit.test_certs import run_cli
from tests.unit.test_review_renewer import DOMAIN
from tests.unit.test_review_renewer5 import _ca_pair
from tests.unit.test_review_rootcerts import OWNER, Appliance
from tests.unit.test_review_rootcerts import appliance as appliance  # noqa: F401  (fixture)
from tests.unit.test_scheduler import HANG, REPO_ROOT, poll

REFUSAL = "scheduler.interval: not a duration"

# --- 1. `docxy certs status` without TLS and a recorded refusal ---------------------------------


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("domain", [None, DOMAIN])
def test_status_without_tls_still_says_the_renewers_refusal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    domain: str | None,
) -> None:
    """No tls.cert_path/key_path, and the renewer holds on refused settings (its status file
    says why): `docxy certs status` said "no certificate is managed here" and nothing of the
    refusal, which is why there is no TLS."""
    config_dir = tmp_path / "le"
    config_dir.mkdir()
    status = {"refused": REFUSAL, "domain": domain, "failures": 0}
    (config_dir / certs.STATUS_FILE).write_text(json.dumps(status))
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(config_dir))
    if domain is not None:
        monkeypatch.setenv("DOCXY_CERTS_DOMAIN", domain)
    assert run_cli(["certs", "status"]) == EXIT_CONFIG  # as before: TLS is not configured
    said = capsys.readouterr().err
    assert "no certificate is managed" in said, said
    assert REFUSAL in said, said


@pytest.mark.usefixtures("clean_env")
def test_status_without_tls_and_no_refusal_says_no_tls_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = tmp_path / "le"
    config_dir.mkdir()
    (config_dir / certs.STATUS_FILE).write_text(json.dumps({"domain": None, "failures": 0}))
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(config_dir))
    assert run_cli(["certs", "status"]) == EXIT_CONFIG
    said = capsys.readouterr().err
    assert "no certificate is managed" in said and "refuses" not in said, said


# --- 2. a SIGHUP during the renewer's imports ---------------------------------------------------

#: Put first on the renewer's PYTHONPATH: when the entry module imports ``scheduler.main`` (the
#: heavy imports: APScheduler, docxy's settings), the process sends itself SIGHUP and notes it
#: in a file, so that the test's own SIGHUPs start then too. It changes nothing else.
SITECUSTOMIZE = """
import os, signal, sys

class _SighupOnImport:
    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "scheduler.main" and not self.done:
            self.done = True
            with open(os.environ["CERTS4_MARK"], "w") as mark:
                mark.write("importing")
            os.kill(os.getpid(), signal.SIGHUP)
        return None

sys.meta_path.insert(0, _SighupOnImport())
"""


def test_a_sighup_during_the_renewers_imports_does_not_end_it(tmp_path: Path) -> None:
    """supervisord (or the entrypoint) may send the renewer SIGHUP while it starts; its handler
    came only with main(), after the imports, and SIGHUP's default ended it there. Each of a
    few renewers (without a domain: certbot is never run, nothing is contacted) gets SIGHUP
    from itself at its heavy import and a burst from here; each must live on, say it is idle,
    and stop cleanly on SIGTERM."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config_dir = tmp_path / "le"
    config_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env.update(
        PYTHONPATH=f"{hook}{os.pathsep}{REPO_ROOT}",
        DOCXY_CERTS_CONFIG_DIR=str(config_dir),
    )
    for attempt in range(3):
        mark, out = tmp_path / f"mark{attempt}", tmp_path / f"out{attempt}"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler"],
                env={**env, "CERTS4_MARK": str(mark)},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            poll(lambda: mark.exists() or proc.poll() is not None)  # noqa: B023
            for _ in range(20):  # a burst during the imports (bounded)
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.005)
            # idle: it says so once its signals are blocked for sigwait (bounded wait)
            poll(lambda: "no certs.domain set" in out.read_text() or proc.poll() is not None)  # noqa: B023
            assert proc.poll() is None, f"the renewer ended: {proc.returncode}"
            assert not (config_dir / certs.STATUS_FILE).exists()  # no domain: nothing written
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=HANG) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=HANG)


# --- 3. "expires soon" while the renewed pair waits ---------------------------------------------


def test_expiring_soon_while_the_renewed_pair_waits_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The served pair expires soon, and its renewal is in place but not valid yet (its
    notBefore ahead: ``tls.waiting``). The mirror's daily warning said the certificate "has
    not been renewed", and the status page "has not been renewed: see the renewal": false,
    and sent the operator to a renewer that had succeeded."""
    served = tmp_path / "served"
    cert, key = _ca_pair(served)
    tls = ReloadableTLS(cert, key, domain=DOMAIN)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=47)
    new = tmp_path / "new"
    _ca_pair(new, valid_from=ahead)
    os.replace(new / "privkey.pem", key)
    os.replace(new / "fullchain.pem", cert)
    assert tls.reload() is False
    waiting = tls.status()["waiting"]
    assert isinstance(waiting, dict), tls.status()
    # the served one (lab's: 2 days) seen 46 h on, in its last hours, 1 h before the new one
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=46)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tls.warn_if_expiring(later)
    said = [r.getMessage() for r in caplog.records if "expires in" in r.getMessage()]
    assert said, caplog.text
    assert "has not been renewed" not in said[-1], said
    assert str(waiting["serial"]) in said[-1] and "not valid before" in said[-1], said
    from docxy.observe import status as status_page

    shown = status_page._certificate({**tls.status(), "expires_soon": True}, None)
    assert "not been renewed" not in shown, shown
    assert "waits" in shown, shown


def test_expiring_soon_without_a_waiting_pair_still_says_not_renewed(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cert, key = _ca_pair(tmp_path / "served")
    tls = ReloadableTLS(cert, key, domain=DOMAIN)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=46)
    with caplog.at_level(logging.WARNING):
        tls.warn_if_expiring(later)
    assert "has not been renewed" in caplog.text, caplog.text
    from docxy.observe import status as status_page

    shown = status_page._certificate({**tls.status(), "expires_soon": True}, None)
    assert "has not been renewed" in shown, shown


# --- 4. certs.config_dir itself root's ----------------------------------------------------------


def test_a_root_owned_config_dir_is_said_where_refusals_are(
    appliance: Appliance,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """certs.config_dir made by root (a root run before the directory existed) in the
    certs volume, which is the service user's: the renewer can neither run certbot there nor
    write its status file, so its hint (the path, the owner, the chown) went to its log alone;
    /status.json and `docxy certs status` showed an old status or none, and /health said ok.
    Now the readers of the status file say it as a refusal."""
    appliance.config_dir.mkdir()  # as root: root's, in the owner's certs/
    assert appliance.config_dir.stat().st_uid == 0
    assert appliance.config_dir.parent.stat().st_uid == OWNER
    renewer = Renewer(settings_mod.load([]))
    with caplog.at_level(logging.WARNING), Owner(OWNER, OWNER, appliance.config_dir).acting():
        assert renewer.run() is False
        renewer.write_status(None)
        status = certs.renewal_status(appliance.config_dir)  # as the mirror reads it
    logged = [r.getMessage() for r in caplog.records if "renewer status" in r.getMessage()]
    assert logged and "chown" in logged[-1], logged  # the log had it before
    said = str(status.get("config_dir_unwritable"))  # not `refused` (settings): review certs5
    assert str(appliance.config_dir) in said and "refused" not in status, status
    assert "uid 0" in said and f"chown -R {OWNER}:{OWNER}" in said, status
    assert "docxy certs renew" in said, status
    assert certs.public_renewal(status).get("config_dir_unwritable") is True  # /health: no path
    assert str(appliance.config_dir) not in json.dumps(certs.public_renewal(status))
    capsys.readouterr()
    # as the mirror's user (root, with no status saying whose renewer it is, says nothing:
    # review certs5); the pair is missing too
    with Owner(OWNER, OWNER, appliance.config_dir).acting():
        assert run_cli(["certs", "status"]) == 1
    err = capsys.readouterr().err
    assert f"chown -R {OWNER}:{OWNER}" in err, err


def test_a_config_dir_of_the_owner_is_not_refused(
    appliance: Appliance,  # noqa: F811
) -> None:
    appliance.config_dir.mkdir()
    os.chown(appliance.config_dir, OWNER, OWNER)
    (appliance.config_dir / certs.STATUS_FILE).write_text(json.dumps({"failures": 0}))
    assert "config_dir_unwritable" not in certs.renewal_status(appliance.config_dir)


def test_a_host_install_all_roots_is_not_refused(tmp_path: Path) -> None:
    """Root's config_dir in a directory of root's: a host install run as root, as before."""
    config_dir = tmp_path / "le"
    config_dir.mkdir()
    if os.stat(tmp_path).st_uid != 0 or config_dir.stat().st_uid != 0:
        pytest.skip("needs root's directories")
    (config_dir / certs.STATUS_FILE).write_text(json.dumps({"failures": 0}))
    assert "config_dir_unwritable" not in certs.renewal_status(config_dir)
