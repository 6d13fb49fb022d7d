"""scripts/supervisor-watchdog.sh times its probes by the seconds since boot, not the wall
clock: a VPS that booted with its clock ahead has it stepped back by NTP, and a watchdog timed
by `date` then probed nothing for the length of the step (a hung mirror left hung for a day),
while a step forward turned one failed probe into the whole patience."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab.ports import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]
PATIENCE = 2  # DOCXY_WATCHDOG_SECONDS: probes every 2 s, a restart after 2 s unanswered


def start_watchdog(
    tmp_path: Path,
    listen: str,
    patience: str,
    *,
    first: Path | None = None,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """scripts/supervisor-watchdog.sh as supervisord starts it, for a mirror on ``listen``
    (``DOCXY_SERVER_LISTEN``), with this ``DOCXY_WATCHDOG_SECONDS``; ``first``: a directory of
    stand-in tools put first on PATH. Its stdin and stdout are the event protocol's pipes;
    ``stderr=None``: its messages go to the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    path = [*([str(first)] if first else []), str(Path(sys.executable).parent), env["PATH"]]
    env |= {
        "PATH": os.pathsep.join(path),
        "PYTHONPATH": str(REPO),
        "DOCXY_SERVER_LISTEN": listen,
        "DOCXY_RUN_DIR": str(tmp_path),
        "DOCXY_WATCHDOG_SECONDS": patience,
    }
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / "supervisor-watchdog.sh")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
    )  # fmt: skip


def test_a_wall_clock_stepped_back_does_not_stop_the_watchdog(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    now = tmp_path / "now"
    now.write_text(str(int(time.time())))
    (bin_dir / "date").write_text(f'#!/bin/sh\ncat "{now}"\n')  # the wall clock, as set below
    calls = tmp_path / "supervisorctl.log"
    (bin_dir / "supervisorctl").write_text(f'#!/bin/sh\necho "$@" >>"{calls}"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    port = free_port()
    mirror = http.server.ThreadingHTTPServer((LOOPBACK, port), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    listen = f"{LOOPBACK}:{port}"
    watchdog = start_watchdog(tmp_path, listen, str(PATIENCE), first=bin_dir, stderr=None)
    assert watchdog.stdin is not None and watchdog.stdout is not None

    def tick() -> None:  # one TICK_5 event, as supervisord sends it
        assert watchdog.stdout is not None and watchdog.stdin is not None
        assert watchdog.stdout.readline() == b"READY\n"
        payload = b"when:1"
        header = b"ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1 eventname:TICK_5"
        watchdog.stdin.write(header + b" len:%d\n" % len(payload) + payload)
        watchdog.stdin.flush()
        assert watchdog.stdout.read(len(b"RESULT 2\nOK")) == b"RESULT 2\nOK"

    try:
        tick()  # the mirror answers (any status counts)
        mirror.shutdown()
        mirror.server_close()  # ...and hangs from now on
        now.write_text(str(int(time.time()) - 86400))  # NTP steps the clock back a day
        deadline = time.monotonic() + 6 * PATIENCE  # bounded: 12 s at most
        while time.monotonic() < deadline and not calls.exists():
            time.sleep(0.5)
            tick()
    finally:
        watchdog.stdin.close()
        watchdog.wait(timeout=15)
        watchdog.stdout.close()
    assert calls.exists() and "restart docxy" in calls.read_text()
