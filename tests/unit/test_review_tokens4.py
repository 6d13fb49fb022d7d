"""Review of the mirror's own login check (``MirrorTokens._login_verdict``) and how a refused
login shows (tokens4): faults found, each shown here failing first (a strict xfail), then
fixed. Nothing leaves the process: the upstreams are ``httpx.MockTransport`` fakes, and a
clock the tests move (``now``) stands for the time that passes."""

from __future__ import annotations

import json
import logging
import time
import types
from pathlib import Path

import httpx
import pytest

from docxy.observe.status import render_page
from docxy.upstream import tokens as tokens_module
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import REFUSED_TTL, MirrorTokens, basic_authorization
from tests.unit.test_pull_blobs import DIGEST, basic
from tests.unit.test_pull_blobs import Upstream as AccountRegistry
from tests.unit.test_pull_blobs import mirror as blob_mirror
from tests.unit.test_review_tokens import TOKEN_CHALLENGE

ROBOT = Upstream("https://registry.test", credentials=("robot", "right"))
LOGIN = basic_authorization("robot", "right")
REFUSED = "refused the mirror's login"


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The tokens module's monotonic clock, moved by the test (its wall clock left as is)."""
    clock = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(tokens_module, "time", fake)
    return clock


class Revocable:
    """A token-auth registry whose token service accepts the login ``robot:right`` until
    ``revoked`` (then ``401`` to it, scoped or not), and gives anyone an anonymous token; its
    repositories are public (an anonymous token reads them) and the login's token reads them
    too. ``checks`` counts the scope-less token requests (the login checks), ``scoped`` has
    each scoped request's (scope, Authorization)."""

    def __init__(self) -> None:
        self.revoked = False
        self.checks = 0
        self.scoped: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            scope = request.url.params.get("scope")
            sent = request.headers.get("authorization")
            if scope is None:
                self.checks += 1
            else:
                self.scoped.append((scope, sent))
            if sent is not None and (self.revoked or sent != LOGIN):
                return httpx.Response(401, json={"details": "incorrect username or password"})
            token = "robot" if sent == LOGIN else "anonymous"
            return httpx.Response(200, json={"token": token, "expires_in": 300})
        if request.headers.get("authorization") in ("Bearer robot", "Bearer anonymous"):
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})


async def miss(tokens: MirrorTokens, repository: str) -> int:
    answer = await tokens.send(ROBOT, "GET", repository, f"/v2/{repository}/manifests/1")
    await answer.aclose()
    return answer.status_code


# --- 1. an accepted login checked again after every quiet minute ----------------------------


async def test_an_accepted_login_is_not_checked_again_after_a_quiet_minute(
    now: list[float],
) -> None:
    """A quiet mirror: each first miss after a minute paid one more token request (the
    scope-less check), on its client's path, for a login the token service accepted two
    minutes ago. An accepted login is trusted longer (a scoped ``401`` still checks it)."""
    registry = Revocable()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        now[0] += 150
        assert await miss(tokens, "owner/c") == 200
    assert registry.checks == 1
    assert registry.scoped == [
        ("repository:owner/a:pull", LOGIN),
        ("repository:owner/c:pull", LOGIN),
    ]


async def test_a_password_revoked_meanwhile_is_still_found(now: list[float]) -> None:
    """The accepted login trusted, the password revoked two minutes later: the scoped ``401``
    checks it at once, the check refuses it host-wide, and the miss gets an anonymous token."""
    registry = Revocable()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        now[0] += 150
        registry.revoked = True
        assert await miss(tokens, "owner/c") == 200  # public, read anonymously
        assert tokens.login_refused(ROBOT)
        assert await miss(tokens, "owner/d") == 200
    assert registry.checks == 2  # the first miss's, and the one after owner/c's 401
    assert registry.scoped[-2:] == [
        ("repository:owner/c:pull", None),
        ("repository:owner/d:pull", None),  # not sent the refused login again
    ]


# --- 2. a refused login's WARNING once a minute ------------------------------------------------


async def test_a_refused_login_is_logged_once_per_change(
    now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """The password wrong for an hour: its WARNING came again each minute (each check after
    ``REFUSED_TTL``), and so did its entry among the status page's recent errors, pushing the
    others off. Now once when it is refused, DEBUG while it stays so, INFO when accepted."""
    caplog.set_level(logging.DEBUG, logger=tokens_module.__name__)
    registry = Revocable()
    registry.revoked = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        for n in range(4):
            assert await miss(tokens, f"owner/img{n}") == 200
            now[0] += REFUSED_TTL + 1
        assert registry.checks == 4  # each minute's check did happen
        refusals = [r for r in caplog.records if REFUSED in r.getMessage()]
        assert [r.levelno for r in refusals] == [logging.WARNING] + [logging.DEBUG] * 3
        health = client.health_of(ROBOT)
        assert [kind for _, kind, _ in health.recent_failures] == ["login_refused"]
        registry.revoked = False  # the account mended upstream
        caplog.clear()
        assert await miss(tokens, "owner/again") == 200
        assert not tokens.login_refused(ROBOT)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "accepted" in infos[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- 3. /health silent about a refused login -------------------------------------------------


class RefusesLogin(AccountRegistry):
    """test_pull_blobs' registry (``team/app`` read with the account ``bot:s3cret`` only),
    whose token service refuses that login (``401``) while ``revoked``."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        if request.url.host == "auth.test" and self.revoked and sent is not None:
            self.token_auth.append(sent)
            return httpx.Response(401, json={"details": "incorrect username or password"})
        return super().__call__(request)


async def test_health_shows_a_refused_login_and_is_degraded(
    tmp_path: Path, now: list[float]
) -> None:
    """The mirror's login refused (its private pulls fail): the log and the status page said
    so, ``/health`` said ``ok`` with nothing about it. It now says ``login: refused`` (since
    when) for that upstream, ``degraded``, and ``ok`` again once the login is accepted; no
    user name or password in it."""
    registry = RefusesLogin()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    blob = f"/v2/team/app/blobs/{DIGEST}"
    async with blob_mirror(tmp_path, registry, **settings) as app:
        client = app.test_client()
        await client.get("/health")
        fresh = json.loads(await (await client.get("/health")).get_data())
        assert fresh["status"] == "ok" and fresh["upstream"].get("login") is None
        answer = await client.get(blob)
        assert answer.status_code == 401  # private: the anonymous token cannot read it
        text = await (await client.get("/health")).get_data(as_text=True)
        report = json.loads(text)
        assert report["status"] == "degraded"
        assert report["upstream"]["login"] == "refused"
        assert report["upstream"]["login_refused_since"] is not None
        assert report["upstream"]["healthy"] is False
        assert "s3cret" not in text and "bot" not in text
        registry.revoked = False
        now[0] += REFUSED_TTL + 1
        answer = await client.get(blob)
        assert answer.status_code == 200
        report = json.loads(await (await client.get("/health")).get_data())
    assert basic("bot", "s3cret") in registry.token_auth
    assert report["status"] == "ok"
    assert report["upstream"]["login"] == "accepted"
    assert report["upstream"]["login_refused_since"] is None
    assert report["upstream"]["healthy"] is True


def test_the_status_page_badge_says_the_login_is_refused() -> None:
    """The upstream answering, the mirror's login refused: its badge said "failing", as for
    a 5xx; it names the trouble, and says nothing of it once the login is accepted."""
    seen = {"reachable": True, "healthy": False, "login": "refused"}
    assert ">login refused<" in render_page({"upstream": seen})
    accepted = {"reachable": True, "healthy": True, "login": "accepted"}
    assert "login refused" not in render_page({"upstream": accepted})
