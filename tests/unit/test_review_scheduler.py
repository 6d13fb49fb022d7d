"""Review of the certificate renewer (scheduler/): settings a renewer cannot work with."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import pytest

from docxy.core.errors import ConfigError
from docxy.tls import certs
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.runs import RunFailed, Runs
from scheduler.worker import InChild
from tests.unit.test_scheduler import FakeCertbot
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)


class Failing(Runs):
    """A renewer whose every run fails, as one whose CA is down."""

    def attempt(self) -> None:
        raise RunFailed("the CA is down")


#: 30 days: what a user might write for "no time limit" on certbot.
A_MONTH = str(30 * 24 * 3600)


@pytest.mark.usefixtures("env")
def test_a_certbot_timeout_no_run_can_wait_for_is_refused_not_the_end_of_renewals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A certbot_timeout of a month was taken, and each run then raised OverflowError out of
    subprocess ("timeout is too large": no wait that long fits epoll): not a failed run but an
    exception out of the job, so no failure counted, no retry scheduled, no status written,
    and every later run the same: renewals stopped for good with only a traceback in the log.
    Either the setting is refused naming it, or a run with it is a failure like any other."""
    monkeypatch.setenv("DOCXY_SCHEDULER_CERTBOT_TIMEOUT", A_MONTH)
    try:
        settings = settings_mod.load([])
    except ConfigError as exc:
        assert "scheduler.certbot_timeout" in str(exc)
        return
    # a worker that stops at once (an unknown flag): the run fails, quickly, with a reason
    renewer = InChild(settings, argv=["--no-such-flag"])
    assert renewer.run() is False
    assert renewer.failures == 1 and "without a result" in str(renewer.last_error)


@pytest.mark.usefixtures("env")
def test_the_longest_certbot_timeout_taken_still_leaves_a_run_that_fails_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound set on certbot_timeout leaves a run that can wait that long."""
    monkeypatch.setenv("DOCXY_SCHEDULER_CERTBOT_TIMEOUT", str(24 * 3600))
    renewer = InChild(settings_mod.load([]), argv=["--no-such-flag"])
    assert renewer.run() is False and renewer.failures == 1


@pytest.mark.parametrize(("key", "value"), [("interval", "1e14"), ("retry_max", "1e12")])
@pytest.mark.usefixtures("env")
def test_a_wait_longer_than_the_calendar_is_refused_not_a_crash_at_every_start(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    """An interval or retry_max no date can be that far from now was taken, and the renewer
    died at each start with OverflowError (its horizon, its first run after a failing streak),
    so supervisord gave it up (FATAL), and the appliance went down with it."""
    monkeypatch.setenv(f"DOCXY_SCHEDULER_{key.upper()}", value)
    try:
        settings = settings_mod.load(["--retry-base", "60"])
    except ConfigError as exc:
        assert f"scheduler.{key}" in str(exc)
        return
    renewer = Failing(settings, failures=100, last_run=dt.datetime.now(dt.UTC))
    scheduler_main.build(renewer)
    scheduler_main.horizon(settings)


@pytest.mark.usefixtures("env")
def test_the_longest_waits_taken_still_start_and_schedule_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the bound (30 days) a renewer with a very long failing streak still starts, and a
    failed run still gets its retry."""
    month = str(30 * 24 * 3600)
    settings = settings_mod.load(["--interval", month, "--retry-base", month, "--retry-max", month])
    restarted = Failing(settings, failures=10**6, last_run=dt.datetime.now(dt.UTC))
    scheduler_main.build(restarted)  # its first run put off by a whole backoff
    assert scheduler_main.horizon(settings) > dt.timedelta(days=30)
    renewer = Failing(settings, failures=10**6)  # runs at once, fails, and is retried
    scheduler = scheduler_main.build(renewer)
    thread = threading.Thread(target=scheduler.start)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while scheduler.get_job(scheduler_main.RETRY_JOB) is None:
            assert time.monotonic() < deadline, "no retry scheduled"
            time.sleep(0.02)
    finally:
        scheduler.shutdown(wait=False)
        thread.join(timeout=60)
    assert renewer.failures == 10**6 + 1


@pytest.mark.usefixtures("env")
def test_a_reload_command_the_renewer_cannot_split_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload command with an unclosed quote was taken; every run that had a certificate to
    announce then failed with shlex's bare "No closing quotation" (nothing said which setting),
    and after a failed certbot run the log said installing the certificate had failed too,
    when only the reload command was wrong."""
    command = "supervisorctl -p s3cret signal 'HUP docxy"
    monkeypatch.setenv("DOCXY_SCHEDULER_RELOAD_COMMAND", command)
    with pytest.raises(ConfigError, match=r"scheduler.reload_command: .*quot") as refused:
        settings_mod.load([])
    assert "s3cret" not in str(refused.value)  # the command's own password stays out of the log


@pytest.mark.usefixtures("env")
def test_the_appliances_reload_command_is_still_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    command = "supervisorctl -s 'unix:///run/docxy/supervisor.sock' signal HUP docxy"
    monkeypatch.setenv("DOCXY_SCHEDULER_RELOAD_COMMAND", command)
    assert settings_mod.load([]).reload_command == command


@pytest.mark.usefixtures("env")
def test_a_config_broken_while_the_renewer_waits_is_the_runs_reason(tmp_path: Path) -> None:
    """Each run's child reads the settings again. A config file edited into a wrong one while
    the renewer waited failed every run with "the renewal run exited 1 without a result" in
    /health (the reason only in a traceback in the log): the run's error now names the key."""
    config = tmp_path / "docxy.toml"
    config.write_text("[scheduler]\nretry_base = 60\n")
    settings = settings_mod.load(["--config", str(config)])
    config.write_text("[scheduler]\nretry_base = 0\n")  # edited while the renewer runs
    renewer = InChild(settings, argv=["--config", str(config)], reload_pending=True)
    assert renewer.run() is False
    assert "scheduler.retry_base" in str(renewer.last_error), renewer.last_error
    assert renewer.reload_pending  # still owed: nothing was done


def test_a_renewer_with_nowhere_to_install_says_so(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """certs.domain set, tls.cert_path/key_path not (the mirror then serves a self-signed pair
    for the domain): the renewer obtained a certificate, installed it nowhere, and reported
    the run a success, so /health's renewal looked fine while clients got the self-signed one."""
    fake = FakeCertbot(Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "mirror.test")
    monkeypatch.setattr(certs, "obtain", fake.obtain)
    monkeypatch.setattr(certs, "renew", fake.renew)
    caplog.set_level(logging.WARNING, "scheduler")
    assert scheduler_main.main(["--once"]) == 0
    assert fake.calls == ["certonly"]
    [warned] = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("scheduler")
    ]
    assert "tls.cert_path" in warned and "live/mirror.test" in warned, warned
