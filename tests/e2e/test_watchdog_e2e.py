"""The appliance's watchdog (scripts/supervisor-watchdog.sh) under the real supervisord.

supervisord restarts a mirror that exits, never one that hangs: a mirror stopped with SIGSTOP
(an event loop that no longer turns) stayed in place, answering nothing, for as long as the
container ran; Docker only marked the container unhealthy. The watchdog restarts it once it has
not answered ``/health`` for ``DOCXY_WATCHDOG_SECONDS``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from lab.ports import LOOPBACK, free_port
from lab.processes import pid_alive
from tests.e2e.test_certs_e2e import DEAD_UPSTREAM, DEADLINE, supervisorctl
from tests.e2e.waiting import poll
from tests.unavailable import need_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 6  # DOCXY_WATCHDOG_SECONDS here (300 by default)
STOPWAITSECS = 13  # scripts/supervisord.conf: a hung mirror gets SIGKILL after that long


def test_a_mirror_that_stops_answering_is_restarted(tmp_path: Path) -> None:
    need_binary("supervisord")
    need_binary("supervisorctl")
    conf = REPO_ROOT / "scripts" / "supervisord.conf"
    port = free_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DOCXY_RUN_DIR": str(run_dir),
        "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
        "DOCXY_SERVER_ADMIN_LISTEN": f"{LOOPBACK}:{free_port()}",
        "DOCXY_SERVER_PUBLIC_URL": f"http://{LOOPBACK}:{port}",
        "DOCXY_UPSTREAM_REGISTRY": DEAD_UPSTREAM,
        "DOCXY_CACHE_DIR": str(tmp_path / "cache"),
        # What scripts/entrypoint.sh exports without a domain: no renewer.
        "DOCXY_SCRIPTS_DIR": str(REPO_ROOT / "scripts"),
        "DOCXY_SUPERVISOR_RENEWER": "false",
        "DOCXY_WATCHDOG_SECONDS": str(PATIENCE),
    }
    log_path = tmp_path / "supervisord.log"
    log = log_path.open("ab")  # O_APPEND, like a container runtime's pipe
    sup = subprocess.Popen(
        ["supervisord", "-c", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    seen: set[int] = set()

    def mirror_pid() -> int:
        text = supervisorctl(conf, env, "pid", "docxy")
        number = int(text) if text.isdigit() else 0
        seen.add(number)
        return number

    def healthy() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2).status_code == 200
        return False

    try:
        poll(lambda: healthy() and mirror_pid(), DEADLINE, "the mirror up")
        hung = mirror_pid()
        # The watchdog leaves a mirror alone until it has answered it once (one that is still
        # starting): wait for a probe of its own (each /health is a line of the access log).
        probes = log_path.read_text(errors="replace").count("GET /health 200")
        poll(
            lambda: log_path.read_text(errors="replace").count("GET /health 200") > probes,
            DEADLINE,
            "the watchdog's first probe answered",
        )
        os.kill(hung, signal.SIGSTOP)  # alive, its port open, answering nothing

        def replaced() -> bool:
            return healthy() and mirror_pid() not in (0, hung)

        poll(replaced, DEADLINE + PATIENCE + STOPWAITSECS + 30, "the hung mirror replaced")
        assert not pid_alive(hung)
        output = log_path.read_text(errors="replace")
        assert "the mirror has not answered /health for" in output, output
        assert "buffer overflowed" not in output, output  # ticks queued while probing
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 0
    finally:
        if sup.poll() is None:
            sup.terminate()
            try:
                sup.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait(timeout=10)
        log.close()
        for child in seen - {0}:
            if pid_alive(child):
                os.kill(child, signal.SIGKILL)
