"""The renewer without an ACME server: settings, backoff, one run, the APScheduler loop, signals.

certbot is replaced by a small script on PATH where its behaviour matters; the real certbot
against pebble is in test_certs_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger
from cryptography import x509

from docxy.core.errors import ConfigError
from docxy.tls import certs
from docxy.tls.context import self_signed
from lab.certs import issue
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.mirror_pid import StalePidfile, is_mirror, signal_mirror
from scheduler.renewal import Renewer
from scheduler.runs import backoff

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    values = {
        "DOCXY_CERTS_DOMAIN": "mirror.test",
        "DOCXY_CERTS_EMAIL": "ops@mirror.test",
        "DOCXY_CERTS_WEBROOT": str(tmp_path / "webroot"),
        "DOCXY_CERTS_CONFIG_DIR": str(tmp_path / "le"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


#: Only bounds a hang: a renewer process started under heavy machine load may take a long while
#: to import (its runs start a second interpreter), and a deadline is no speed test.
HANG = 180.0


def poll(predicate: Callable[[], object], timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


def read_status(path: Path) -> dict[str, object]:
    """What the mirror reads for /health."""
    assert path.name == certs.STATUS_FILE
    return certs.renewal_status(path.parent)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 10, 100) for n in range(1, 7)] == [10, 20, 40, 80, 100, 100]


def test_backoff_after_a_very_long_failing_streak_is_the_cap() -> None:
    """2 ** 1024 does not fit a float: the 1,025th failure in a row must still get its retry."""
    assert [backoff(n, 60, 300) for n in (1024, 1025, 10**6)] == [300, 300, 300]


@pytest.mark.usefixtures("env")
def test_settings_from_config_and_flags(tmp_path: Path) -> None:
    s = settings_mod.load(["--interval", "2", "--retry-base", "0.5", "--minute", "7"])
    assert (s.domain, s.certs.email) == ("mirror.test", "ops@mirror.test")
    assert s.config_dir == tmp_path / "le"
    assert s.status_file == tmp_path / "le" / "status.json"
    assert (s.interval, s.retry_base, s.minute) == (2.0, 0.5, 7)
    assert s.hours[1] == s.hours[0] + 12 and 0 <= s.hours[0] < 12


def test_settings_random_time_and_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCXY_SCHEDULER_RETRY_BASE", "30")  # at most retry_max
    monkeypatch.setenv("DOCXY_SCHEDULER_RETRY_MAX", "60")
    picked = {settings_mod.load([]).minute for _ in range(30)}
    assert len(picked) > 1 and all(0 <= m < 60 for m in picked)
    assert settings_mod.load([]).retry_max == 60.0


@pytest.mark.usefixtures("env")
def test_settings_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCXY_SCHEDULER_INTERVAL", "soon")
    with pytest.raises(
        ConfigError,
        match=r"scheduler.interval: expected a number \(seconds\), or one with a .* got 'soon'",
    ):
        settings_mod.load([])
    monkeypatch.delenv("DOCXY_SCHEDULER_INTERVAL")
    with pytest.raises(
        ConfigError,
        match=r"scheduler.retry_base: expected a positive number \(seconds\).* got '0' \(flag\)",
    ):
        settings_mod.load(["--retry-base", "0"])
    monkeypatch.delenv("DOCXY_CERTS_CONFIG_DIR")
    with pytest.raises(ConfigError, match="certs.config_dir: not set"):
        settings_mod.load([])


@pytest.mark.parametrize(
    "argv",
    [
        ["--reload", "supervisorctl signal HUP docxy"],  # not --reload-command
        ["--wait", "--once"],  # not --wait-for-mirror
        ["--deploy", "true"],  # not --deploy-hook
        ["--retry-b", "5"],  # not --retry-base
    ],
)
@pytest.mark.usefixtures("env")
def test_an_abbreviated_flag_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """As in the docxy CLI: no flag stands for a longer one it begins (a guess at intent is how
    `docxy certs status --config` became --config-dir)."""
    with pytest.raises(SystemExit) as exited:
        settings_mod.load(argv)
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "name", "value", "message"),
    [
        (
            ["--hour", "12"],
            None,
            None,
            r"scheduler.hour: expected a whole number 0-11, got '12' \(flag\)",
        ),
        (
            [],
            "DOCXY_SCHEDULER_HOUR",
            "23",
            r"scheduler.hour: .* got '23' \(env DOCXY_SCHEDULER_HOUR\)",
        ),
        (["--minute", "60"], None, None, r"scheduler.minute: expected a whole number 0-59"),
        (
            [],
            "DOCXY_SCHEDULER_INTERVALL",
            "5",
            r"scheduler.intervall: unknown key \(env DOCXY_SCHEDULER_INTERVALL\)",
        ),
        ([], "DOCXY_SCHEDULR_HOUR", "1", r"DOCXY_SCHEDULR_HOUR: unknown variable"),
        (["--retry-max", "nan"], None, None, r"scheduler.retry_max: expected a finite number"),
    ],
)
@pytest.mark.usefixtures("env")
def test_bad_renewer_settings_are_refused_like_any_other(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    name: str | None,
    value: str | None,
    message: str,
) -> None:
    if name is not None and value is not None:
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        settings_mod.load(argv)
    # a one-shot run fails (the long-running renewer stays up, runs nothing and says why:
    # test_review_renewer.py)
    assert scheduler_main.main([*argv, "--once"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("scheduler: config error: ")


@pytest.mark.usefixtures("env")
def test_renewer_settings_from_the_shared_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "docxy.toml"
    config.write_text(
        "[scheduler]\nhour = 11\nminute = 0\nretry_base = 7\nwait_for_mirror = true\n"
    )
    monkeypatch.setenv("DOCXY_SCHEDULER_RETRY_BASE", "9")
    s = settings_mod.load(["--config", str(config), "--pidfile", str(tmp_path / "pid")])
    assert (s.hours, s.minute, s.retry_base) == ((11, 23), 0, 9.0)
    assert s.pidfile == tmp_path / "pid"
    assert s.wait_for_mirror == ("http://127.0.0.1:8080/health",)
    assert s.interval is None


def test_show_config_lists_the_renewer_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from docxy.cli.main import main as docxy_main

    monkeypatch.setenv("DOCXY_SCHEDULER_HOUR", "4")
    assert docxy_main(["serve", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "scheduler.hour = 4  (env DOCXY_SCHEDULER_HOUR)" in out
    assert "scheduler.certbot_timeout = 300  (default)" in out


def issued_lineage(live: Path) -> None:
    """A lineage as certbot leaves it for `live`'s domain: its live files and its
    ``renewal/<domain>.conf`` (without which the renewer obtains a new certificate)."""
    self_signed(live, live.name, cert_name="fullchain.pem", key_name="privkey.pem")
    renewal = live.parent.parent / "renewal"
    renewal.mkdir(exist_ok=True)
    (renewal / f"{live.name}.conf").write_text(f"# certbot's lineage of {live.name}\n")


class FakeCertbot:
    """Stands in for docxy.certs.obtain/renew: writes a fresh lineage, or fails when told to."""

    def __init__(self, live: Path) -> None:
        self.live = live
        self.calls: list[str] = []
        self.emails: list[object] = []  # each obtain's certs.email
        self.fail_next = 0

    def _issue(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_next:
            self.fail_next -= 1
            raise certs.CertbotError(f"certbot {what} failed: Detail: the CA is having a nap")
        issued_lineage(self.live)

    def obtain(self, *args: object, **kwargs: object) -> Path:
        self.emails.append(args[1])
        self._issue("certonly")
        return self.live

    def renew(self, **kwargs: object) -> str:
        self._issue("renew")
        return ""


@pytest.fixture
def fake_certbot(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> FakeCertbot:
    fake = FakeCertbot(Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "mirror.test")
    monkeypatch.setattr(certs, "obtain", fake.obtain)
    monkeypatch.setattr(certs, "renew", fake.renew)
    return fake


def pidfile_naming(tmp_path: Path, pid: int) -> Path:
    """A pidfile, as the mirror writes it, naming `pid`."""
    pidfile = tmp_path / "docxy.pid"
    pidfile.write_text(f"{pid}\n")
    return pidfile


def renewer_for(
    pidfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Renewer, Path, Path]:
    """A renewer for a mirror serving a self-signed bootstrap pair and named by `pidfile`;
    (renewer, served cert, served key)."""
    cert, key = self_signed(tmp_path / "tls", "bootstrap")  # what the mirror serves at first
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    return Renewer(settings_mod.load(["--pidfile", str(pidfile)])), cert, key


@pytest.fixture
def hup_listener(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A stand-in mirror that writes a line to a file for each SIGHUP; (pidfile, that file)."""
    seen = tmp_path / "hups"
    code = (
        "import signal,sys\n"
        f"f=open({str(seen)!r},'a',buffering=1)\n"
        "signal.signal(signal.SIGHUP, lambda *a: f.write('hup\\n'))\n"
        "print('ready', flush=True)\n"
        "while True: signal.pause()\n"
    )
    # "docxy serve" in its command line: the renewer signals only a process that runs the mirror
    argv = [sys.executable, "-c", code, "docxy", "serve"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    pidfile = pidfile_naming(tmp_path, proc.pid)
    try:
        yield pidfile, seen
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_run_obtains_then_renews_installs_and_signals(
    tmp_path: Path,
    fake_certbot: FakeCertbot,
    hup_listener: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pidfile, seen = hup_listener
    renewer, cert, key = renewer_for(pidfile, tmp_path, monkeypatch)

    assert renewer.run() is True
    assert fake_certbot.calls == ["certonly"]
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()
    assert key.read_bytes() == (fake_certbot.live / "privkey.pem").read_bytes()
    poll(lambda: seen.exists() and seen.read_text() == "hup\n")

    assert renewer.run() is True
    assert fake_certbot.calls == ["certonly", "renew"]
    poll(lambda: seen.read_text() == "hup\nhup\n")

    fake_certbot.fail_next = 1
    before = cert.read_bytes()
    assert renewer.run() is False
    assert renewer.failures == 1 and "the CA is having a nap" in str(renewer.last_error)
    assert cert.read_bytes() == before
    renewer.write_status(None)
    status = read_status(renewer.settings.status_file)
    assert status["failures"] == 1 and "nap" in str(status["last_error"])
    assert status["last_success"] is not None


def test_obtain_without_email_goes_ahead_without_one(
    fake_certbot: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The e-mail is optional (certbot registers without a contact); only a domain is needed."""
    monkeypatch.delenv("DOCXY_CERTS_EMAIL")
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is True, renewer.last_error
    assert fake_certbot.calls == ["certonly"] and fake_certbot.emails == [None]


def test_scheduler_retries_with_backoff_then_recovers(fake_certbot: FakeCertbot) -> None:
    fake_certbot.fail_next = 3
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "0.05"])
    renewer = Renewer(settings)
    scheduler = scheduler_main.build(renewer)
    thread = threading.Thread(target=scheduler.start, name="scheduler-under-test")
    thread.start()
    try:
        # a run's success: the status written at start already says 0 failures (none yet)
        poll(lambda: read_status(settings.status_file).get("last_success") is not None)
        status = read_status(settings.status_file)
    finally:
        scheduler.shutdown(wait=False)
        thread.join(timeout=10)
    assert not thread.is_alive()
    # At start, then three retries: 0.05s, 0.1s, 0.2s apart.
    assert fake_certbot.calls == ["certonly"] * 4
    assert status["last_error"] is None
    # Only the regular run is left: an hour from now.
    assert scheduler.get_job(scheduler_main.RETRY_JOB) is None
    assert str(status["next_run"]) > str(status["last_run"])


def test_daily_runs_at_the_picked_minute(fake_certbot: FakeCertbot) -> None:
    settings = settings_mod.load(["--hour", "3", "--minute", "41"])
    scheduler = scheduler_main.build(Renewer(settings))
    trigger = str(scheduler.get_job(scheduler_main.RENEW_JOB).trigger)
    assert "hour='3,15'" in trigger and "minute='41'" in trigger


def fake_certbot_on_path(tmp_path: Path, script: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "certbot").write_text("#!/bin/sh\n" + script)
    (bin_dir / "certbot").chmod(0o755)
    env = {k: v for k, v in os.environ.items()}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_once_reports_certbots_reason(tmp_path: Path, env: dict[str, str]) -> None:
    lineage = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "mirror.test"
    issued_lineage(lineage)
    proc_env = fake_certbot_on_path(
        tmp_path,
        "echo 'Saving debug log to /x' >&2\n"
        "echo 'Failed to renew certificate mirror.test with error: the CA said no' >&2\n"
        "exit 1\n",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "--once"],
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "certbot renew failed: the CA said no" in proc.stderr
    status = json.loads((Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json").read_text())
    assert status["last_error"] == "certbot renew failed: the CA said no"


def test_process_runs_at_start_and_stops_on_sigterm(tmp_path: Path, env: dict[str, str]) -> None:
    lineage = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "mirror.test"
    issued_lineage(lineage)
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    served = tmp_path / "served"
    proc_env["DOCXY_TLS_CERT_PATH"] = str(served / "fullchain.pem")
    proc_env["DOCXY_TLS_KEY_PATH"] = str(served / "privkey.pem")
    status_file = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler"],
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def first_run_done() -> bool:
            assert proc.poll() is None, "the renewer exited"  # fail at once, not at the deadline
            return status_file.exists() and read_status(status_file).get("last_success") is not None

        poll(first_run_done)
        assert calls.read_text() == "renew\n"
        next_run = str(read_status(status_file)["next_run"])
        assert next_run > str(read_status(status_file)["last_run"])
        # Installed and described by the run's child process, written down by the renewer.
        assert (served / "fullchain.pem").read_bytes() == (lineage / "fullchain.pem").read_bytes()
        certificate = read_status(status_file)["certificate"]
        assert isinstance(certificate, dict) and "error" not in certificate, certificate
        assert certificate["cert_path"] == str(served / "fullchain.pem")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, out
    assert "renewing certificates at start and daily at" in out


def test_a_failed_reload_is_retried_on_the_next_run(
    tmp_path: Path,
    fake_certbot: FakeCertbot,
    hup_listener: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pidfile, seen = hup_listener
    renewer, cert, _ = renewer_for(pidfile, tmp_path, monkeypatch)
    hidden = pidfile.with_suffix(".away")
    pidfile.rename(hidden)  # the mirror cannot be told this time
    assert renewer.run() is False
    assert "cannot signal the mirror" in str(renewer.last_error)
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()  # installed

    hidden.rename(pidfile)
    monkeypatch.setattr(certs, "renew", lambda **kwargs: "")  # nothing due: files unchanged
    assert renewer.run() is True
    poll(lambda: seen.exists() and seen.read_text() == "hup\n")


def test_wait_for_mirror_gives_up_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.renewal import wait_for

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ValueError, match="did not answer within 0 s"):
        wait_for([f"http://127.0.0.1:{port}/health"], 0.0)


class LateMirror:
    """A stand-in mirror on loopback whose ``/health`` answers 503 to the first `late` asks
    (still starting), then 200 with Docxy's report; ``asked`` counts the asks, ``up`` whether
    one got 200."""

    def __init__(self, late: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        mirror = self
        self.late, self.asked, self.up = late, 0, False

        class Health(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                mirror.asked += 1
                ready = mirror.asked > mirror.late
                mirror.up = mirror.up or ready  # before the answer leaves
                body = b'{"status": "ok", "version": "test"}' if ready else b""
                self.send_response(200 if ready else 503)  # 200: Docxy's own report
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="late-mirror")

    def __enter__(self) -> LateMirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_a_renewal_due_at_start_waits_for_the_mirror(
    fake_certbot: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate already issued (the container was down while its renewal fell due): the
    run's ``certbot renew`` waits, like a first issuance, until the mirror that serves the
    HTTP-01 token answers; before, it asked the CA at once and failed on a mirror not yet up."""
    issued_lineage(fake_certbot.live)
    mirror_up_at_renew: list[bool] = []
    real_renew = fake_certbot.renew

    def renew(**kwargs: object) -> str:
        mirror_up_at_renew.append(mirror.up)
        return real_renew(**kwargs)

    monkeypatch.setattr(certs, "renew", renew)
    with LateMirror(late=2) as mirror:
        monkeypatch.setenv("DOCXY_SERVER_LISTEN", f"127.0.0.1:{mirror.port}")
        monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
        renewer = Renewer(settings_mod.load(["--wait-for-mirror"]))
        with caplog.at_level("INFO", logger="scheduler.renewal"):
            assert renewer.run() is True, renewer.last_error
    assert fake_certbot.calls == ["renew"] and mirror_up_at_renew == [True]
    assert mirror.asked == 3  # two 503s, then the 200 (and no ask after it)
    said = caplog.text
    assert f"waiting up to 120 s for the mirror at http://127.0.0.1:{mirror.port}/health" in said
    assert "the mirror answered after" in said


def test_a_renewal_whose_mirror_never_answers_fails_without_asking_the_ca(
    fake_certbot: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded: after the wait the run fails (and is retried with backoff); certbot is not run,
    so a validation that could not succeed does not count against the CA's limits."""
    from scheduler import renewal

    issued_lineage(fake_certbot.live)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(renewal, "MIRROR_WAIT", 1.0)
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    renewer = Renewer(settings_mod.load(["--wait-for-mirror"]))
    assert renewer.run() is False
    assert fake_certbot.calls == []
    assert f"the mirror at http://127.0.0.1:{port}/health did not answer within 1 s" in str(
        renewer.last_error
    )


def test_an_issued_certificate_is_installed_before_waiting_for_the_mirror(
    fake_certbot: FakeCertbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken pair at the served paths (no install to finish): the mirror exits at each
    start and the supervisor gives it up long before the wait ends, so the repair after the
    wait never came (an endless restart loop of the container). It comes first now."""
    from scheduler import renewal

    issued_lineage(fake_certbot.live)
    cert, key = self_signed(tmp_path / "tls", "bootstrap")
    key.write_bytes(self_signed(tmp_path / "other", "other")[1].read_bytes())  # mismatched
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    issued = (fake_certbot.live / "fullchain.pem").read_bytes()
    seen_at_wait: list[bool] = []

    def mirror_down(url: str, timeout: float) -> None:
        seen_at_wait.append(cert.read_bytes() == issued)
        raise ValueError(f"the mirror at {url} did not answer within {timeout:g} s")

    monkeypatch.setattr(renewal, "wait_for", mirror_down)
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    renewer = Renewer(settings_mod.load(["--wait-for-mirror"]))
    assert renewer.run() is False  # the mirror never answered: retried later
    assert seen_at_wait == [True]
    assert fake_certbot.calls == []


def test_without_wait_for_mirror_a_renewal_runs_at_once(fake_certbot: FakeCertbot) -> None:
    """The flag is the appliance's (the renewer and the mirror start together); a renewer
    beside a mirror that is already up (the host install) asks nothing first."""
    issued_lineage(fake_certbot.live)
    renewer = Renewer(settings_mod.load([]))
    assert renewer.settings.wait_for_mirror == ()
    assert renewer.run() is True and fake_certbot.calls == ["renew"]


@pytest.mark.usefixtures("env")
def test_wait_for_mirror_url_comes_from_the_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", "0.0.0.0:8081")
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    assert settings_mod.load([]).wait_for_mirror == ()
    assert settings_mod.load(["--wait-for-mirror"]).wait_for_mirror == (
        "http://127.0.0.1:8081/health",
    )


def test_without_a_domain_certbot_never_runs_and_sigterm_stops_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    del proc_env["DOCXY_CERTS_DOMAIN"]
    # A lineage from some earlier setup: without a domain, `certbot renew` must not touch it.
    lineage = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "old.test"
    self_signed(lineage, "old.test", cert_name="fullchain.pem", key_name="privkey.pem")
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "--interval", "0.2"],
            env=proc_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        poll(lambda: "certbot is not run" in log.read_text())
        assert proc.poll() is None  # stays up: a supervisor must not see a renewer that died
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not calls.exists(), calls.read_text()
    assert not (Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json").exists()


def test_once_without_a_domain_exits_0_without_certbot(tmp_path: Path, env: dict[str, str]) -> None:
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    del proc_env["DOCXY_CERTS_DOMAIN"]
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "--once"],
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no certs.domain set" in proc.stderr
    assert not calls.exists()


def test_the_waiting_renewer_loads_neither_certbots_helpers_nor_cryptography() -> None:
    """The runs' work is done in child processes: the renewer that waits stays small."""
    heavy = ("cryptography", "httpx", "scheduler.renewal", "docxy.tls.certs", "docxy.tls.context")
    code = f"import sys, scheduler.main\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


def test_the_status_file_name_is_the_one_the_mirror_reads() -> None:
    assert settings_mod.STATUS_FILE == certs.STATUS_FILE


@pytest.mark.usefixtures("env")
def test_a_run_whose_child_gives_no_result_is_a_failed_run() -> None:
    from scheduler.worker import InChild

    runs = InChild(settings_mod.load([]), argv=["--no-such-flag"])  # the child refuses it
    assert runs.run() is False
    assert runs.failures == 1
    assert "exited 2 without a result" in str(runs.last_error)


def test_a_failed_certbot_run_still_serves_the_certificate_already_issued(
    tmp_path: Path,
    fake_certbot: FakeCertbot,
    hup_listener: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A valid certificate in certbot's lineage, but the mirror serves another pair: its
    self-signed bootstrap (the served files were lost or moved, tls.cert_path changed), or the
    pair of an install that was cut short. certbot cannot reach the CA just now. The run fails
    and says why, but the issued certificate is served at once, not after certbot's next
    success (hours of backoff, with no Docker client trusting the mirror meanwhile)."""
    pidfile, seen = hup_listener
    fake_certbot._issue("certonly")  # issued earlier
    fake_certbot.calls.clear()
    renewer, cert, key = renewer_for(pidfile, tmp_path, monkeypatch)

    fake_certbot.fail_next = 1
    assert renewer.run() is False
    assert fake_certbot.calls == ["renew"]
    assert "the CA is having a nap" in str(renewer.last_error)
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()
    assert key.read_bytes() == (fake_certbot.live / "privkey.pem").read_bytes()
    poll(lambda: seen.exists() and seen.read_text() == "hup\n")


def test_a_reload_that_fails_after_a_failed_certbot_run_does_not_say_the_install_failed(
    tmp_path: Path,
    fake_certbot: FakeCertbot,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issued certificate is installed; only telling the mirror failed (its pidfile names
    no process). The warning said "installing the issued certificate failed too"."""
    caplog.set_level(logging.WARNING, "scheduler")
    fake_certbot._issue("certonly")
    fake_certbot.calls.clear()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    renewer, cert, _ = renewer_for(pidfile_naming(tmp_path, gone.pid), tmp_path, monkeypatch)
    fake_certbot.fail_next = 1
    assert renewer.run() is False
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [warning] = [line for line in warned if line.startswith("after certbot renew failed")]
    assert "is installed" in warning and "failed too" not in warning


def test_a_failed_first_issuance_installs_nothing(
    tmp_path: Path, fake_certbot: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lineage yet and certbot failed: the bootstrap pair stays, certbot's reason is told."""
    cert, key = self_signed(tmp_path / "tls", "bootstrap")
    before = cert.read_bytes(), key.read_bytes()
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    renewer = Renewer(settings_mod.load([]))
    fake_certbot.fail_next = 1
    assert renewer.run() is False
    assert str(renewer.last_error) == "certbot certonly failed: Detail: the CA is having a nap"
    assert (cert.read_bytes(), key.read_bytes()) == before


def test_a_retry_the_renewer_wakes_late_for_still_runs(
    fake_certbot: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer woke up late for its retry: swapped out on a small box under memory
    pressure, a paused container, a resumed VM, the wall clock stepped forward by NTP after
    boot. Here the job executor's clock runs 5 s ahead of the retry's time. The retry must still
    run (once), not be dropped as missed, leaving the next attempt to the daily run up to 12 h
    later and a next_run in the past in the status."""
    import datetime as dt

    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.executors import base as executor_base

    class Late(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Late:
            real = dt.datetime.now(tz) + dt.timedelta(seconds=5)
            return cls.fromtimestamp(real.timestamp(), tz)

    monkeypatch.setattr(executor_base, "datetime", Late)
    fake_certbot.fail_next = 1
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "0.05"])
    scheduler = scheduler_main.build(Renewer(settings))
    retries: list[int] = []

    def seen(event: JobExecutionEvent) -> None:
        if event.job_id == scheduler_main.RETRY_JOB:
            retries.append(event.code)

    scheduler.add_listener(seen, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
    thread = threading.Thread(target=scheduler.start, name="scheduler-under-test")
    thread.start()
    try:
        poll(lambda: retries)
        status = read_status(settings.status_file)
    finally:
        scheduler.shutdown(wait=False)
        thread.join(timeout=10)
    assert retries == [EVENT_JOB_EXECUTED]
    assert fake_certbot.calls == ["certonly", "certonly"]
    assert status["failures"] == 0


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[str]]:
    """An unrelated process with SIGHUP's default action (terminate) that answers each line on
    its stdin, so a test can tell for sure whether it is still alive."""
    code = "import sys\nfor line in sys.stdin:\n    print('pong', flush=True)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.close()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


def answers(proc: subprocess.Popen[str]) -> bool:
    """Whether `proc` still answers a ping (a process killed by a signal reads and writes no
    more: the kernel has ended it by the time kill() returns)."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("ping\n")
        proc.stdin.flush()
    except BrokenPipeError:
        return False
    return proc.stdout.readline() == "pong\n"


def test_a_stale_pidfile_is_reported_and_its_pid_left_alone(
    tmp_path: Path,
    fake_certbot: FakeCertbot,
    bystander: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mirror died and its pid went to another process: the renewer must not send that
    process SIGHUP (which would end it), and must say the pidfile is stale."""
    assert answers(bystander)
    pidfile = pidfile_naming(tmp_path, bystander.pid)
    renewer, cert, _ = renewer_for(pidfile, tmp_path, monkeypatch)

    succeeded = renewer.run()
    assert answers(bystander), "the process named by the stale pidfile was signalled"
    assert succeeded is False
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()  # installed
    error = str(renewer.last_error)
    assert f"stale pidfile {pidfile}" in error and f"pid {bystander.pid} is not the mirror" in error
    renewer.write_status(None)
    assert read_status(renewer.settings.status_file)["last_error"] == error
    assert renewer.reload_pending  # told on a later run, once the pidfile names the mirror


def test_a_pidfile_naming_no_process_is_reported_stale(
    tmp_path: Path, fake_certbot: FakeCertbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=HANG)
    pidfile = pidfile_naming(tmp_path, gone.pid)
    renewer, _, _ = renewer_for(pidfile, tmp_path, monkeypatch)

    assert renewer.run() is False
    assert f"stale pidfile {pidfile}: no process {gone.pid}" in str(renewer.last_error)


@pytest.mark.parametrize(
    ("argv", "mirror"),
    [
        (["/usr/bin/python3", "-m", "docxy", "serve", "--listen", ":8080"], True),
        (["/usr/bin/python3", "/usr/local/bin/docxy", "serve"], True),
        (["docxy", "serve", "--config", "/etc/docxy.toml"], True),
        (["/usr/bin/python3", "-m", "docxy", "cache", "du"], False),
        (["/usr/bin/python3", "-m", "scheduler.worker"], False),
        (["certbot", "renew", "--cert-name", "docxy"], False),
        (["sh", "-c", "docxy serve"], False),
        (["/usr/bin/python3", "-m", "docxy"], False),
        ([], False),
    ],
)
def test_is_mirror_knows_the_mirrors_command_line(argv: list[str], mirror: bool) -> None:
    assert is_mirror(argv) is mirror


def test_without_pidfds_a_stale_pidfile_is_still_refused(
    tmp_path: Path, bystander: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel (or a container's seccomp filter) without pidfd_open: checked, then os.kill."""

    def refused(pid: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)
    pidfile = pidfile_naming(tmp_path, bystander.pid)
    with pytest.raises(StalePidfile, match="is not the mirror"):
        signal_mirror(pidfile)
    assert answers(bystander)


def test_without_pidfds_the_mirror_is_still_signalled(
    hup_listener: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    pidfile, seen = hup_listener
    assert signal_mirror(pidfile) == int(pidfile.read_text())
    poll(lambda: seen.exists() and seen.read_text() == "hup\n")


def test_without_apscheduler_the_renewer_says_which_extra_to_install() -> None:
    """README's first line installs `pip install -e .`, without the scheduler extra; then
    `python -m scheduler`, as the TLS section says, died with a ModuleNotFoundError traceback."""
    blocked = (
        "import runpy, sys; sys.modules['apscheduler'] = None; "
        "runpy.run_module('scheduler', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "pip install" in result.stderr and "[scheduler]" in result.stderr, result.stderr


def test_help_tells_a_user_what_the_renewer_does_not_how_its_settings_module_works() -> None:
    """``python -m scheduler --help`` printed the settings module's docstring (reST markup,
    'checked like every other setting (docxy.config ...)'), not what the program is for."""
    said = settings_mod.build_parser().format_help()
    assert "``" not in said and "docxy.config" not in said
    assert "Renew the mirror's TLS certificate" in said
    assert "DOCXY_SCHEDULER_" in said and "[scheduler]" in said  # where its settings come from


def test_the_next_run_skips_a_job_added_while_the_scheduler_stops() -> None:
    """A run that failed as SIGTERM came adds its retry to a stopping scheduler: that job is
    pending, with no ``next_run_time`` attribute at all, and the status write after the run
    raised AttributeError (seen in the appliance's log)."""
    stopped = BlockingScheduler(timezone=dt.UTC)
    stopped.add_job(print, DateTrigger(dt.datetime.now(dt.UTC)), id="retry")
    assert scheduler_main._next_run(stopped) is None


def test_a_run_the_clock_stepped_back_over_runs_now(env: dict[str, str]) -> None:
    """APScheduler keeps wall-clock times: a renewer started while the clock ran a month ahead
    (a VPS's clock before NTP set it right) had its runs a month ahead of the true time, and no
    renewal ran for a month. A run due further ahead than any of the renewer's can be is now
    run at once."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from scheduler.runs import Runs

    settings = settings_mod.load([])
    furthest = scheduler_main.horizon(settings)
    assert furthest >= dt.timedelta(hours=12)  # the daily runs' period
    ran = threading.Event()
    scheduler = BackgroundScheduler(timezone=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    month_ahead = now + dt.timedelta(days=30)
    scheduler.add_job(ran.set, DateTrigger(month_ahead), id=scheduler_main.RETRY_JOB)
    scheduler.add_job(print, DateTrigger(now + dt.timedelta(hours=6)), id="in-range")
    scheduler.start()
    try:
        assert scheduler_main.pull_back(scheduler, furthest, now) == 1
        assert ran.wait(HANG)  # woken and run: not left until the old clock's time
        kept = scheduler.get_job("in-range").next_run_time
        assert kept == now + dt.timedelta(hours=6)
    finally:
        scheduler.shutdown(wait=False)
    # the renewer's own scheduler, with its first run a month ahead
    built = scheduler_main.build(Runs(settings))
    built.modify_job(scheduler_main.RENEW_JOB, next_run_time=month_ahead)
    assert scheduler_main.pull_back(built, furthest, now) == 1
    assert built.get_job(scheduler_main.RENEW_JOB).next_run_time == now


def test_the_status_files_certificate_is_judged_for_the_domain_as_health_judges_it(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer described the served pair without certs.domain: a CA's certificate for
    another name (an earlier domain's) was ``ca-issued`` with no warning under /health's
    ``renewal``, while its ``tls`` part said ``other-name`` and warned."""
    ca = issue("Test CA", ca=True)
    leaf = issue("old.example", ca, names=[x509.DNSName("old.example")])
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "fullchain.pem", served / "privkey.pem"
    cert.write_bytes(leaf.cert_pem + ca.cert_pem)
    key.write_bytes(leaf.key_pem)
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    described = Renewer(settings_mod.load([])).certificate()
    assert described is not None
    assert described["served"] == "other-name" and described["domain"] == "mirror.test"
    assert described["warning"] == certs.describe_files(cert, key, "mirror.test")["warning"]
    assert described["warning"]


def test_a_second_stop_while_a_run_ends_is_quiet(tmp_path: Path, env: dict[str, str]) -> None:
    """SIGTERM twice (a supervisor's stop, then an impatient operator's) while a renewal run is
    under way: the second signal found the scheduler stopped already, and its handler raised
    SchedulerNotRunningError, a traceback in the renewer's log. A stop is now taken once; the
    run in progress is still waited for, and the renewer exits 0."""
    lineage = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / "mirror.test"
    issued_lineage(lineage)
    started, release = tmp_path / "certbot-started", tmp_path / "certbot-may-end"
    # certbot that waits to be let go (two minutes at most): the run is under way meanwhile
    waits = f"touch {started}\ni=0\nwhile [ ! -e {release} ] && [ $i -lt 1200 ]; do\n"
    proc_env = fake_certbot_on_path(tmp_path, waits + "  sleep 0.1; i=$((i + 1))\ndone\n")
    served = tmp_path / "served"
    proc_env["DOCXY_TLS_CERT_PATH"] = str(served / "fullchain.pem")
    proc_env["DOCXY_TLS_KEY_PATH"] = str(served / "privkey.pem")
    log = tmp_path / "renewer.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler"], env=proc_env, stdout=out, stderr=out
        )
    try:

        def logged(text: str) -> Callable[[], bool]:
            def seen() -> bool:
                assert proc.poll() is None, log.read_text()  # fail at once, not at the deadline
                return text in log.read_text()

            return seen

        poll(started.exists)
        proc.send_signal(signal.SIGTERM)  # the renewer only: its run's child goes on
        poll(logged("signal 15: stopping"))
        proc.send_signal(signal.SIGTERM)
        poll(logged("signal 15 again: already stopping"))
        release.touch()
        proc.wait(timeout=HANG)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    said = log.read_text()
    assert "Traceback" not in said, said
    assert proc.returncode == 0, said
    assert said.count(": stopping") == 1, said


def test_a_signal_before_the_scheduler_runs_stops_it_once_it_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop that came in the moment before ``scheduler.start()`` marked the scheduler running
    raised SchedulerNotRunningError in the thread that watches for signals, which ended: every
    later SIGTERM was lost and a supervisor had to kill the renewer. Now the stop waits for the
    start. (SIGUSR1 stands in for SIGTERM, in this test's own process.)"""
    from apscheduler.schedulers.background import BackgroundScheduler

    caplog.set_level(logging.INFO, logger="scheduler")
    scheduler = BackgroundScheduler(timezone=dt.UTC)
    before = signal.getsignal(signal.SIGUSR1)
    previous_fd = signal.set_wakeup_fd(-1)
    stop = scheduler_main.SignalStop(scheduler, (signal.SIGUSR1,))
    watcher = stop.start()
    try:
        signal.raise_signal(signal.SIGUSR1)
        poll(lambda: "stopping" in caplog.text, timeout=30)
        assert watcher.is_alive()  # waits for the start
        scheduler.start()
        poll(lambda: not scheduler.running, timeout=30)
        signal.raise_signal(signal.SIGUSR1)  # still watched: a later signal is not lost
        poll(lambda: "already stopping" in caplog.text, timeout=30)
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, before)
        if scheduler.running:
            scheduler.shutdown(wait=False)
        stop.close(watcher)
