"""``docxy health`` against a wildcard ``[::]`` listener, in network namespaces of the test's own.

Containers often have no IPv6 on loopback (``net.ipv6.conf.lo.disable_ipv6=1``, Docker's
default bridge networks): a dual-stack ``[::]`` listener is still reached at 127.0.0.1 there,
and a probe of ``::1`` alone failed though the mirror served. The listener is a real socket
bound to ``::`` with and without ``IPV6_V6ONLY``; the probe is the real ``docxy health``
process, both inside a namespace whose loopback has IPv6 or not.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from docxy.cli.exits import EXIT_OK
from docxy.cli.healthcheck import EXIT_UNHEALTHY
from tests.unavailable import need_binary, need_root

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

#: A /health server on ``[::]:0`` (IPV6_V6ONLY as argv[1] says) that prints its port.
SERVER = """
import http.server, socket, sys
class Health(http.server.BaseHTTPRequestHandler):
    status = 200
    def do_GET(self):
        body = b'{"status": "ok", "version": "test"}'
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(sys.argv[1]))
sock.bind(("::", 0))
sock.listen(16)
server = http.server.HTTPServer(sock.getsockname()[:2], Health, bind_and_activate=False)
server.socket.close()
server.socket = sock
print(sock.getsockname()[1], flush=True)
server.serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=TIMEOUT)


@contextmanager
def namespace(loopback_ipv6: bool) -> Iterator[str]:
    """A network namespace with loopback up, its IPv6 off unless ``loopback_ipv6``. (The
    mirror's own ``[::]`` socket turns IPV6_V6ONLY off whatever ``net.ipv6.bindv6only`` says:
    tests/unit/test_plain_http.py checks that in a namespace of its own.)"""
    need_root("network namespaces")
    need_binary("ip")
    name = f"dxhc{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        switch = "0" if loopback_ipv6 else "1"
        _ip("netns", "exec", name, "sysctl", "-q", f"net.ipv6.conf.lo.disable_ipv6={switch}")
        yield name
    finally:
        _ip("netns", "del", name)


@contextmanager
def health_server(ns: str, v6only: bool) -> Iterator[int]:
    command = ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(int(v6only))]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            yield int(server.stdout.readline())
        finally:
            server.kill()


def docxy_health(ns: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DOCXY_SERVER_PUBLIC_URL": "http://mirror.test",  # a wildcard listener needs one
    }
    env = {k: v for k, v in env.items() if k not in ("DOCXY_SERVER_LISTEN", "DOCXY_CONFIG")}
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "docxy", "health"]
        + ["--listen", f"[::]:{port}", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("loopback_ipv6", "v6only", "reached_at"),
    [
        (False, False, "127.0.0.1"),  # a container without IPv6 on lo: dual-stack [::]
        (True, False, "127.0.0.1"),  # dual-stack: IPv4 loopback first
        (True, True, "[::1]"),  # an IPv6-only [::] listener: 127.0.0.1 refused, then ::1
    ],
    ids=["no-ipv6-loopback", "dual-stack", "ipv6-only"],
)
def test_a_wildcard_ipv6_listener_is_probed_where_it_answers(
    loopback_ipv6: bool, v6only: bool, reached_at: str
) -> None:
    with namespace(loopback_ipv6) as ns, health_server(ns, v6only) as port:
        result = docxy_health(ns, port)
    assert result.returncode == EXIT_OK, result.stderr
    assert f"http://{reached_at}:{port}/health: ok" in result.stdout


def test_nothing_listening_on_a_wildcard_is_unhealthy_naming_every_address() -> None:
    with namespace(loopback_ipv6=True) as ns:
        result = docxy_health(ns, 9)  # nothing listens in a new namespace
    assert result.returncode == EXIT_UNHEALTHY
    assert "127.0.0.1:9/health" in result.stderr and "[::1]:9/health" in result.stderr
