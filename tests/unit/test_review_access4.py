"""Fourth review of access control: wrong Docker Hub passwords relayed without a guessing
limit in open mode, users mode behind a proxy that is not named in ``server.trusted_proxies``,
and a users file that is not there.

Each fault is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from quart import Response

from docxy.access.gate import warn_unnamed_proxy
from docxy.access.users import UsersFile
from docxy.config import load_config
from tests.unit.fakes import reply
from tests.unit.test_access_routes import basic, code_of
from tests.unit.test_routes import PUBLIC, REGISTRY, Mirror, hub, mirror

TOKEN_PATH = "/auth/token?service=registry.example&scope=repository:victim/app:pull"
GUESSER = "127.0.103.7"
NEIGHBOUR = "127.0.103.8"


class HubLogins:
    """Docker Hub's token service as far as logins go: ``victim:right`` is the one login that
    holds; what it was asked with a login, in order."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        login = request.headers.get("Authorization")
        if request.url.host != "auth.example" or login is None:
            return hub(request)
        self.asked.append(login)
        if login == basic("victim", "right")["Authorization"]:
            return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
        details = b'{"details":"incorrect username or password"}'
        return reply(401, details, {"Content-Type": "application/json"})


async def relayed_login(m: Mirror, client: str, password: str) -> Response:
    scope = {"client": (client, 40000)}
    return await m.client.get(TOKEN_PATH, headers=basic("victim", password), scope_base=scope)


# --- 1. open mode: wrong upstream passwords relayed without a guessing limit -------------


async def test_open_mode_stops_relaying_wrong_passwords_past_the_failed_login_limit() -> None:
    """Every wrong Docker Hub password was sent on from the mirror's address, limited only by
    token_relays_per_minute (600): the upstream then pins a guesser's tries on the mirror."""
    upstream = HubLogins()
    async with mirror(upstream, {"limits.failed_logins_per_minute": "3"}) as m:
        for i in range(3):
            answer = await relayed_login(m, GUESSER, f"guess{i}")
            assert answer.status_code == 401
        refused = await relayed_login(m, GUESSER, "guess3")
        assert refused.status_code == 429
        assert await code_of(refused) == "TOOMANYREQUESTS"
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(upstream.asked) == 3  # the fourth guess never left the mirror
        # counted by address: another client's login still goes on
        other = await relayed_login(m, NEIGHBOUR, "right")
        assert other.status_code == 200
    assert len(upstream.asked) == 4


async def test_open_mode_right_upstream_passwords_spend_nothing() -> None:
    """As in users mode, a login the upstream takes gives its place back: only wrong ones
    (the upstream's 401) are counted."""
    upstream = HubLogins()
    async with mirror(upstream, {"limits.failed_logins_per_minute": "2"}) as m:
        for _ in range(5):
            answer = await relayed_login(m, GUESSER, "right")
            assert answer.status_code == 200
        for i in range(2):
            answer = await relayed_login(m, GUESSER, f"guess{i}")
            assert answer.status_code == 401
        refused = await relayed_login(m, GUESSER, "right")  # out of guesses: not asked
        assert refused.status_code == 429
    assert len(upstream.asked) == 7


async def test_open_mode_anonymous_tokens_spend_no_failed_logins() -> None:
    """Without a login nothing is guessed: anonymous tokens never meet the limit."""
    upstream = HubLogins()
    async with mirror(upstream, {"limits.failed_logins_per_minute": "1"}) as m:
        for _ in range(3):
            scope = {"client": (GUESSER, 40000)}
            answer = await m.client.get(TOKEN_PATH, scope_base=scope)
            assert answer.status_code == 200


# --- 2. users mode behind a proxy not named in server.trusted_proxies --------------------


def warnings_of(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and word in record.getMessage()
    ]


def started(settings: dict[str, object]) -> None:
    """What ``docxy.http.server.run`` says of the proxy in front when it starts serving (said
    there, not by create_app, which every test builds)."""
    base: dict[str, object] = {"server.public_url": PUBLIC, "upstream.registry": REGISTRY}
    warn_unnamed_proxy(load_config({**base, **settings}, environ={}))


def test_users_mode_behind_an_unnamed_proxy_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """https public_url, no TLS listener of its own: a proxy terminates TLS, and without
    server.trusted_proxies every client is the proxy's address, so ten wrong passwords from
    anyone lock every user out. Started without a word."""
    caplog.set_level(logging.INFO)
    started({"auth.mode": "users", "auth.dir": str(tmp_path)})
    [said] = warnings_of(caplog, "server.trusted_proxies")
    assert "https://mirror.example.com" in said and "auth.mode = users" in said


def test_users_mode_with_its_proxy_named_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    started({"auth.mode": "users", "auth.dir": str(tmp_path), "server.trusted_proxies": "::1"})
    assert warnings_of(caplog, "server.trusted_proxies") == []


def test_open_mode_behind_a_proxy_is_warned_of_too(caplog: pytest.LogCaptureFixture) -> None:
    """Open mode limits relayed upstream logins by address as well (review r6): behind an
    unnamed proxy one client's stale password locks every client's logins out. Worded for
    open mode in test_review_access5."""
    caplog.set_level(logging.INFO)
    started({})
    [said] = warnings_of(caplog, "server.trusted_proxies")
    assert "auth.mode = open" in said


# --- 3. a users file that is not there ----------------------------------------------------


async def test_a_missing_users_file_is_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """auth.users_file with a typo, or its volume not mounted: taken for "no users" without a
    word, and every right password answered 401 "incorrect username or password"."""
    UsersFile(tmp_path / "users").add("alice", "right")  # the real file
    missing = tmp_path / "typo" / "users"
    caplog.set_level(logging.INFO)
    settings: dict[str, object] = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.users_file": str(missing),
    }
    async with mirror(hub, settings):
        pass
    [said] = warnings_of(caplog, str(missing))
    assert "missing" in said and "every login is refused" in said


async def test_an_empty_users_file_is_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = tmp_path / "users"
    users.write_text("# nobody yet\n")
    caplog.set_level(logging.INFO)
    async with mirror(hub, {"auth.mode": "users", "auth.dir": str(tmp_path)}):
        pass
    [said] = warnings_of(caplog, str(users))
    assert "no user" in said and "every login is refused" in said


async def test_a_users_file_with_users_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    UsersFile(tmp_path / "users").add("alice", "right")
    caplog.set_level(logging.INFO)
    async with mirror(hub, {"auth.mode": "users", "auth.dir": str(tmp_path)}):
        pass
    assert warnings_of(caplog, "every login is refused") == []
