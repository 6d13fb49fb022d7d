"""``SIGHUP`` never ends the mirror: it reloads the certificate where there is one, and is
otherwise logged and ignored (its default action would end the process).

The renewer sends it after every renewal (``supervisorctl signal HUP docxy``), also to a mirror
still starting, and an operator may send it to a mirror without a TLS listener. A real
``docxy serve`` on loopback, in front of a closed port (it starts with its upstream down).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx

from lab.mirror import mirror_env
from lab.ports import LOOPBACK, free_port
from lab.processes import stop_process
from lab.service import start_service


def test_sighup_to_a_mirror_without_tls_is_logged_not_fatal(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    command = [sys.executable, "-m", "docxy", "serve", "--listen", f"{LOOPBACK}:{port}"]
    command += ["--upstream", f"http://{LOOPBACK}:{closed}"]
    service = start_service(
        "mirror",
        command,
        port=port,
        workdir=tmp_path,
        ready_path="/health",
        ready_statuses=(200, 503),  # the upstream is down: degraded, but up
        env=mirror_env(tmp_path, {}),
    )
    try:
        for _ in range(2):
            service.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
        assert service.proc.poll() is None, service.log_path.read_text()
        answer = httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=10)
        assert answer.status_code in (200, 503)
        assert "SIGHUP" in service.log_path.read_text()
    finally:
        stop_process(service.proc, grace=10)
