"""server.load_tls: which certificate the mirror starts with."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import check_tls_files, load_config
from docxy.core.errors import ConfigError
from docxy.http.server import load_tls


def test_first_start_with_domain_writes_bootstrap_at_configured_paths(tmp_path: Path) -> None:
    cert, key = tmp_path / "served" / "fullchain.pem", tmp_path / "served" / "privkey.pem"
    config = load_config(
        {
            "server.tls_listen": "127.0.0.1:8443",
            "tls.cert_path": str(cert),
            "tls.key_path": str(key),
            "certs.domain": "mirror.example.test",
            "cache.dir": str(tmp_path / "cache"),
        },
        environ={},
    )
    tls = load_tls(config)
    assert tls is not None
    assert cert.is_file() and key.is_file()
    assert "mirror.example.test" in str(tls.status())


def test_missing_cert_without_domain_is_a_config_error(tmp_path: Path) -> None:
    config = load_config(
        {
            "server.tls_listen": "127.0.0.1:8443",
            "tls.cert_path": str(tmp_path / "nope.pem"),
            "tls.key_path": str(tmp_path / "nope.key"),
        },
        environ={},
    )
    with pytest.raises(ConfigError, match=r"tls\.cert_path: cannot read"):
        check_tls_files(config)  # serve's start-up (docxy.cli.main), before load_tls


def test_tls_off_means_no_context(tmp_path: Path) -> None:
    config = load_config({"cache.dir": str(tmp_path)}, environ={})
    assert load_tls(config) is None
