"""scripts/entrypoint.sh's listeners on a kernel without IPv6: compose.host.yaml asks for
``[::]`` (the host's IPv6 and IPv4), which such a kernel cannot bind; the same port is then
taken on 0.0.0.0, and it says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "scripts" / "entrypoint.sh"


def settings_under(tmp_path: Path, if_inet6: Path, **env: str) -> tuple[dict[str, str], str]:
    """The listen settings the entrypoint hands on (it execs its arguments), and what it said."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    proc = subprocess.run(
        ["bash", str(ENTRYPOINT), "env"],
        env=base | {"DOCXY_STATE_DIR": str(tmp_path), "DOCXY_IF_INET6": str(if_inet6)} | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    exported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    wanted = ("DOCXY_SERVER_LISTEN", "DOCXY_SERVER_TLS_LISTEN")
    return {k: v for k, v in exported.items() if k in wanted}, proc.stderr


@pytest.mark.parametrize("ipv6", [True, False], ids=["ipv6", "no-ipv6"])
def test_a_wildcard_ipv6_listener_falls_back_to_ipv4_only_without_ipv6(
    tmp_path: Path, ipv6: bool
) -> None:
    if_inet6 = tmp_path / "if_inet6"
    if ipv6:
        if_inet6.write_text("")
    listen = {"DOCXY_SERVER_LISTEN": "[::]:80", "DOCXY_SERVER_TLS_LISTEN": "[::]:8443"}
    settings, said = settings_under(tmp_path, if_inet6, DOCXY_DOMAIN="mirror.test", **listen)
    if ipv6:
        assert settings == listen and said == ""
    else:
        assert settings == {
            "DOCXY_SERVER_LISTEN": "0.0.0.0:80",
            "DOCXY_SERVER_TLS_LISTEN": "0.0.0.0:8443",
        }
        assert "no IPv6" in said and "DOCXY_SERVER_TLS_LISTEN=0.0.0.0:8443" in said


def test_other_listeners_are_left_as_given(tmp_path: Path) -> None:
    listen = {"DOCXY_SERVER_LISTEN": "127.0.0.1:8080", "DOCXY_SERVER_TLS_LISTEN": "[::1]:8443"}
    settings, said = settings_under(tmp_path, tmp_path / "none", DOCXY_DOMAIN="m.test", **listen)
    assert settings == listen and said == ""


@pytest.mark.parametrize(
    ("listen", "domain", "tls"),
    [
        ("[::]:80", "mirror.test", "[::]:443"),  # compose.host.yaml's: both families
        ("0.0.0.0:80", "mirror.test", "0.0.0.0:443"),  # the image's own (compose.yaml)
        ("[::]:80", "", None),  # no domain: plain HTTP only, no TLS listener at all
    ],
)
def test_the_https_listener_follows_the_plain_ones_addresses(
    tmp_path: Path, listen: str, domain: str, tls: str | None
) -> None:
    if_inet6 = tmp_path / "if_inet6"
    if_inet6.write_text("")
    env = {"DOCXY_SERVER_LISTEN": listen, "DOCXY_SERVER_PUBLIC_URL": "http://m.test"}
    if domain:
        env["DOCXY_DOMAIN"] = domain
    settings, _ = settings_under(tmp_path, if_inet6, **env)
    assert settings.get("DOCXY_SERVER_TLS_LISTEN") == tls
