"""certbot, and the deploy hooks it runs, never get the mirror's secrets from its environment:
neither needs them, and a hook is whatever the operator put there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docxy.tls import certs


def env_certbot_gets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run certbot as the renewer does, a stand-in that writes its environment down; what it
    got."""
    seen = tmp_path / "env"
    script = tmp_path / "certbot"
    script.write_text(f"#!/bin/sh\nenv > {seen}\necho done\n")
    script.chmod(0o755)
    monkeypatch.setattr(certs, "CERTBOT", str(script))
    assert certs.run_certbot(["renew"], ca_bundle=None).strip() == "done"
    return dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)


def test_certbot_runs_without_the_mirrors_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCXY_UPSTREAM_PASSWORD", "hub-password-0123456789")
    monkeypatch.setenv("DOCXY_SHARED_SECRET_KEY", "bucket-secret-0123456789")
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")  # settings that are not secrets stay
    monkeypatch.setenv("DOCXY_UPSTREAM_PASSWORD_FILE", "/run/secrets/hub")  # a path, not one
    passed = env_certbot_gets(tmp_path, monkeypatch)
    assert "DOCXY_UPSTREAM_PASSWORD" not in passed
    assert "DOCXY_SHARED_SECRET_KEY" not in passed
    assert passed["DOCXY_CERTS_DOMAIN"] == "mirror.test"
    assert passed["DOCXY_UPSTREAM_PASSWORD_FILE"] == "/run/secrets/hub"
    assert passed["PATH"] == os.environ["PATH"]
