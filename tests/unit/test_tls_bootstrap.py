"""The self-signed certificate of a mirror with TLS on and no certificate paths: kept across
restarts while it is good, made anew only when it is near its end or names another host."""

from __future__ import annotations

import stat
from pathlib import Path

from docxy.config import Config, load_config
from docxy.http.server import load_tls
from docxy.tls.certs import describe_files
from docxy.tls.context import self_signed
from lab.ports import LOOPBACK, free_port


def config(tmp_path: Path, **settings: object) -> Config:
    return load_config(
        {
            "server.listen": f"{LOOPBACK}:{free_port()}",
            "server.tls_listen": f"{LOOPBACK}:{free_port()}",
            "cache.dir": str(tmp_path / "cache"),
            **settings,
        },
        environ={},
    )


def served_serial(config: Config) -> str:
    tls = load_tls(config)
    assert tls is not None
    return str(tls.status()["serial"])


def test_a_restart_serves_the_same_self_signed_certificate(tmp_path: Path) -> None:
    """Each start made a new one: every client that trusts it had to fetch it again."""
    cfg = config(tmp_path)
    first = served_serial(cfg)
    assert served_serial(cfg) == first
    key = tmp_path / "docxy-tls" / "selfsigned-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_self_signed_certificate_near_its_end_is_replaced(tmp_path: Path) -> None:
    """One with less than a third of its lifetime left (certbot's margin) is made anew."""
    cert, key = self_signed(tmp_path / "docxy-tls", "localhost", days=20)
    old = describe_files(cert, key)["serial"]
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["serial"] != old
    assert float(str(tls.status()["days_left"])) > 80


def test_a_self_signed_certificate_for_another_host_is_replaced(tmp_path: Path) -> None:
    self_signed(tmp_path / "docxy-tls", "old.example")
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["sans"] == ["localhost"]


def test_a_broken_self_signed_pair_is_replaced(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "docxy-tls", "localhost")
    cert.write_text("not a certificate")
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["sans"] == ["localhost"]
