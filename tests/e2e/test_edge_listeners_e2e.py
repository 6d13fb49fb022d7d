"""Which listener a connection came in on decides TLS, whatever the addresses look like.

A plain listener and a TLS listener may share a port on different addresses, one of them a
wildcard of the other family: ``--tls-listen 0.0.0.0:P --listen [::1]:P`` binds (an IPv4
wildcard and an IPv6 address do not clash). The edge told TLS connections by their local
address, a wildcard TLS listener matching any address at its port, so plain connections to
``[::1]:P`` were taken for TLS and cut. A real mirror process; its upstream is a closed
loopback port (only ``/health`` is asked), its readiness asked on the admin listener.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lab.certs import CertPair, loopback_cert
from lab.mirror import mirror_env
from lab.ports import LOOPBACK, free_port
from lab.service import Service, start_service

pytestmark = pytest.mark.e2e


@dataclass
class Listeners:
    plain: str  # URL of the plain listener
    tls: str  # URL of the TLS listener
    trust: ssl.SSLContext  # trusts the mirror's certificate


def mirror(workdir: Path, listen: str, tls_listen: str, cert: CertPair) -> Service:
    admin = free_port()
    command = [
        sys.executable, "-m", "docxy", "serve",
        "--listen", listen,
        "--tls-listen", tls_listen,
        "--cert", str(cert.cert), "--key", str(cert.key),
        "--public-url", f"https://{LOOPBACK}:{tls_listen.rpartition(':')[2]}",
        "--upstream", f"http://{LOOPBACK}:{free_port()}",  # nothing listens there
        "--set", f"server.admin_listen={LOOPBACK}:{admin}",
    ]  # fmt: skip
    return start_service(
        "mirror",
        command,
        port=admin,
        workdir=workdir,
        ready_path="/status.json",
        env=mirror_env(workdir, None),
    )


@pytest.fixture(params=["tls-ipv4-wildcard", "plain-ipv4-wildcard"])
def listeners(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listeners]:
    """A mirror whose plain and TLS listeners share a port, one on the IPv4 wildcard."""
    port = free_port()
    cert = loopback_cert(tmp_path / "tls")
    trust = cert.context()
    if request.param == "tls-ipv4-wildcard":
        plain, tls = f"[::1]:{port}", f"0.0.0.0:{port}"
        urls = (f"http://[::1]:{port}", f"https://{LOOPBACK}:{port}")
    else:
        plain, tls = f"0.0.0.0:{port}", f"[::1]:{port}"
        urls = (f"http://{LOOPBACK}:{port}", f"https://[::1]:{port}")
        trust.check_hostname = False  # the lab certificate names 127.0.0.1, not ::1
    service = mirror(tmp_path, plain, tls, cert)
    try:
        yield Listeners(*urls, trust)
    finally:
        service.stop()


def test_each_listener_serves_as_configured_on_a_shared_port(listeners: Listeners) -> None:
    assert httpx.get(f"{listeners.plain}/health", timeout=30).status_code == 200
    answer = httpx.get(f"{listeners.tls}/health", verify=listeners.trust, timeout=30)
    assert answer.status_code == 200
    # and the plain listener is plain HTTP redirected to HTTPS, not a TLS one
    assert httpx.get(f"{listeners.plain}/v2/", timeout=30).status_code == 308
