"""Review of the certificate renewer: a bad ``[scheduler]`` setting that took the appliance
down, a one-off run's outcome overwritten by the running renewer, a one-off run stopped by a
signal without a trace, a pair not valid yet installed over a good one, and a wait for the
mirror that took any 200 for the mirror.

Every listener here is on 127.0.0.158, ports 8900-8949.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509

from docxy.http.health import health_report
from docxy.tls import certs
from docxy.tls.context import CertError, self_signed
from lab.certs import issue
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer, wait_for
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_scheduler import (
    HANG,
    FakeCertbot,
    fake_certbot_on_path,
    issued_lineage,
    poll,
    read_status,
)
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)
from tests.unit.test_scheduler import fake_certbot as fake_certbot  # noqa: F401  (fixture)

DOMAIN = "mirror.test"
HOST = "127.0.0.158"
PORTS = range(8900, 8950)


def stop(proc: subprocess.Popen[str]) -> str:
    """Kill `proc` if it still runs; its output (its pipe closed either way)."""
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


# --- 1. a bad [scheduler] setting --------------------------------------------------------------


def test_a_bad_scheduler_setting_leaves_the_renewer_up_and_says_why(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``DOCXY_SCHEDULER_INTERVAL=soon``: the renewer exited 2 at start, supervisord took it
    for FATAL and supervisor-fatal.sh stopped the container, mirror and all, in a loop. Now
    it stays up, runs nothing, and its status file, /health and ``docxy certs status`` say
    why."""
    issued_lineage(Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / DOMAIN)
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    proc_env["DOCXY_SCHEDULER_INTERVAL"] = "soon"
    status_file = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler"],
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def refusal_written() -> bool:
            assert proc.poll() is None, "the renewer exited"
            return status_file.exists() and "refused" in json.loads(status_file.read_text())

        poll(refusal_written)
        status = read_status(status_file)
        assert "scheduler.interval" in str(status["refused"]), status
        assert status["next_run"] is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "scheduler.interval" in out and "no renewal is scheduled" in out, out
    assert not calls.exists()  # certbot never ran

    # /health: degraded, with the reason
    state = make_state(tmp_path / "cache")
    state.extras["health"] = {"renewal": lambda: certs.renewal_status(status_file.parent)}
    report = health_report(state)
    assert report["status"] == "degraded", report
    assert "scheduler.interval" in str(report["renewal"])
    from docxy.observe import status as status_page

    assert "settings refused: scheduler.interval" in status_page._certificate(
        None, certs.renewal_status(status_file.parent)
    )

    # docxy certs status says it
    from docxy.cli.main import main as docxy_main

    cert, key = self_signed(tmp_path / "tls", DOMAIN)
    capsys.readouterr()
    code = docxy_main(["certs", "status", "--cert", str(cert), "--key", str(key)])
    said = capsys.readouterr()
    assert "scheduler.interval" in said.out + said.err, said
    assert code != 0


def test_once_with_a_bad_scheduler_setting_still_fails(
    env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A one-shot command fails loudly: exit 2, as before."""
    monkeypatch.setenv("DOCXY_SCHEDULER_INTERVAL", "soon")
    assert scheduler_main.main(["--once"]) == 2
    assert "scheduler.interval" in capsys.readouterr().err
    assert not (Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json").exists()


def test_a_setting_the_mirror_refuses_too_still_stops_the_renewer(
    env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not the renewer's alone: the mirror does not start either, and the container going
    down says so (supervisord's FATAL). Returns at once, in this process."""
    monkeypatch.setenv("DOCXY_SCHEDULR_HOUR", "1")  # a mistyped section: refused by all
    assert scheduler_main.main([]) == 2
    monkeypatch.delenv("DOCXY_SCHEDULR_HOUR")
    monkeypatch.setenv("DOCXY_SCHEDULER_HOUR", "13")
    monkeypatch.delenv("DOCXY_CERTS_CONFIG_DIR")  # nowhere to say it: refused as before
    assert scheduler_main.main([]) == 2


def test_a_renewer_started_with_good_settings_clears_the_refusal(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    path = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"failures": 0, "refused": "scheduler.interval: bad"}))
    issued_lineage(fake_certbot.live)
    running = Renewer(settings_mod.load(["--interval", "3600"]))
    running.restore()
    scheduler_main.build(running).get_job(scheduler_main.RENEW_JOB).func()
    assert "refused" not in json.loads(path.read_text())


# --- 2. a one-off run during the renewer's own --------------------------------------------------


def test_a_one_off_run_made_during_the_renewers_run_is_not_overwritten(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The renewer's run (certbot failing, e.g. on the lock the one-off run's certbot holds)
    ends after a ``--once`` that began later and succeeded: the renewer wrote its failure
    over the one-off run's success, the newer outcome."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    running = Renewer(settings)
    scheduler = scheduler_main.build(running)  # not started: its job is called here
    job = scheduler.get_job(scheduler_main.RENEW_JOB).func
    real_renew = fake_certbot.renew
    once_codes: list[int] = []
    calls: list[str] = []

    def renew(**kwargs: object) -> str:
        calls.append("renew")
        if len(calls) == 1:  # the renewer's run: a --once begins and ends during it
            once_codes.append(scheduler_main.main(["--once"]))
            raise certs.CertbotError("certbot renew failed: another instance is running")
        return real_renew(**kwargs)

    monkeypatch.setattr(certs, "renew", renew)
    job()
    assert once_codes == [0]
    status = json.loads(settings.status_file.read_text())
    assert status["failures"] == 0 and status["last_error"] is None, status
    assert status["last_success"] == status["last_run"], status


def test_a_one_off_run_does_not_overwrite_a_newer_run_of_the_renewer(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other way round: the renewer's run began during the one-off run and ended first."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    running = Renewer(settings)
    job = scheduler_main.build(running).get_job(scheduler_main.RENEW_JOB).func
    real_renew = fake_certbot.renew
    nested: list[int] = []

    def renew(**kwargs: object) -> str:
        if not nested:  # the one-off run's: the renewer's run begins and succeeds during it
            nested.append(1)
            job()
            raise certs.CertbotError("certbot renew failed: another instance is running")
        return real_renew(**kwargs)

    monkeypatch.setattr(certs, "renew", renew)
    assert scheduler_main.main(["--once"]) == 1  # its own outcome, said by its exit
    status = json.loads(settings.status_file.read_text())
    assert status["failures"] == 0 and status["last_error"] is None, status
    assert status["last_success"] == status["last_run"], status  # the renewer's run


# --- 3. a signal during --once ------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_once_leaves_a_status(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    signum: signal.Signals,
) -> None:
    lineage = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / DOMAIN
    issued_lineage(lineage)
    started = tmp_path / "certbot-started"
    proc_env = fake_certbot_on_path(tmp_path, f"touch {started}\nexec sleep 20\n")
    status_file = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "--once"],
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        poll(lambda: started.exists() or proc.poll() is not None)
        assert proc.poll() is None
        proc.send_signal(signum)
        proc.wait(timeout=HANG)
    finally:
        out = stop(proc)
    assert proc.returncode == 128 + signum, out
    assert status_file.exists(), out
    status = read_status(status_file)
    interrupted = status.get("interrupted")
    assert isinstance(interrupted, dict), status
    assert interrupted["signal"] == signum.name
    assert status["failures"] == 0  # a stop, not a failure of the renewal


# --- 4. a pair not valid yet --------------------------------------------------------------------


def not_yet_valid_lineage(live: Path, hours: float = 3) -> None:
    """certbot's lineage of a certificate whose notBefore is `hours` ahead (clock skew)."""
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    issue(DOMAIN, names=[x509.DNSName(DOMAIN)], valid_from=ahead).write(
        live / "fullchain.pem", live / "privkey.pem"
    )


def test_a_pair_not_valid_yet_is_not_installed_over_a_valid_one(tmp_path: Path) -> None:
    served_cert, served_key = self_signed(tmp_path / "served", DOMAIN)
    before = served_cert.read_bytes(), served_key.read_bytes()
    live = tmp_path / "live" / DOMAIN
    not_yet_valid_lineage(live)
    with pytest.raises(CertError, match="not valid before"):
        certs.install(live, served_cert, served_key)
    assert (served_cert.read_bytes(), served_key.read_bytes()) == before


def test_a_pair_not_valid_yet_is_installed_where_nothing_is_served(tmp_path: Path) -> None:
    """Nothing better to keep: a mirror with no pair cannot start at all."""
    served_cert, served_key = tmp_path / "served" / "cert.pem", tmp_path / "served" / "key.pem"
    live = tmp_path / "live" / DOMAIN
    not_yet_valid_lineage(live)
    assert certs.install(live, served_cert, served_key) is True


def test_the_renewer_keeps_the_served_pair_until_the_new_one_is_valid(
    tmp_path: Path,
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed(tmp_path / "tls", DOMAIN)
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    before = cert.read_bytes()
    issued_lineage(fake_certbot.live)

    def renew(**kwargs: object) -> str:
        not_yet_valid_lineage(fake_certbot.live)
        return ""

    monkeypatch.setattr(certs, "renew", renew)
    renewer = Renewer(settings_mod.load([]))
    assert renewer.run() is False  # retried with backoff: installed once valid
    assert "not valid before" in str(renewer.last_error)
    assert cert.read_bytes() == before
    # once valid (here: the lineage renewed again with a valid one), the next run installs it
    monkeypatch.setattr(certs, "renew", fake_certbot.renew)
    assert renewer.run() is True, renewer.last_error
    assert cert.read_bytes() == (fake_certbot.live / "fullchain.pem").read_bytes()


# --- 5. the wait for the mirror -----------------------------------------------------------------


class StandIn:
    """A server on HOST (a port of PORTS) answering each GET with 200 and `body`."""

    def __init__(self, body: bytes) -> None:
        class Answer(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        for port in PORTS:
            try:
                self.server = ThreadingHTTPServer((HOST, port), Answer)
                break
            except OSError:
                continue
        else:
            raise RuntimeError(f"no free port in {PORTS} on {HOST}")
        self.url = f"http://{HOST}:{self.server.server_address[1]}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, name="stand-in")


@pytest.fixture
def stand_in(request: pytest.FixtureRequest) -> Iterator[StandIn]:
    server = StandIn(request.param)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


@pytest.mark.parametrize(
    "stand_in", [b"OK", b'{"status": "UP"}', b"[1, 2]", b"<html>hi</html>"], indirect=True
)
def test_another_servers_200_is_not_the_mirror_up(stand_in: StandIn) -> None:
    with pytest.raises(ValueError, match="did not answer within"):
        wait_for([stand_in.url], 1.0)


@pytest.mark.parametrize("stand_in", [b'{"status": "ok", "version": "1.2.3"}'], indirect=True)
def test_the_mirrors_own_report_is_the_mirror_up(stand_in: StandIn) -> None:
    wait_for([stand_in.url], 5.0)
