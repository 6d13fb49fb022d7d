"""Renewer faults found by review, each shown by a test that failed on the code before its fix."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.core.stamps import restamped
from docxy.tls import certs
from docxy.tls.context import self_signed
from lab.health import health_server
from scheduler.renewal import wait_for
from tests.unit.test_scheduler import HANG, REPO_ROOT, issued_lineage, poll


@pytest.fixture
def mirror_health() -> Iterator[str]:
    """A plain-HTTP listener on loopback answering /health with 200, as the mirror does."""
    with health_server() as server:
        yield f"{server.url}/health"


def test_waiting_for_the_mirror_ignores_a_proxy_from_the_environment(
    mirror_health: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host behind a corporate proxy sets HTTP(S)_PROXY for everything (certbot reaches the CA
    through it). The renewer's wait for the mirror's own listener on this host must not go
    through that proxy, which cannot reach the container's loopback: with it, every first
    issuance waited its 120 s and failed ("did not answer"), for ever."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{unused.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    wait_for([mirror_health], 0.0)  # one attempt: answered, or ValueError


# --- the renewer's memory across restarts -----------------------------------------------------


@pytest.fixture
def renewer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a renewer process for mirror.test whose certbot always fails (an
    issued lineage exists, so each run is a `certbot renew`)."""
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    config_dir = tmp_path / "le"
    issued_lineage(config_dir / "live" / "mirror.test")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    certbot = bin_dir / "certbot"
    certbot.write_text("#!/bin/sh\necho 'Failed to renew: the CA is down' >&2\nexit 1\n")
    certbot.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DOCXY_CERTS_DOMAIN": "mirror.test",
        "DOCXY_CERTS_WEBROOT": str(tmp_path / "webroot"),
        "DOCXY_CERTS_CONFIG_DIR": str(config_dir),
    }


def renewer_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a renewer run in this process for mirror.test: no other DOCXY_*
    setting, its certbot config dir (made, and returned) under ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    config_dir = tmp_path / "le"
    config_dir.mkdir(exist_ok=True)
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(config_dir))
    return config_dir


def _status(env: dict[str, str]) -> dict[str, object]:
    """What the mirror reads for /health, /metrics and the status page: the file's times
    (``isoformat()``) as /health tells them (``restamped``)."""
    return certs.renewal_status(Path(env["DOCXY_CERTS_CONFIG_DIR"]))


def _once(env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # the run failed, as certbot did


def _days_ago(days: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat()


def test_a_restarted_renewer_goes_on_counting_failures(renewer_env: dict[str, str]) -> None:
    """Each `--once` run is a renewer that starts afresh (as after a restart by supervisord or of
    the appliance). The count of failures in a row, and when the trouble began, were in memory
    only: every restart wrote `failures: 1`, so a renewal failing for days looked new."""
    _once(renewer_env)
    first = _status(renewer_env)
    assert first["failures"] == 1 and first["failing_since"] == first["last_run"]
    _once(renewer_env)
    second = _status(renewer_env)
    assert second["failures"] == 2, second
    assert second["failing_since"] == first["last_run"]
    assert "the CA is down" in str(second["last_error"])


def test_a_restarted_renewer_keeps_its_backoff_and_last_success(
    renewer_env: dict[str, str],
) -> None:
    """The long-running renewer, restarted after four failed runs: its next failure is the fifth
    (the status page and docxy_cert_renewal_failures say so), its retry waits 16 x retry_base
    rather than starting over at 1 x, and the last success three days ago is not forgotten."""
    status_file = Path(renewer_env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    earlier = {
        "last_run": _days_ago(1),
        "last_success": _days_ago(3),
        "last_error": "certbot renew failed: the CA is down",
        "failures": 4,
        "failing_since": _days_ago(2),
        "next_run": _days_ago(0),
    }
    status_file.write_text(json.dumps(earlier))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "--interval", "86400", "--retry-base", "60"],
        env=renewer_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ran() -> bool:
            assert proc.poll() is None, "the renewer exited"
            return _status(renewer_env).get("last_run") != restamped(earlier["last_run"])

        poll(ran)
        status = _status(renewer_env)
    finally:
        proc.terminate()
        proc.communicate(timeout=HANG)
    assert status["failures"] == 5, status
    assert status["last_success"] == restamped(earlier["last_success"])
    assert status["failing_since"] == restamped(earlier["failing_since"])
    last_run = dt.datetime.fromisoformat(str(status["last_run"]))
    next_run = dt.datetime.fromisoformat(str(status["next_run"]))
    assert next_run - last_run >= dt.timedelta(seconds=60 * 16 - 60), (last_run, next_run)


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"failures": "many", "last_success": 7}', b"\xff\xfe"],
)
def test_a_lost_or_mangled_memory_starts_the_count_afresh(
    renewer_env: dict[str, str], content: bytes
) -> None:
    """A status file cut short, hand-edited or of another version is no reason not to renew."""
    status_file = Path(renewer_env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    status_file.write_bytes(content)
    _once(renewer_env)
    status = _status(renewer_env)
    assert status["failures"] == 1 and status["last_success"] is None, status


def test_a_renewer_restarted_right_after_failures_waits_out_its_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewer restarted just after its fourth failure in a row (a container in a restart
    loop, supervisord restarting a crashed renewer): it ran certbot at once on every start,
    whatever its backoff said, so a loop restarting every minute asked the CA every minute and
    ran into Let's Encrypt's 5 failed validations an hour. Its first run now waits out the
    backoff it restored (4 failures, 60 s base: 8 minutes after the last run)."""
    from scheduler import main as scheduler_main
    from scheduler import settings as settings_mod
    from scheduler.runs import Runs

    config_dir = renewer_settings(tmp_path, monkeypatch)
    last_run = dt.datetime.now(dt.UTC)
    earlier = {"last_run": last_run.isoformat(), "failures": 4, "last_error": "CA down"}
    (config_dir / "status.json").write_text(json.dumps(earlier))
    renewer = Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    scheduler = scheduler_main.build(renewer)
    first = scheduler.get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first >= last_run + dt.timedelta(seconds=480), (last_run, first)


def test_a_renewer_restarted_long_after_its_failures_runs_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backoff already waited out (the last failed run a day ago): run at start, as ever."""
    from scheduler import main as scheduler_main
    from scheduler import settings as settings_mod
    from scheduler.runs import Runs

    config_dir = renewer_settings(tmp_path, monkeypatch)
    earlier = {"last_run": _days_ago(1), "failures": 4, "last_error": "CA down"}
    (config_dir / "status.json").write_text(json.dumps(earlier))
    renewer = Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    before = dt.datetime.now(dt.UTC)
    scheduler = scheduler_main.build(renewer)
    first = scheduler.get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first <= dt.datetime.now(dt.UTC) and first >= before - dt.timedelta(seconds=1)


def test_a_restarted_renewer_owing_an_install_runs_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within its backoff, but the certificate issued last is not the one served (the served
    files lost, the mirror on a bootstrap pair): the first run, which installs it, is not put
    off by the backoff. The key counts too: the issued certificate served beside another key
    (a key file lost or replaced) was taken for installed, and the backoff stood."""
    from scheduler import main as scheduler_main
    from scheduler import settings as settings_mod
    from scheduler.runs import Runs

    config_dir = renewer_settings(tmp_path, monkeypatch)
    self_signed(
        config_dir / "live" / "mirror.test",
        "mirror.test",
        cert_name="fullchain.pem",
        key_name="privkey.pem",
    )
    served, _ = self_signed(tmp_path / "served", "bootstrap")
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(served))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(tmp_path / "served" / "selfsigned-key.pem"))
    last_run = dt.datetime.now(dt.UTC)
    earlier = {"last_run": last_run.isoformat(), "failures": 4, "last_error": "CA down"}
    (config_dir / "status.json").write_text(json.dumps(earlier))
    renewer = Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    first = scheduler_main.build(renewer).get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first <= dt.datetime.now(dt.UTC)
    live = config_dir / "live" / "mirror.test"
    served.write_bytes((live / "fullchain.pem").read_bytes())
    # the issued certificate beside the bootstrap key: a pair the mirror cannot serve
    first = scheduler_main.build(renewer).get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first <= dt.datetime.now(dt.UTC)
    (tmp_path / "served" / "selfsigned-key.pem").write_bytes((live / "privkey.pem").read_bytes())
    first = scheduler_main.build(renewer).get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first >= last_run + dt.timedelta(seconds=480)


def test_a_last_run_in_the_future_puts_the_first_run_off_by_one_backoff_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock stepped back a day since the last failed run (a VM restored, NTP after a bad
    RTC): the renewer waits one backoff from now, not a day and a backoff."""
    from scheduler import main as scheduler_main
    from scheduler import settings as settings_mod
    from scheduler.runs import Runs

    config_dir = renewer_settings(tmp_path, monkeypatch)
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    (config_dir / "status.json").write_text(json.dumps({"last_run": ahead, "failures": 4}))
    renewer = Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    first = scheduler_main.build(renewer).get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=480)


def test_a_renewer_whose_first_run_waits_says_when_in_its_status_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted renewer waiting out its backoff left status.json as the run before the
    restart wrote it: /health showed a next_run already past (or the old schedule) until the
    first run, minutes later. It now writes the delayed time at start, keeping the rest."""
    from scheduler import main as scheduler_main
    from scheduler import settings as settings_mod
    from scheduler.runs import Runs

    config_dir = renewer_settings(tmp_path, monkeypatch)
    last_run = dt.datetime.now(dt.UTC)
    certificate = {"cert_path": "/tls/cert.pem", "serial": "abc"}
    earlier = {
        "last_run": last_run.isoformat(),
        "failures": 4,
        "last_error": "CA down",
        "next_run": last_run.isoformat(),
        "certificate": certificate,
    }
    (config_dir / "status.json").write_text(json.dumps(earlier))
    renewer = Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    first = scheduler_main.build(renewer).get_job(scheduler_main.RENEW_JOB).next_run_time
    status = json.loads((config_dir / "status.json").read_text())
    assert dt.datetime.fromisoformat(status["next_run"]) == first, (status, first)
    assert status["failures"] == 4 and status["last_error"] == "CA down"
    assert status["last_run"] == last_run.isoformat()
    assert status["certificate"] == certificate  # what the served certificate was stays shown


# --- the appliance's stop, a full certificate volume (found by the s19 TLS review) -------------


def test_a_run_cut_short_by_a_stop_is_no_failure_and_puts_nothing_off(
    renewer_env: dict[str, str], tmp_path: Path
) -> None:
    """`docker stop` (or `docker compose up -d` recreating the container) during a run:
    supervisord sends SIGTERM to the renewer's process group, so the run's child and certbot
    end with it. That run was counted as a failure ("the renewal run exited -15 without a
    result", an ERROR line, in /health and the failures gauge), and the next start waited out a
    backoff (5 minutes) before its first run: a first issuance interrupted so began 5 minutes
    late. It is now logged as cut short and leaves the status as it was."""
    from scheduler.runs import Runs
    from scheduler.settings import load

    config_dir = Path(renewer_env["DOCXY_CERTS_CONFIG_DIR"])
    earlier = {"last_run": _days_ago(1), "last_success": _days_ago(1), "failures": 0}
    (config_dir / "status.json").write_text(json.dumps(earlier))
    started = tmp_path / "certbot-started"
    certbot = Path(renewer_env["PATH"].split(os.pathsep)[0]) / "certbot"
    certbot.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 120\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler"],
        env=renewer_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as supervisord starts it
    )
    try:

        def certbot_running() -> bool:
            assert proc.poll() is None, "the renewer exited"
            return started.exists()

        poll(certbot_running)
        os.killpg(proc.pid, signal.SIGTERM)  # supervisord's stopasgroup
        out, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, out
    assert "cut short, not counted as a failure" in out, out
    assert "renewal failed" not in out and "next attempt" not in out, out
    status = _status(renewer_env)
    assert status["failures"] == 0 and status["last_error"] is None, status
    assert status["last_run"] == restamped(earlier["last_run"]), status
    restarted = Runs(load([], renewer_env))
    restarted.restore()
    now = dt.datetime.now(dt.UTC)
    assert restarted.first_run(now) == now  # the next start runs at once


def test_a_status_file_that_cannot_be_written_stops_no_renewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The certificate volume full (it shares the host's disk with the cache and the images)
    or read-only: a renewer restarted within its backoff writes its status at start, and the
    OSError stopped it. supervisord restarted it, it stopped again, went FATAL, and the fatal
    listener took the container down, mirror and all, at every start. Now a warning."""
    import errno

    from scheduler import main as scheduler_main
    from scheduler import runs as runs_mod
    from scheduler import settings as settings_mod

    config_dir = renewer_settings(tmp_path, monkeypatch)
    earlier = {"last_run": dt.datetime.now(dt.UTC).isoformat(), "failures": 3}
    (config_dir / "status.json").write_text(json.dumps(earlier))

    def disk_full(files: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(config_dir / "status.json"))

    monkeypatch.setattr(runs_mod, "write_files_atomic", disk_full)
    renewer = runs_mod.Runs(settings_mod.load(["--interval", "86400", "--retry-base", "60"]))
    renewer.restore()
    with caplog.at_level(logging.WARNING, logger="scheduler.renewal"):
        scheduler = scheduler_main.build(renewer)  # raised OSError
    first = scheduler.get_job(scheduler_main.RENEW_JOB).next_run_time
    assert first > dt.datetime.now(dt.UTC)  # still waits out its backoff
    assert "cannot write the renewer status" in caplog.text
    assert "No space left on device" in caplog.text
