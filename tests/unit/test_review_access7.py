"""The start-up warning for a TLS proxy not named in ``server.trusted_proxies`` says what all
clients share as the proxy's one address, and ``limits.exempt`` changes that: an exempt
address takes from no per-client bucket but the failed-login one (``docxy.edge.admission``,
``docxy.edge.connections``, ``docxy.http.routes.count_relay``, ``docxy.edge.fills``; not
``docxy.access.logins``). The warning named every limit that is on all the same, so a proxy on
loopback with ``limits.exempt = ["127.0.0.0/8"]`` was said to make all clients share 128
connections and 600 relayed logins a minute, which it does not. The mirror does not know the
proxy's address (nobody named it): it can tell only when ``limits.exempt`` covers every
address ``server.listen`` can be reached from (all of loopback for a loopback listener, else
everything), and otherwise says what listing the proxy there would leave shared."""

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
#: Every per-client limit on, each with a value of its own.
ON = {
    "limits.connections_per_client": "16",
    "limits.requests_per_minute": "300",
    "limits.manifests_per_minute": "60",
    "limits.failed_logins_per_minute": "7",
    "limits.token_relays_per_minute": "90",
    "limits.bandwidth": "10MiB",
    "limits.fills_per_client": "4",
}
#: What an exempt address is spared: every per-client limit but the failed-login one.
SPARED = [name for name in ON if name != "limits.failed_logins_per_minute"]
LOOPBACK = {"server.listen": "127.0.0.1:8080"}
EVERYWHERE = {"server.listen": "[::]:8080", "limits.exempt": "0.0.0.0/0, ::/0"}


def warned(caplog: pytest.LogCaptureFixture, settings: dict[str, str]) -> list[str]:
    caplog.set_level(logging.INFO)
    caplog.clear()
    base = {"server.public_url": PUBLIC, "upstream.registry": REGISTRY}
    warn_unnamed_proxy(load_config({**base, **settings}, environ={}))
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "server.trusted_proxies" in r.getMessage()
    ]


def shares(said: str) -> str:
    """What the warning says all clients share: its words after "all share one client's"."""
    return said.partition("all share one client's ")[2]


def test_without_exempt_every_limit_on_is_named(caplog: pytest.LogCaptureFixture) -> None:
    [said] = warned(caplog, {**ON, **LOOPBACK})
    for name in ON:
        assert name in shares(said)
    assert "limits.failed_logins_per_minute (7)" in said
    assert "limits.exempt" not in said


@pytest.mark.parametrize(
    "settings",
    [
        {**LOOPBACK, "limits.exempt": "127.0.0.0/8"},
        {"server.listen": "127.0.0.1:8080", "limits.exempt": "10.0.0.0/8, 127.0.0.0/8"},
        {"server.listen": "[::1]:8080", "limits.exempt": "::1"},
        {"server.listen": "localhost:8080", "limits.exempt": "127.0.0.0/8, ::1"},
        {"server.listen": "0.0.0.0:8080", "limits.exempt": "0.0.0.0/0"},
        EVERYWHERE,
    ],
)
def test_an_exempt_proxy_shares_only_the_failed_login_bucket(
    caplog: pytest.LogCaptureFixture, settings: dict[str, str]
) -> None:
    [said] = warned(caplog, {**ON, **settings})
    shared = shares(said)
    assert "limits.failed_logins_per_minute (7)" in shared
    assert [name for name in SPARED if name in shared] == []
    assert "limits.exempt" in said  # why the rest are not shared


@pytest.mark.parametrize("mode", ["open", "users"])
def test_an_exempt_proxy_with_no_failed_login_limit_is_not_warned_of(
    caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Nothing is shared: nothing to say."""
    settings = {**ON, **EVERYWHERE, "limits.failed_logins_per_minute": "0", "auth.mode": mode}
    if mode == "users":
        settings["auth.dir"] = "/nonexistent"
    assert warned(caplog, settings) == []
    loopback = {**ON, **LOOPBACK, "limits.exempt": "127.0.0.0/8"}
    assert warned(caplog, {**loopback, "limits.failed_logins_per_minute": "0"}) == []


@pytest.mark.parametrize(
    "settings",
    [
        # the proxy may connect from anywhere: the mirror cannot tell it is exempt
        {"server.listen": "0.0.0.0:8080", "limits.exempt": "10.0.0.0/8"},
        {"server.listen": "[::]:8080", "limits.exempt": "0.0.0.0/0"},  # IPv6 proxies too
        # a loopback listener's peer may be any of 127.0.0.0/8
        {**LOOPBACK, "limits.exempt": "127.0.0.1"},
        {"server.listen": "localhost:8080", "limits.exempt": "127.0.0.0/8"},  # and ::1
    ],
)
def test_an_exempt_list_that_may_miss_the_proxy_says_what_listing_it_would_leave(
    caplog: pytest.LogCaptureFixture, settings: dict[str, str]
) -> None:
    [said] = warned(caplog, {**ON, **settings})
    for name in ON:
        assert name in shares(said)
    _, _, unless = said.partition("unless limits.exempt lists the proxy's address")
    assert "limits.failed_logins_per_minute (7)" in unless
    assert [name for name in SPARED if name in unless] == []


def test_with_every_limit_off_nothing_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    assert warned(caplog, OFF) == []
    assert warned(caplog, {**OFF, **EVERYWHERE}) == []
    assert warned(caplog, {**OFF, "limits.exempt": "10.0.0.0/8"}) == []


#: Kept per user once a client is logged in (docxy.edge.clients.limit_key): shared behind the
#: proxy only by what comes without a token (challenges, the token requests of logins).
BY_USER = [
    "limits.requests_per_minute",
    "limits.manifests_per_minute",
    "limits.bandwidth",
    "limits.fills_per_client",
]


def test_in_users_mode_per_user_limits_are_said_shared_only_before_a_login(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review of 9121476: in users mode a logged-in client's requests, manifests, bandwidth
    and fills are counted under its user name, not the proxy's address, and the mirror relays
    no upstream logins (it is the authority): the warning said all clients share them."""
    users = {**ON, **LOOPBACK, "auth.mode": "users", "auth.dir": "/nonexistent"}
    [said] = warned(caplog, users)
    everyone, _, before_login = shares(said).partition("before a login")
    assert "limits.connections_per_client (16)" in everyone
    assert "limits.failed_logins_per_minute (7)" in everyone
    assert [name for name in BY_USER if name in everyone] == []
    assert [name for name in BY_USER if name not in before_login] == []
    assert "limits.token_relays_per_minute" not in said
