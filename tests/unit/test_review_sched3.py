"""Review of the renewer and the mirror's TLS: a served certificate clients refuse for its
validity (not yet valid, an expired intermediate), a one-off run that ends in an exception of a
kind it does not list, and a one-off run's success the running renewer did not take up."""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from docxy.http.health import health_report
from docxy.tls import certs
from docxy.tls.context import ReloadableTLS
from lab.acme import running_pebble
from lab.certs import issue
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler import worker
from scheduler.renewal import Renewer
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_scheduler import FakeCertbot, issued_lineage, read_status
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)
from tests.unit.test_scheduler import fake_certbot as fake_certbot  # noqa: F401  (fixture)

DOMAIN = "mirror.test"
NOW = dt.datetime.now(dt.UTC)


def served_chain(
    tmp_path: Path,
    *,
    leaf_from: dt.datetime | None = None,
    intermediate_from: dt.datetime | None = None,
    intermediate_days: float = 30,
) -> tuple[Path, Path]:
    """A CA's certificate for DOMAIN and its intermediate, as certbot's fullchain.pem holds
    them, and its key; (cert path, key path)."""
    root = issue("review root", ca=True, days=365)
    middle = issue(
        "review intermediate",
        root,
        ca=True,
        days=intermediate_days,
        valid_from=intermediate_from,
    )
    leaf = issue(DOMAIN, middle, names=[x509.DNSName(DOMAIN)], days=10, valid_from=leaf_from)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(leaf.cert_pem + middle.cert_pem)
    key.write_bytes(leaf.key_pem)
    key.chmod(0o600)
    return cert, key


def health_of(tmp_path: Path, tls: ReloadableTLS) -> dict[str, object]:
    """/health of a mirror serving ``tls``."""
    state = make_state(tmp_path)
    state.extras["health"] = {"tls": tls.status}
    return health_report(state)


def test_a_valid_chain_has_no_warning(tmp_path: Path) -> None:
    cert, key = served_chain(tmp_path)
    assert ReloadableTLS(cert, key, domain=DOMAIN).status()["warning"] is None
    assert health_of(tmp_path, ReloadableTLS(cert, key, domain=DOMAIN))["status"] == "ok"
    assert certs.describe_files(cert, key, DOMAIN)["warning"] is None


def test_a_certificate_not_yet_valid_is_reported(tmp_path: Path) -> None:
    """Its notBefore three hours ahead (a clock problem, this host's or the CA's): every client
    whose clock agrees with this host's refuses it (x509: certificate has expired or is not
    yet valid), and /health said ok: neither expires_soon nor a warning."""
    cert, key = served_chain(tmp_path, leaf_from=NOW + dt.timedelta(hours=3))
    tls = ReloadableTLS(cert, key, domain=DOMAIN).status()
    warning = str(tls["warning"] or "")
    assert "not valid before" in warning and "clock" in warning, tls
    assert tls["expires_soon"] is False  # the warning, not expires_soon, is what degrades
    assert health_of(tmp_path, ReloadableTLS(cert, key, domain=DOMAIN))["status"] == "degraded"
    assert "not valid before" in str(certs.describe_files(cert, key, DOMAIN)["warning"])


def test_an_expired_intermediate_is_reported(tmp_path: Path) -> None:
    """The leaf is valid for days yet, the intermediate that issued it has expired: clients
    refuse the chain; /health said ok."""
    cert, key = served_chain(
        tmp_path, intermediate_from=NOW - dt.timedelta(days=10), intermediate_days=5
    )
    tls = ReloadableTLS(cert, key, domain=DOMAIN).status()
    warning = str(tls["warning"] or "")
    assert "intermediate" in warning and "expired" in warning, tls
    assert tls["expires_soon"] is False
    assert health_of(tmp_path, ReloadableTLS(cert, key, domain=DOMAIN))["status"] == "degraded"
    assert "expired" in str(certs.describe_files(cert, key, DOMAIN)["warning"])


def test_without_a_domain_a_certificate_not_yet_valid_is_reported_too(tmp_path: Path) -> None:
    """Not a matter of which certificate the operator chose: no client takes it, whoever
    installed it."""
    cert, key = served_chain(tmp_path, leaf_from=NOW + dt.timedelta(hours=3))
    assert "not valid before" in str(ReloadableTLS(cert, key).status()["warning"])


def test_a_one_off_run_ending_in_an_unlisted_exception_still_writes_its_status(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`python -m scheduler --once` whose run raised something the run does not list ended in
    a traceback and wrote nothing: /health and the status page kept showing the run before."""
    issued_lineage(fake_certbot.live)
    path = Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "status.json"
    earlier = (NOW - dt.timedelta(hours=3)).isoformat()
    path.write_text(json.dumps({"last_run": earlier, "last_success": earlier, "failures": 0}))

    def renew(**kwargs: object) -> str:
        raise subprocess.SubprocessError("certbot's pipe broke")

    monkeypatch.setattr(certs, "renew", renew)
    assert scheduler_main.main(["--once"]) == 1
    status = json.loads(path.read_text())
    assert status["last_run"] > earlier and status["failures"] == 1, status
    assert "SubprocessError" in str(status["last_error"]), status
    assert "certbot's pipe broke" in str(status["last_error"])
    assert status["last_success"] == earlier


def test_a_one_off_success_is_taken_up_by_the_running_renewer(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """The running renewer failing for three runs, then a `--once` that succeeds: the next
    run of the renewer went on from its own count. A failure then showed 4 in a row since the
    first of the three and no success since, on /health and the status page, and backed off
    as the fourth failure (the longest wait) rather than the first."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    running = Renewer(settings)
    scheduler = scheduler_main.build(running)  # not started: its job is called here
    job = scheduler.get_job(scheduler_main.RENEW_JOB).func
    fake_certbot.fail_next = 3
    for _ in range(3):
        job()
    assert read_status(settings.status_file)["failures"] == 3

    assert scheduler_main.main(["--once"]) == 0
    once = json.loads(settings.status_file.read_text())
    assert once["failures"] == 0 and once["last_success"] == once["last_run"]

    fake_certbot.fail_next = 1
    job()
    status = json.loads(settings.status_file.read_text())
    assert status["failures"] == 1, status
    assert status["last_success"] == once["last_success"], status
    assert status["failing_since"] == status["last_run"] > once["last_run"], status
    assert fake_certbot.calls == ["renew"] * 5


def test_the_worker_child_hands_an_unlisted_exception_over_as_its_reason(
    fake_certbot: FakeCertbot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The long-running renewer's run in its child: the same exception ended the child in a
    traceback, and the status file said only "the renewal run exited 1 without a result"."""
    issued_lineage(fake_certbot.live)

    def renew(**kwargs: object) -> str:
        raise subprocess.SubprocessError("certbot's pipe broke")

    monkeypatch.setattr(certs, "renew", renew)
    monkeypatch.setattr(sys, "stdin", io.StringIO("{}"))
    assert worker.main([]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "SubprocessError: certbot's pipe broke" in str(result["error"]), result


def test_a_status_file_older_than_the_renewers_last_run_is_not_taken_up(
    env: dict[str, str],  # noqa: F811
    fake_certbot: FakeCertbot,  # noqa: F811
) -> None:
    """One the renewer could not write since (its volume full) holds an older state: the
    renewer's own count stands."""
    issued_lineage(fake_certbot.live)
    settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
    running = Renewer(settings)
    job = scheduler_main.build(running).get_job(scheduler_main.RENEW_JOB).func
    fake_certbot.fail_next = 3
    job()
    job()
    older = (NOW - dt.timedelta(days=1)).isoformat()
    settings.status_file.write_text(json.dumps({"last_run": older, "failures": 0}))
    job()
    assert json.loads(settings.status_file.read_text())["failures"] == 3


#: This review's own loopback address and port range (the machine is shared).
HOST = "127.0.0.155"
PORTS = range(9400, 9500)


class OwnPorts:
    """Ports of PORTS that bind on HOST now, each handed out once."""

    def __init__(self) -> None:
        self.given: set[int] = set()

    def __call__(self) -> int:
        for port in PORTS:
            if port in self.given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((HOST, port))
                except OSError:
                    continue
            self.given.add(port)
            return port
        raise RuntimeError(f"no free port of {PORTS} on {HOST}")


class Webroot:
    """The mirror's part in HTTP-01: certs.webroot served on HOST, started and stopped at will
    (stopped, pebble's validation is refused and certbot fails)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        root = self.root

        class Files(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, self.port), Files)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webroot")
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
        self.server = self.thread = None


def test_with_certbot_and_pebble_a_one_off_success_resets_the_running_renewers_count(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault 2 with the real certbot against pebble (on this review's address and ports): the
    running renewer's issuance fails twice (nothing serves the webroot), a `--once` then
    succeeds, and the renewer's next run fails again (pebble's certificates are always due, and
    pebble is stopped by then: certbot cannot renew whatever state pebble kept of the order):
    one failure in a row, after the `--once`'s success. (A CI run once saw that last run end
    with no failure while pebble was up and only the webroot stopped.)"""
    pick = OwnPorts()
    webroot = Webroot(Path(env["DOCXY_CERTS_WEBROOT"]), pick())
    Path(env["DOCXY_CERTS_WEBROOT"]).mkdir(parents=True, exist_ok=True)
    with running_pebble(tmp_path / "pebble", webroot.port, host=HOST, pick_port=pick) as pebble:
        monkeypatch.setenv("DOCXY_CERTS_ACME_SERVER", pebble.directory)
        monkeypatch.setenv("DOCXY_CERTS_CA_BUNDLE", str(pebble.tls_ca))
        settings = settings_mod.load(["--interval", "3600", "--retry-base", "60"])
        running = Renewer(settings)
        job = scheduler_main.build(running).get_job(scheduler_main.RENEW_JOB).func
        job()
        job()
        assert read_status(settings.status_file)["failures"] == 2, pebble.logs()
        webroot.start()
        try:
            assert scheduler_main.main(["--once"]) == 0, pebble.logs()
        finally:
            webroot.stop()
        once = json.loads(settings.status_file.read_text())
        said = pebble.logs()
    job()
    status = json.loads(settings.status_file.read_text())
    assert once["failures"] == 0 and once["last_success"] is not None
    assert status["failures"] == 1, (status, once, said)
    assert status["last_success"] == once["last_success"]
    assert "certbot renew failed" in str(status["last_error"]), status
