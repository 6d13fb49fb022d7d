"""The container's runtime flow without docker: scripts/entrypoint.sh run as the image runs it.

    entrypoint.sh         DOCXY_DOMAIN -> certs/tls/listen settings, then exec supervisord
    supervisord           runs the mirror (`python -m docxy serve`) and the renewer
                          (`python -m scheduler`)
    the mirror            starts on a self-signed bootstrap certificate it writes itself
    the renewer           at start: certbot through the mirror's webroot against pebble, installs
                          the certificate where the mirror serves it, `supervisorctl signal HUP`

Only the image's paths are moved (DOCXY_STATE_DIR, DOCXY_RUN_DIR, DOCXY_SUPERVISOR_CONF) and the
ports are loopback ones; the ACME server is pebble with challtestsrv resolving the domain to
127.0.0.1, as in tests/e2e/test_certs_e2e.py. The upstream is a closed loopback port: nothing pulls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from lab.acme import DOMAIN, EMAIL, Pebble, running_pebble
from lab.ports import LOOPBACK, free_port
from tests.e2e.test_certs_e2e import served_cert
from tests.e2e.waiting import poll
from tests.unavailable import need_binary

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "scripts" / "entrypoint.sh"
SUPERVISOR_CONF = REPO_ROOT / "scripts" / "supervisord.conf"
DEAD_UPSTREAM = "http://127.0.0.1:9"  # discard port, closed here: the appliance never pulls
DEADLINE = 90.0


def base_env(tmp_path: Path) -> dict[str, str]:
    """The machine's environment without its DOCXY_* settings; this checkout's python first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }


@dataclass
class Appliance:
    """The entrypoint's process (supervisord after the exec) and what it was given."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    conf: Path
    state: Path
    http_port: int
    tls_port: int
    log: Path

    @property
    def served_cert(self) -> Path:
        return self.state / "certs" / "served" / "fullchain.pem"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def program_pid(self, program: str) -> int:
        proc = subprocess.run(
            ["supervisorctl", "-c", str(self.conf), "pid", program],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        text = proc.stdout.strip()
        return int(text) if text.isdigit() and text != "0" else 0

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"http://{LOOPBACK}:{self.http_port}/health", timeout=5)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


@contextlib.contextmanager
def running_appliance(
    tmp_path: Path, pebble: Pebble, http_port: int, email: str | None = EMAIL
) -> Iterator[Appliance]:
    need_binary("supervisord")
    need_binary("supervisorctl")
    # Installed under another name than the repository's, as DOCXY_SUPERVISOR_CONF allows: the
    # renewer's reload command must not depend on where the file is.
    conf = tmp_path / "etc" / "appliance.conf"
    conf.parent.mkdir()
    shutil.copyfile(SUPERVISOR_CONF, conf)
    state, run_dir = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run_dir.mkdir()
    tls_port = free_port()
    env = base_env(tmp_path) | {
        "DOCXY_DOMAIN": DOMAIN,
        "DOCXY_STATE_DIR": str(state),
        "DOCXY_RUN_DIR": str(run_dir),
        "DOCXY_SUPERVISOR_CONF": str(conf),
        "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{http_port}",
        "DOCXY_SERVER_TLS_LISTEN": f"{LOOPBACK}:{tls_port}",
        # Not the default 127.0.0.1:9180, which two appliances (or tests) at once would share.
        "DOCXY_SERVER_ADMIN_LISTEN": f"{LOOPBACK}:{free_port()}",
        "DOCXY_UPSTREAM_REGISTRY": DEAD_UPSTREAM,
        "DOCXY_CERTS_ACME_SERVER": pebble.directory,
        "DOCXY_CERTS_CA_BUNDLE": str(pebble.tls_ca),
        "REQUESTS_CA_BUNDLE": str(pebble.tls_ca),
        # No short retry: the first run at start waits for the mirror (--wait-for-mirror in
        # supervisord.conf), so it must succeed the first time.
        "DOCXY_SCHEDULER_CERTBOT_TIMEOUT": "60",
    }
    if email is not None:
        env["DOCXY_EMAIL"] = email
    log_path = tmp_path / "appliance.log"
    # O_APPEND, like the pipe a container runtime gives: supervisord's children reopen /dev/stdout.
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["bash", str(ENTRYPOINT)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    appliance = Appliance(proc, env, conf, state, http_port, tls_port, log_path)
    try:
        yield appliance
    finally:
        if proc.poll() is None:
            proc.terminate()  # supervisord stops its children; SIGKILL would orphan them
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --- processes ----------------------------------------------------------------------------------


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(root: int) -> set[int]:
    """Every process below `root` now (a snapshot of /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


# --- what a client sees -------------------------------------------------------------------------


def handshake(port: int, root: Path | None = None) -> x509.Certificate | None:
    """The served certificate, or None while nothing listens or (with `root`) it doesn't verify."""
    try:
        return served_cert(port, root)
    except (OSError, ssl.SSLError):
        return None


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


# --- the appliance's first start with a domain --------------------------------------------------


def test_entrypoint_bootstraps_obtains_reloads_and_stops_cleanly(tmp_path: Path) -> None:
    http_port = free_port()  # the mirror's plain HTTP: where pebble validates HTTP-01
    with (
        running_pebble(tmp_path / "pebble", http_port) as pebble,
        running_appliance(tmp_path, pebble, http_port) as appliance,
    ):
        supervisord = appliance.proc.pid
        seen: set[int] = set()

        def note_children() -> set[int]:
            now = descendants(supervisord)
            seen.update(now)
            return now

        try:
            # 1. HTTPS comes up on the bootstrap certificate the mirror wrote itself.
            first: list[x509.Certificate] = []

            def bootstrap_served() -> bool:
                note_children()
                assert appliance.proc.poll() is None, appliance.output()
                cert = handshake(appliance.tls_port)
                if cert is not None:
                    first.append(cert)
                return bool(first)

            poll(bootstrap_served, DEADLINE, "HTTPS listening")
            bootstrap = first[0]
            assert is_self_signed(bootstrap), bootstrap.issuer.rfc4514_string()
            assert "Pebble" not in bootstrap.issuer.rfc4514_string()
            san = bootstrap.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.value.get_values_for_type(x509.DNSName) == [DOMAIN]

            # 2. The renewer obtains through the webroot and the mirror switches to it.
            issued: list[x509.Certificate] = []

            def pebble_cert_served() -> bool:
                note_children()
                cert = handshake(appliance.tls_port, pebble.root)  # chain and name verified
                if cert is not None:
                    issued.append(cert)
                return bool(issued)

            poll(pebble_cert_served, DEADLINE, "pebble's certificate served\n" + pebble.logs())
            leaf = issued[0]
            assert "Pebble Intermediate CA" in leaf.issuer.rfc4514_string()
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.value.get_values_for_type(x509.DNSName) == [DOMAIN]
            installed = x509.load_pem_x509_certificate(appliance.served_cert.read_bytes())
            assert leaf.serial_number == installed.serial_number != bootstrap.serial_number

            # 3. /health on the plain port: the served certificate and a successful renewal.
            def renewal_recorded() -> bool:
                return bool(appliance.health().get("renewal", {}).get("last_success"))

            poll(renewal_recorded, DEADLINE, "renewal status in /health")
            health = appliance.health()
            assert health["tls"]["serial"] == format(leaf.serial_number, "x")
            assert health["tls"]["sans"] == [DOMAIN]
            assert health["tls"]["reload_failing_since"] is None
            # The public view (no certbot words: /status.json has them) of a run that succeeded:
            # the last run is the last success, no run failing since (a failed run would leave
            # last_success behind last_run, failing_since set and failures counted).
            renewal = health["renewal"]
            assert "error" not in renewal, renewal  # the renewer's status file read
            assert renewal["last_run"] == renewal["last_success"], renewal
            assert renewal["failing_since"] is None and renewal["failures"] == 0, renewal
            assert renewal["certificate"]["serial"] == format(leaf.serial_number, "x")

            # 4. Plain HTTP redirects to the public HTTPS URL, except /health.
            response = httpx.get(f"http://{LOOPBACK}:{http_port}/v2/?n=1", timeout=5)
            assert response.status_code == 308
            assert response.headers["location"] == f"https://{DOMAIN}/v2/?n=1"

            # The switch came from the renewer's supervisorctl HUP, not the 30 s file watch.
            output = appliance.output()
            assert "mirror told by reload command" in output, output
            assert "TLS reload: new certificate loaded" in output, output

            # 5. The entrypoint exec'd supervisord (run in-process by scheduler.supervise): its
            # pid is supervisord's, and SIGTERM to it stops the mirror, the renewer and
            # everything they started.
            assert "scheduler.supervise" in cmdline(supervisord)
            programs = {appliance.program_pid("docxy"), appliance.program_pid("scheduler")}
            assert 0 not in programs and programs <= note_children(), programs
            appliance.proc.send_signal(signal.SIGTERM)
            assert appliance.proc.wait(timeout=60) == 0, appliance.output()
        finally:
            left = sorted(pid for pid in seen if _running(pid))
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert left == [], f"outlived supervisord: {[cmdline(p) or p for p in left]}"
        output = appliance.output()
        assert "stopped: docxy (exit status 0)" in output
        assert "stopped: scheduler (exit status 0)" in output


def test_a_domain_without_an_email_gets_its_certificate_and_the_mirror_stays_up(
    tmp_path: Path,
) -> None:
    """DOCXY_DOMAIN alone: an ACME account without a contact (Let's Encrypt sends no expiry
    mail since 2025, so the address is optional). The certificate is issued, the mirror serves
    it, and nothing goes FATAL."""
    http_port = free_port()
    with (
        running_pebble(tmp_path / "pebble", http_port) as pebble,
        running_appliance(tmp_path, pebble, http_port, email=None) as appliance,
    ):
        issued: list[x509.Certificate] = []

        def pebble_cert_served() -> bool:
            assert appliance.proc.poll() is None, appliance.output()
            cert = handshake(appliance.tls_port, pebble.root)
            if cert is not None:
                issued.append(cert)
            return bool(issued)

        poll(pebble_cert_served, DEADLINE, "pebble's certificate served\n" + appliance.output())
        assert "Pebble Intermediate CA" in issued[0].issuer.rfc4514_string()

        def renewal_recorded() -> bool:
            return bool(appliance.health().get("renewal", {}).get("last_success"))

        poll(renewal_recorded, DEADLINE, "renewal status in /health\n" + appliance.output())
        renewal = appliance.health()["renewal"]
        assert renewal["last_run"] == renewal["last_success"], renewal  # the last run succeeded
        assert renewal["failing_since"] is None and renewal["failures"] == 0, renewal
        output = appliance.output()
        assert "without an email" in output, output
        assert "FATAL" not in output and "gave up" not in output, output
        assert appliance.program_pid("docxy") and appliance.program_pid("scheduler")


def test_entrypoint_without_domain_or_public_url_exits_2(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"DOCXY_STATE_DIR": str(tmp_path), "DOCXY_RUN_DIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ENTRYPOINT)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "set DOCXY_DOMAIN" in proc.stderr and "DOCXY_SERVER_PUBLIC_URL" in proc.stderr
    assert proc.stdout == ""
