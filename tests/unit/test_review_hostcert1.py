"""An upstream's ``hosts`` names (host-based routing) and the mirror's own certificate.

``docker pull ghcr.mirror.example.test/owner/img`` over TLS fails with an x509 name mismatch
when the served certificate names only the mirror's domain (certbot is asked for
``certs.domain`` alone), and nothing said so: not at start-up, not on a reload, not on
/status.json. The mirror now names each such host name and what to do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography import x509

from docxy.config import Config, load_config
from docxy.http.health import health_report
from docxy.http.server import load_tls
from docxy.observe.status import render_page
from docxy.tls import trust
from docxy.tls.context import ReloadableTLS, public_status
from lab.certs import Issued, issue
from tests.unit.test_observe_metrics import make_state

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


@pytest.mark.parametrize(
    ("sans", "hosts"),
    [
        ([DOMAIN, ROUTED], ROUTED),  # named exactly
        ([DOMAIN, "GHCR.Mirror.Example.test"], "ghcr.mirror.example.TEST."),  # no case, root's dot
        (["*.example.test"], ROUTED.replace("ghcr.mirror.", "ghcr.")),  # a wildcard's one label
        ([DOMAIN, "*.mirror.example.test"], f"{ROUTED},quay.mirror.example.test:8443"),
    ],
)
def test_a_certificate_that_names_the_hosts_names_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sans: list[str], hosts: str
) -> None:
    _serve(tmp_path, *sans)
    caplog.set_level(logging.WARNING)
    tls = _loaded(_config(tmp_path, hosts))
    assert _said(caplog) == []
    status = tls.status()
    assert (status["hosts_uncovered"], status["hosts_warning"]) == ([], None)


def test_a_wildcard_names_one_label_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``*.example.test`` names ``mirror.example.test``, not ``ghcr.mirror.example.test``."""
    _serve(tmp_path, "*.example.test")
    caplog.set_level(logging.WARNING)
    tls = _loaded(_config(tmp_path, f"{ROUTED}:8443,ghcr.example.test"))
    assert tls.status()["hosts_uncovered"] == [ROUTED]  # its port dropped: names are named
    said = [line for line in _said(caplog) if ROUTED in line]
    assert len(said) == 1 and "ghcr.example.test" not in said[0]


def test_a_reloaded_certificate_is_judged_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate that names the host name, reloaded (the operator's fix), clears it; one
    that does not, reloaded later, is said again (the start-up warning cleared first: it was
    still in ``caplog``, and the test passed with no warning after the reload)."""
    _serve(tmp_path, DOMAIN)
    tls = _loaded(_config(tmp_path, ROUTED))
    assert tls.status()["hosts_uncovered"] == [ROUTED]
    _serve(tmp_path, DOMAIN, ROUTED)
    assert tls.reload() is True
    assert (tls.status()["hosts_uncovered"], tls.status()["hosts_warning"]) == ([], None)
    caplog.set_level(logging.WARNING)
    caplog.clear()
    _serve(tmp_path, DOMAIN)
    assert tls.reload() is True
    assert tls.status()["hosts_uncovered"] == [ROUTED]
    assert any(ROUTED in line and "tls.cert_path" in line for line in _said(caplog))


def test_the_mirrors_own_self_signed_certificate_is_judged_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS on without certificate paths: the mirror's own pair names its public host alone."""
    caplog.set_level(logging.WARNING)
    config = _config(tmp_path, ROUTED, **{"tls.cert_path": "", "tls.key_path": ""})
    assert config.tls.cert_path is None
    tls = _loaded(config)
    assert tls.status()["hosts_uncovered"] == [ROUTED]
    assert any(ROUTED in line for line in _said(caplog))


def test_the_status_page_says_it_and_health_stays_as_it_was(tmp_path: Path) -> None:
    """The status page (admin) shows it; /health keeps judging the mirror's own name (a
    hosts name is one way in of several), and its public part names no host name."""
    _serve(tmp_path, DOMAIN)
    tls = _loaded(_config(tmp_path, ROUTED, **{"certs.domain": DOMAIN}))
    state = make_state(tmp_path / "state")
    state.extras["health"] = {"tls": tls.status}
    state.extras["health_public"] = {"tls": public_status}
    report = health_report(state)
    assert report["status"] == "ok"
    page = render_page(report)
    assert "upstream host names" in page and ROUTED in page
    assert ROUTED not in json.dumps(health_report(state, public=True))


def test_uncovered_takes_each_name_once_without_its_port() -> None:
    hosts = {
        "upstreams.a.hosts": ("X.test", "x.test:8443", "x.test.", "[2001:db8::1]:8443"),
        "upstreams.b.hosts": ("y.test",),
    }
    assert trust.uncovered(["y.test", "2001:db8:0::1"], hosts) == {"upstreams.a.hosts": ("x.test",)}
    assert trust.uncovered(["*.test", "2001:db8::1"], hosts) == {}
    assert trust.hosts_refusal({}, ["y.test"]) is None
