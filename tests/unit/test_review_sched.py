"""Review of the certificate renewer (scheduler/): a one-off run's status, waiting for the
mirror on each of its addresses, a pidfile beside a reload command."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.tls.context import self_signed
from lab.ports import on_own_port
from scheduler import main as scheduler_main
from scheduler import renewal
from scheduler import settings as settings_mod
from scheduler.renewal import Renewer
from tests.unit.test_scheduler import FakeCertbot, issued_lineage, poll, read_status
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)
from tests.unit.test_scheduler import fake_certbot as fake_certbot  # noqa: F401  (fixture)
from tests.unit.test_scheduler import hup_listener as hup_listener  # noqa: F401  (fixture)


def status_left_by_the_renewer(config_dir: Path, next_run: dt.datetime) -> Path:
    """The status file as the long-running renewer leaves it after a successful run."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "status.json"
    earlier = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).isoformat()
    status = {
        "last_run": earlier,
        "last_success": earlier,
        "last_error": None,
        "failures": 0,
        "failing_since": None,
        "next_run": next_run.isoformat(),
        "reload_pending": False,
    }
    path.write_text(json.dumps(status))
    return path


def test_a_one_off_run_keeps_the_next_run_the_renewer_scheduled(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """`python -m scheduler --once` beside the running renewer wrote `next_run: null` into the
    file both share, and the status page said "not scheduled" until the renewer's next run,
    though that run was still due as before."""
    issued_lineage(fake_certbot.live)
    due = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=5)).replace(microsecond=0)
    path = status_left_by_the_renewer(Path(env["DOCXY_CERTS_CONFIG_DIR"]), due)
    assert scheduler_main.main(["--once"]) == 0
    assert fake_certbot.calls == ["renew"]
    status = read_status(path)
    assert json.loads(path.read_text())["next_run"] == due.isoformat(), status
    assert status["last_run"] != status["next_run"]


def test_a_one_off_run_does_not_report_a_next_run_that_has_passed(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """A next run already in the past (no renewer running: a host install's cron) is not
    something a one-off run knows to be true: it writes none."""
    issued_lineage(fake_certbot.live)
    gone = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    path = status_left_by_the_renewer(Path(env["DOCXY_CERTS_CONFIG_DIR"]), gone)
    assert scheduler_main.main(["--once"]) == 0
    assert json.loads(path.read_text())["next_run"] is None


#: This review's loopback address and ports (the machine is shared: no other address is used).
HOST = "127.0.0.1"


@pytest.fixture
def health_on_loopback() -> Iterator[tuple[int, list[str]]]:
    """A plain-HTTP /health answering 200 on HOST, a free port; (its port, paths asked)."""
    asked: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            body = b'{"status": "ok", "version": "test"}'  # Docxy's report, not any 200
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = on_own_port(lambda port: ThreadingHTTPServer((HOST, port), Health))
    thread = threading.Thread(target=server.serve_forever, name="health")
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_run_waits_for_a_real_listener_and_asks_it_once(
    fake_certbot: FakeCertbot,  # noqa: F811
    health_on_loopback: tuple[int, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tuple of URLs still reaches a real socket (the listener's one address here)."""
    port, asked = health_on_loopback
    issued_lineage(fake_certbot.live)
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", f"{HOST}:{port}")
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    renewer = Renewer(settings_mod.load(["--wait-for-mirror"]))
    assert renewer.settings.wait_for_mirror == (f"http://{HOST}:{port}/health",)
    assert renewer.run() is True, renewer.last_error
    assert asked == ["/health"] and fake_certbot.calls == ["renew"]


@pytest.mark.usefixtures("env")
def test_wait_for_mirror_knows_each_address_of_a_wildcard_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", "[::]:7301")
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    assert settings_mod.load(["--wait-for-mirror"]).wait_for_mirror == (
        "http://127.0.0.1:7301/health",
        "http://[::1]:7301/health",
    )


def test_a_run_goes_ahead_when_any_address_of_the_mirror_answers(
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mirror on `[::]` bound to IPv6 alone answers on ::1, not on 127.0.0.1: the run waited
    out its 2 minutes on the first address, failed without asking the CA and did so again at
    every retry, though the mirror (and its HTTP-01 tokens) was up all along. No socket is
    opened: the asks are answered here, as the two addresses would answer them."""
    issued_lineage(fake_certbot.live)
    asked: list[str] = []

    def get(url: str, **kwargs: object) -> httpx.Response:
        asked.append(url)
        if "127.0.0.1" in url:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"status": "ok", "version": "test"})

    monkeypatch.setattr(httpx, "get", get)
    monkeypatch.setattr(renewal, "MIRROR_WAIT", 0.0)
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", "[::]:7301")
    monkeypatch.setenv("DOCXY_SERVER_PUBLIC_URL", "https://mirror.test")
    renewer = Renewer(settings_mod.load(["--wait-for-mirror"]))
    assert renewer.run() is True, renewer.last_error
    assert asked == ["http://127.0.0.1:7301/health", "http://[::1]:7301/health"]
    assert fake_certbot.calls == ["renew"]


def test_a_mirror_that_answers_nowhere_is_named_at_each_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def get(url: str, **kwargs: object) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx, "get", get)
    urls = ("http://127.0.0.1:7301/health", "http://[::1]:7301/health")
    with pytest.raises(ValueError) as caught:
        renewal.wait_for(urls, 0.0)
    said = str(caught.value)
    assert "127.0.0.1:7301" in said and "[::1]:7301" in said and "within 0 s" in said


def test_a_pidfile_beside_a_reload_command_is_signalled_too(
    tmp_path: Path,
    fake_certbot: FakeCertbot,  # noqa: F811
    hup_listener: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both set (a pidfile in the config file, a reload command from the flags): the pidfile
    was dropped without a word, and a mirror the command did not reach kept the old
    certificate until its file watch saw the new one."""
    pidfile, seen = hup_listener
    cert, key = self_signed(tmp_path / "tls", "bootstrap")
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    ran = tmp_path / "ran"
    command = f"{sys.executable} -c \"open({str(ran)!r}, 'a').write('ran\\n')\""
    settings = settings_mod.load(["--pidfile", str(pidfile), "--reload-command", command])
    renewer = Renewer(settings)
    assert renewer.run() is True, renewer.last_error
    assert ran.read_text() == "ran\n"
    poll(lambda: seen.exists() and seen.read_text() == "hup\n")
    assert not renewer.reload_pending


def test_a_stale_pidfile_beside_a_reload_command_fails_the_run_and_keeps_the_reload_owed(
    tmp_path: Path,
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed(tmp_path / "tls", "bootstrap")
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    pidfile = tmp_path / "gone.pid"
    pidfile.write_text("not a pid\n")
    ran = tmp_path / "ran"
    command = f"{sys.executable} -c \"open({str(ran)!r}, 'a').write('ran\\n')\""
    settings = settings_mod.load(["--pidfile", str(pidfile), "--reload-command", command])
    renewer = Renewer(settings)
    assert renewer.run() is False
    assert "cannot signal the mirror" in str(renewer.last_error)
    assert ran.read_text() == "ran\n"  # the command still ran
    assert renewer.reload_pending  # the next run tells the mirror again


def test_a_pidfile_naming_no_possible_pid_fails_the_run_with_its_reason(
    tmp_path: Path,
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two pids run together in one pidfile (a wrapper that appends without a newline) make a
    number no pid can be: os.pidfd_open and os.kill raised OverflowError, which no one caught.
    `--once` ended in a traceback without writing its status; the renewer's run ended as "exited
    1 without a result", the reason only in a traceback in the log."""
    cert, key = self_signed(tmp_path / "tls", "bootstrap")
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(key))
    pidfile = tmp_path / "docxy.pid"
    pidfile.write_text("3456712345\n")
    renewer = Renewer(settings_mod.load(["--pidfile", str(pidfile)]))
    assert renewer.run() is False
    said = str(renewer.last_error)
    assert f"cannot signal the mirror via {pidfile}" in said and "3456712345" in said, said
    assert renewer.reload_pending  # installed; the mirror is told on a later run
