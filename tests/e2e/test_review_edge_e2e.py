"""Review faults in the edge, against a real mirror process on loopback (no upstream needed:
its upstream is a closed loopback port, and only /health is asked)."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.ports import LOOPBACK, free_port
from tests.e2e.waiting import eventually

pytestmark = pytest.mark.e2e
DEADLINE = 20.0

CAP = 10


def fd_count(mirror: Mirror) -> int:
    return len(os.listdir(f"/proc/{mirror.proc.pid}/fd"))


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed this non-blocking socket (it sends nothing else here)."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


@pytest.fixture
def tls_mirror(tmp_path: Path) -> Iterator[tuple[Mirror, int]]:
    tls_port = free_port()
    mirror = launch_mirror(
        f"http://{LOOPBACK}:{free_port()}",  # nothing listens there: the upstream is never needed
        tmp_path,
        [
            "--tls-listen", f"{LOOPBACK}:{tls_port}",
            "--set", f"limits.max_connections={CAP}",
            "--set", "limits.idle_timeout=600",  # so only the cap can close a silent client
        ],
    )  # fmt: skip
    try:
        yield mirror, tls_port
    finally:
        stop_mirror(mirror)


def test_tls_connections_count_against_the_cap_before_their_handshake(
    tls_mirror: tuple[Mirror, int], tmp_path: Path
) -> None:
    """A TLS connection was counted only once its handshake was done, so connections that
    never send a ClientHello were not capped at all: each held a descriptor and asyncio's
    256 KiB TLS buffer until the handshake timeout (limits.idle_timeout), and a few thousand
    took the mirror's memory up by gigabytes (measured in the commit). Now each counts from
    its accept, and one over the cap is closed before any handshake."""
    mirror, tls_port = tls_mirror
    baseline = fd_count(mirror)
    silent = [socket.create_connection((LOOPBACK, tls_port)) for _ in range(6 * CAP)]
    for sock in silent:
        sock.setblocking(False)
    try:
        # Those over the cap are closed by the mirror at once; the rest wait for a ClientHello.
        assert eventually(lambda: sum(map(closed_by_peer, silent)) >= 5 * CAP, DEADLINE), sum(
            map(closed_by_peer, silent)
        )
        assert eventually(lambda: fd_count(mirror) <= baseline + CAP + 2, DEADLINE), (
            baseline,
            fd_count(mirror),
        )
    finally:
        for sock in silent:
            sock.close()
    # The cap frees, and a real client's handshake and request go through.
    context = ssl.create_default_context(cafile=str(tmp_path / "docxy-tls" / "selfsigned-cert.pem"))
    context.check_hostname = False  # its name is not what this test is about

    def served() -> bool:
        try:
            url = f"https://{LOOPBACK}:{tls_port}/health"
            return httpx.get(url, verify=context, timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    assert eventually(served, DEADLINE)
    # ...as HTTPS: the plain listener's redirect is not what a TLS client gets.
    url = f"https://{LOOPBACK}:{tls_port}/v2/"
    assert httpx.get(url, verify=context, timeout=30).status_code != 308
