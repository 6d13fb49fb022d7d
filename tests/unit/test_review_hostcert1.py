"""An upstream's ``hosts`` names (host-based routing) and the mirror's own certificate.

``docker pull ghcr.mirror.example.test/owner/img`` over TLS fails with an x509 name mismatch
when the served certificate names only the mirror's domain (certbot is asked for
``certs.domain`` alone), and nothing said so: not at start-up, not on a reload, not on
/status.json. The mirror now names each such host name and what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography import x509

from docxy.config import Config, load_config
from docxy.http.server import load_tls
from docxy.tls.context import ReloadableTLS
from lab.certs import Issued, issue

DOMAIN = "mirror.example.test"
ROUTED = "ghcr.mirror.example.test"
LOOPBACK = "127.0.101.1"  # nothing binds: load_tls only reads the listener settings


def _config(tmp_path: Path, hosts: str, **settings: str) -> Config:
    return load_config(
        {
            "server.listen": f"{LOOPBACK}:12830",
            "server.tls_listen": f"{LOOPBACK}:12831",
            "server.public_url": f"https://{DOMAIN}",
            "cache.dir": str(tmp_path / "cache"),
            "tls.cert_path": str(tmp_path / "served" / "fullchain.pem"),
            "tls.key_path": str(tmp_path / "served" / "privkey.pem"),
            "upstreams": "ghcr.io",
            "upstreams.ghcr.io.hosts": hosts,
            **settings,
        },
        environ={},
    )


def _serve(tmp_path: Path, *names: str) -> Issued:
    """A CA's certificate for ``names`` (and its chain) at the served paths."""
    root = issue("Test CA", ca=True)
    leaf = issue(names[0], root, names=[x509.DNSName(n) for n in names])
    served = tmp_path / "served"
    served.mkdir(parents=True, exist_ok=True)
    (served / "fullchain.pem").write_bytes(leaf.cert_pem + root.cert_pem)
    (served / "privkey.pem").write_bytes(leaf.key_pem)
    (served / "privkey.pem").chmod(0o600)  # no warning about its mode among those looked at
    return root


def _loaded(config: Config) -> ReloadableTLS:
    tls = load_tls(config)
    assert tls is not None
    return tls


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.xfail(strict=True, reason="no word of a hosts name the certificate lacks")
def test_a_hosts_name_the_certificate_does_not_name_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The certificate names the mirror's domain only: pulls by ``ROUTED`` over TLS fail."""
    _serve(tmp_path, DOMAIN)
    caplog.set_level(logging.WARNING)
    tls = _loaded(_config(tmp_path, ROUTED, **{"certs.domain": DOMAIN}))
    said = [line for line in _said(caplog) if ROUTED in line]
    assert len(said) == 1, _said(caplog)
    assert "upstreams.ghcr.io.hosts" in said[0]
    assert "tls.cert_path" in said[0]  # what to do
    status = tls.status()
    assert status["hosts_uncovered"] == [ROUTED]
    assert ROUTED in str(status["hosts_warning"])
