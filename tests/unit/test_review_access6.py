"""The start-up warning for a TLS proxy not named in ``server.trusted_proxies`` names every
per-client limit that is on, which every client then shares as the proxy's one address: by
default ``limits.connections_per_client`` (128 connections for all clients at once) and
``limits.token_relays_per_minute`` (600 logins relayed a minute for all), not only the
failed-login bucket; with every per-client limit off there is nothing to warn of."""

from __future__ import annotations

import logging

import pytest

from docxy.access.gate import warn_unnamed_proxy
from docxy.config import load_config

PUBLIC = "https://mirror.example.com"
REGISTRY = "http://127.0.0.1:9"

OFF = {
    "limits.connections_per_client": "0",
    "limits.requests_per_minute": "0",
    "limits.manifests_per_minute": "0",
    "limits.failed_logins_per_minute": "0",
    "limits.token_relays_per_minute": "0",
    "limits.bandwidth": "0",
    "limits.fills_per_client": "0",
}


def warned(caplog: pytest.LogCaptureFixture, settings: dict[str, str]) -> list[str]:
    caplog.clear()
    base = {"server.public_url": PUBLIC, "upstream.registry": REGISTRY}
    warn_unnamed_proxy(load_config({**base, **settings}, environ={}))
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "server.trusted_proxies" in r.getMessage()
    ]


def test_the_default_limits_every_client_shares_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    [said] = warned(caplog, {})
    assert "limits.connections_per_client (128)" in said
    assert "limits.token_relays_per_minute (600)" in said
    assert "limits.failed_logins_per_minute (10)" in said
    assert "limits.requests_per_minute" not in said  # off by default: nothing shared


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limits.requests_per_minute", "300"),
        ("limits.manifests_per_minute", "60"),
        ("limits.fills_per_client", "4"),
        ("limits.connections_per_client", "16"),
    ],
)
def test_a_limit_set_on_is_named(caplog: pytest.LogCaptureFixture, name: str, value: str) -> None:
    caplog.set_level(logging.INFO)
    [said] = warned(caplog, {**OFF, name: value})
    assert f"{name} ({value})" in said


def test_a_bandwidth_limit_is_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    [said] = warned(caplog, {**OFF, "limits.bandwidth": "10MiB"})
    assert "limits.bandwidth" in said


def test_with_every_per_client_limit_off_nothing_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No limit an address has: all clients behind one address lose nothing."""
    caplog.set_level(logging.INFO)
    assert warned(caplog, OFF) == []
    assert warned(caplog, {**OFF, "auth.mode": "users", "auth.dir": "/nonexistent"}) == []


def test_the_login_bucket_is_said_in_the_words_of_users_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    users = {"auth.mode": "users", "auth.dir": "/nonexistent"}
    [said] = warned(caplog, {**OFF, "limits.failed_logins_per_minute": "5", **users})
    assert "limits.failed_logins_per_minute (5)" in said
    assert "every user's login" in said
