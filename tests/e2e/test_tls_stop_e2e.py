"""A stop with TLS connections that do not play along, end to end.

The real mirror (``python -m docxy serve`` with its TLS listener and the self-signed bootstrap
certificate) holds a TLS connection whose client made one request and then neither reads nor
closes (it never answers the mirror's close_notify), and a TCP connection to the TLS port
that never sends a ClientHello. Before, the first held the stop for asyncio's 30 s SSL
shutdown timeout and logged an ``SSL shutdown timed out`` traceback; the second held it for
its handshake timeout (``limits.idle_timeout``) and was then cancelled with a traceback. The
supervisor gives the mirror 13 s before SIGKILL (the lifespan's shutdown then never runs).
"""

from __future__ import annotations

import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.edge.connections import CLOSE_WAIT
from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.ports import LOOPBACK, free_port

pytestmark = pytest.mark.e2e

#: supervisord's stopwaitsecs for the mirror (scripts/supervisord.conf)
SUPERVISOR_STOP_WAIT = 13.0


@pytest.fixture
def tls_mirror(tmp_path: Path) -> Iterator[tuple[Mirror, int]]:
    port = free_port()
    upstream = f"http://{LOOPBACK}:{free_port()}"  # never answers: only /health is asked
    # no certificate given: the mirror makes its self-signed bootstrap one beside its cache
    started = launch_mirror(upstream, tmp_path / "mirror", ["--tls-listen", f"{LOOPBACK}:{port}"])
    try:
        yield started, port
    finally:
        stop_mirror(started)


def trusting_nothing() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bootstrap certificate: what is tested is the stop
    return context


@pytest.mark.parametrize("client", ["silent after a request", "no ClientHello"])
def test_a_stop_is_not_held_by_a_tls_client_that_does_not_play_along(
    tls_mirror: tuple[Mirror, int], client: str
) -> None:
    mirror, port = tls_mirror
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    held: socket.socket = raw
    if client == "silent after a request":
        held = trusting_nothing().wrap_socket(raw)
        held.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
    else:
        time.sleep(0.5)  # the mirror has the connection, in its handshake
    try:
        stopped = time.monotonic()
        mirror.proc.send_signal(signal.SIGTERM)
        assert mirror.proc.wait(SUPERVISOR_STOP_WAIT + 10) == 0
        took = time.monotonic() - stopped
    finally:
        held.close()
    # the close_notify gets CLOSE_WAIT at most; a handshake nothing came on is ended at once
    # (the rest of the stop took about 1 s here; a loaded machine gets 6)
    assert took < CLOSE_WAIT + 6 < SUPERVISOR_STOP_WAIT, took
    log = mirror.log_text(limit=200_000)
    assert "Traceback" not in log and "Unhandled exception" not in log, log
