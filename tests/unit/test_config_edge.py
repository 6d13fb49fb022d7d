"""The [access] and [limits] settings and server.trusted_proxies: parsed, shown, refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from docxy.config import describe, load_config
from docxy.core.errors import ConfigError


def test_lists_come_from_toml_arrays_or_comma_separated_env(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text(
        '[access]\nallow = ["10.0.0.0/8", "2001:db8::/32"]\nrepositories = ["library/*"]\n'
        '[server]\ntrusted_proxies = ["127.0.0.1"]\n'
    )
    config = load_config(config_file=path, environ={"DOCXY_ACCESS_DENY_REPOSITORIES": "a/*, b"})
    assert ipaddress.ip_address("2001:db8::5") in config.access.allow
    assert config.access.rules.refusal("library/redis") is None
    assert config.access.rules.refusal("a/x") is not None
    assert ipaddress.ip_address("127.0.0.1") in config.server.trusted_proxies
    shown = {key: value for key, value, _ in describe(config)}
    assert shown["access.allow"] == "10.0.0.0/8, 2001:db8::/32"
    assert shown["access.deny_repositories"] == "a/*, b"


def test_defaults_serve_everyone_with_connection_limits_only() -> None:
    config = load_config(environ={})
    assert not config.access.allow and not config.access.rules
    assert config.limits.max_connections > 0 and config.limits.send_timeout > 0
    assert config.limits.requests_per_minute == 0 and config.limits.bandwidth == 0


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("DOCXY_ACCESS_ALLOW", "10.0.0.1/8", "access.allow: not an IP network"),
        ("DOCXY_ACCESS_ALLOW", "example.com", "access.allow: not an IP network"),
        ("DOCXY_SERVER_TRUSTED_PROXIES", "10.0.0.0/33", "server.trusted_proxies:"),
        ("DOCXY_ACCESS_REPOSITORIES", "Library/*", "access.repositories: not a repository"),
        ("DOCXY_SERVER_FORWARDED_HEADER", "x-real-ip", "server.forwarded_header: expected"),
        ("DOCXY_LIMITS_MAX_CONNECTIONS", "-1", "limits.max_connections: expected"),
        ("DOCXY_LIMITS_BANDWIDTH", "fast", "limits.bandwidth: expected a size"),
        ("DOCXY_LIMITS_SEND_TIMEOUT", "0", "limits.send_timeout: expected a positive"),
    ],
)
def test_bad_values_name_the_key_and_source(env: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={env: value})
    assert str(caught.value).startswith(words)
    assert f"(env {env})" in str(caught.value)


def test_exempt_networks_from_toml_or_env_and_shown(tmp_path: Path) -> None:
    """``limits.exempt`` takes what ``server.trusted_proxies`` takes, from either source."""
    path = tmp_path / "docxy.toml"
    path.write_text('[limits]\nexempt = ["10.20.0.0/16", "2001:db8:42::/48", "192.0.2.7"]\n')
    config = load_config(config_file=path, environ={})
    exempt = config.limits.exempt
    for inside in ("10.20.255.1", "::ffff:10.20.0.1", "2001:db8:42:ffff::1", "192.0.2.7"):
        assert ipaddress.ip_address(inside) in exempt, inside
    for outside in ("10.21.0.1", "2001:db8:43::1", "192.0.2.8"):
        assert ipaddress.ip_address(outside) not in exempt, outside
    shown = {key: (value, source) for key, value, source in describe(config)}
    assert shown["limits.exempt"] == (
        "10.20.0.0/16, 2001:db8:42::/48, 192.0.2.7/32",
        f"file {path}",
    )
    from_env = load_config(environ={"DOCXY_LIMITS_EXEMPT": "10.20.0.0/16, 2001:db8:42::/48"})
    assert ipaddress.ip_address("2001:db8:42::9") in from_env.limits.exempt
    assert not load_config(environ={}).limits.exempt  # none by default


@pytest.mark.usefixtures("clean_docxy_env")
def test_show_config_prints_the_exempt_networks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from docxy.cli.main import main

    monkeypatch.setenv("DOCXY_LIMITS_EXEMPT", "10.20.0.0/16,2001:db8:42::/48")
    assert main(["serve", "--show-config"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "limits.exempt" in line]
    assert lines == ["limits.exempt = 10.20.0.0/16, 2001:db8:42::/48  (env DOCXY_LIMITS_EXEMPT)"], (
        lines
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10.20.0.1/16", "has host bits set"),
        ("10.20.0.0/33", "10.20.0.0/33"),
        ("ci.example.com", "'ci.example.com'"),
        ("10.20.0.0/16 10.30.0.0/16", "not an IP network"),  # a comma forgotten
        ("2001:db8:42::/48, fe80::1%eth0/64", "fe80::1%eth0/64"),
    ],
)
def test_a_bad_exempt_network_stops_start_up_naming_it(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"DOCXY_LIMITS_EXEMPT": value})
    message = str(caught.value)
    assert message.startswith("limits.exempt: not an IP network"), message
    assert words in message and message.endswith("(env DOCXY_LIMITS_EXEMPT)")


def test_a_bad_exempt_network_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    for text in ('exempt = ["10.20.0.1/16"]', "exempt = [16]", "exempt = 16"):
        path.write_text(f"[limits]\n{text}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(config_file=path, environ={})
        message = str(caught.value)
        assert message.startswith("limits.exempt: ") and message.endswith(f"(file {path})"), text
