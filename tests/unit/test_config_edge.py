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
