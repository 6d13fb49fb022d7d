"""The ``[auth]`` settings: defaults, derived paths, and bad values named with their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import load_config
from docxy.core.errors import ConfigError


def test_defaults_are_open_with_paths_beside_the_cache(tmp_path: Path) -> None:
    config = load_config({"cache.dir": str(tmp_path / "cache")}, environ={})
    assert config.auth.mode == "open"
    assert config.auth.dir == tmp_path / "docxy-access"
    assert config.auth.users_file == tmp_path / "docxy-access" / "users"
    assert not config.auth.client_certs and not config.auth.upstream_logins


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"auth.mode": "everyone"}, "auth.mode: expected open or users"),
        ({"auth.token_ttl": "5"}, "auth.token_ttl: expected seconds between 60 and 86400"),
        ({"auth.token_ttl": "59"}, "auth.token_ttl: expected seconds between 60 and 86400"),
        ({"auth.client_certs": "true"}, "auth.client_certs: client certificates need"),
    ],
)
def test_bad_values_name_the_key(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load_config(settings, environ={})
    assert "(flag)" in str(caught.value) or "(default)" in str(caught.value)


def test_env_names(tmp_path: Path) -> None:
    env = {"DOCXY_AUTH_MODE": "users", "DOCXY_AUTH_USERS_FILE": str(tmp_path / "u")}
    config = load_config(environ=env)
    assert config.auth.mode == "users" and config.auth.users_file == tmp_path / "u"
