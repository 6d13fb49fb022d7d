"""Faults in certificate renewal and TLS reloading found by review (docxy.tls, scheduler), each
shown by a test that failed on the code before its mend."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from docxy.tls import certs
from scheduler import renewal
from scheduler import settings as settings_mod
from scheduler.mirror_pid import StalePidfile, command_line, signal_mirror
from scheduler.renewal import Renewer
from scheduler.runs import Runs
from tests.unit.test_scheduler import issued_lineage, poll


@pytest.fixture
def renewer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The settings of a renewer for mirror.test (no other DOCXY_*); its certbot config dir."""
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    config_dir = tmp_path / "le"
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")
    monkeypatch.setenv("DOCXY_CERTS_WEBROOT", str(tmp_path / "webroot"))
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(config_dir))
    return config_dir


def certbot_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The arguments of each certbot run from now on (none runs; each succeeds)."""
    calls: list[list[str]] = []

    def run(args: list[str], **_: object) -> str:
        calls.append(args)
        return ""

    monkeypatch.setattr(certs, "run_certbot", run)
    return calls


def _hook(args: list[str]) -> str | None:
    return args[args.index("--deploy-hook") + 1] if "--deploy-hook" in args else None


def test_the_deploy_hook_runs_on_a_first_issuance(
    renewer_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``scheduler.deploy_hook`` ("an extra certbot --deploy-hook") went to `certbot renew`
    only: the first certificate, obtained by `certbot certonly`, ran no hook, so whatever the
    hook does (copy the pair elsewhere, tell another service) waited for the first renewal,
    60 days later."""
    calls = certbot_calls(monkeypatch)
    renewer = Renewer(settings_mod.load(["--deploy-hook", "/usr/local/bin/hook"]))
    renewer.run()
    assert [args[0] for args in calls] == ["certonly"]
    assert _hook(calls[0]) == "/usr/local/bin/hook"


def test_the_deploy_hook_runs_when_a_lineage_set_aside_is_obtained_anew(
    renewer_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lineage whose renewal configuration is gone is set aside and obtained anew in the
    same run: that issuance ran no hook either."""
    issued_lineage(renewer_env / "live" / "mirror.test")
    (renewer_env / "renewal" / "mirror.test.conf").unlink()
    calls = certbot_calls(monkeypatch)
    renewer = Renewer(settings_mod.load(["--deploy-hook", "/usr/local/bin/hook"]))
    renewer.run()
    assert [args[0] for args in calls] == ["certonly"]
    assert _hook(calls[0]) == "/usr/local/bin/hook"
    assert renewer.set_aside is not None


def test_a_reload_command_that_hangs_is_reported_without_its_arguments(
    renewer_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload command that did not end in time was reported in subprocess's words, which
    quote its whole command line: the password of ``supervisorctl -u docxy -p SECRET signal HUP
    docxy`` went to the log, the status file and ``renewal.last_error`` in /health."""
    monkeypatch.setattr(renewal, "RELOAD_TIMEOUT", 0.2)
    command = "sh -c 'exec sleep 30' sh -u docxy -p hunter2 signal HUP docxy"
    with pytest.raises(renewal.ReloadError) as failed:
        renewal.tell_mirror(settings_mod.load(["--reload-command", command]))
    assert "hunter2" not in str(failed.value)
    assert str(failed.value) == "reload command sh did not end within 0.2 s"


def test_a_stale_pidfile_is_reported_without_the_other_processs_arguments(tmp_path: Path) -> None:
    """A pidfile whose pid went to another process was reported with that process's command
    line (its first 80 characters): another user's password given on it (mysql -pSECRET) went
    to the renewer's log, the status file and /health's renewal.last_error."""
    other = subprocess.Popen(["/bin/sh", "-c", "sleep 30", "sh", "--password=hunter2"])
    try:
        # until its exec: before, /proc shows the forking interpreter's command line
        poll(lambda: command_line(other.pid)[:1] == ["/bin/sh"])
        pidfile = tmp_path / "docxy.pid"
        pidfile.write_text(f"{other.pid}\n")
        with pytest.raises(StalePidfile) as stale:
            signal_mirror(pidfile)
    finally:
        other.kill()
        other.wait(timeout=10)
    assert "hunter2" not in str(stale.value)
    assert f"pid {other.pid} is not the mirror (sh); not signalled" in str(stale.value)


def test_a_renewal_puts_the_token_in_the_webroot_the_mirror_serves_now(
    renewer_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """certbot renews through the webroot its renewal configuration names, the one the lineage
    was issued through. Once certs.webroot had moved (another volume, another path in a new
    container), the mirror served the new one and every renewal failed, the CA getting 404
    for its token (certbot 2.1 against pebble), until the certificate expired. The renewal is
    told certs.webroot, made first if it is not there (certbot refuses a missing one)."""
    issued_lineage(renewer_env / "live" / "mirror.test")
    calls = certbot_calls(monkeypatch)
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is True, renewer.last_error
    assert [args[0] for args in calls] == ["renew"]
    webroot = tmp_path / "webroot"
    assert calls[0][calls[0].index("--webroot-path") + 1] == str(webroot)
    assert (webroot / ".well-known" / "acme-challenge").is_dir()


def test_a_status_file_from_the_end_of_time_stops_no_renewer(renewer_env: Path) -> None:
    """A status file with failures whose last_run lies within a backoff of the last time a
    datetime holds (a clock set far ahead, a hand edit) raised OverflowError in first_run:
    the renewer died at each start, and supervisord took the container down. It waits one
    backoff at most, as for any last_run in the future."""
    renewer_env.mkdir(parents=True)
    status = {"failures": 2, "last_run": "9999-12-31T23:59:00+00:00"}
    (renewer_env / "status.json").write_text(json.dumps(status))
    runs = Runs(settings_mod.load([]))
    runs.restore()
    now = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    assert runs.first_run(now) == now + dt.timedelta(seconds=600)  # backoff(2, 300, ...)


@pytest.mark.parametrize("last_run", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:00-05:00"])
def test_a_status_time_beyond_what_utc_holds_is_a_file_that_makes_no_sense(
    renewer_env: Path, last_run: str
) -> None:
    """A time whose offset puts it before year 1 or after 9999 in UTC raised OverflowError
    when restore logged it: the renewer died at each start. Such a file makes no sense: it is
    logged and the count starts afresh, as for any other."""
    renewer_env.mkdir(parents=True)
    status = {"failures": 2, "last_run": last_run}
    (renewer_env / "status.json").write_text(json.dumps(status))
    runs = Runs(settings_mod.load([]))
    runs.restore()
    assert (runs.failures, runs.last_run) == (0, None)
