"""Review r5 of the login check against a token service that gives no verdict without a
scope (login6, after fa048d6 and 9069d08): a wrong password with only private repositories
pulled cost failed logins without bound, and a token service answering every scope-less
request ``404`` was asked so twice a miss. Shown failing first (a strict xfail), then fixed.
Nothing leaves the process: the upstreams are ``httpx.MockTransport`` fakes, and a clock the
tests move (``now``) stands for the time that passes."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from docxy.upstream.client import UpstreamClient
from docxy.upstream.tokens import NO_VERDICT_SENDS, REFUSED_TTL, MirrorTokens, basic_authorization
from tests.unit.test_review_login4 import jwt_shaped, misses, pull_of, reads
from tests.unit.test_review_tokens import TOKEN_CHALLENGE
from tests.unit.test_review_tokens4 import LOGIN, ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)

HELD_BACK = "held back"


class HubStyle:
    """A token service that answers every scope-less request ``scopeless`` (``400``, "scope
    required", or ``404``), and a scoped one with a login other than ``expected`` ``401`` (a
    wrong password: a failed login on the account). ``expected`` reads ``priv/*`` and
    ``pub/*``, and is answered ``401`` for ``other/*`` (another account's). Anyone gets a token
    for any scope, as Docker Hub gives: a JWT granting pull on ``pub/*`` (and ``priv/*`` to
    ``expected``), an empty ``access`` otherwise. ``log``: each token request's (scope,
    Authorization, status). Each answer a little late, so concurrent misses overlap."""

    def __init__(self, *, right: bool = True, scopeless: int = 400) -> None:
        self.expected = LOGIN if right else basic_authorization("robot", "changed")
        self.scopeless = scopeless
        self.log: list[tuple[str | None, str | None, int]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            answer = self.token_answer(request)
            scope = request.url.params.get("scope")
            self.log.append((scope, request.headers.get("authorization"), answer.status_code))
            return answer
        if reads(request.headers.get("authorization", ""), request.url.path):
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})

    def token_answer(self, request: httpx.Request) -> httpx.Response:
        scope = request.url.params.get("scope")
        sent = request.headers.get("authorization")
        if scope is None:
            return httpx.Response(self.scopeless, json={"details": "scope required"})
        if sent is not None and sent != self.expected:
            return httpx.Response(401, json={"details": "incorrect username or password"})
        repository = scope.split(":")[1]
        if sent is not None and repository.startswith("other/"):
            return httpx.Response(401, json={"details": "access denied"})
        readable = repository.startswith("pub/") or (
            sent is not None and repository.startswith("priv/")
        )
        token = jwt_shaped("robot" if sent else "", pull_of(repository) if readable else [])
        return httpx.Response(200, json={"token": token, "expires_in": 300})

    def failed_logins(self) -> int:
        """Token requests that carried a wrong login and were answered ``401``."""
        return sum(
            1 for _, sent, status in self.log if sent not in (None, self.expected) and status == 401
        )

    def with_login(self) -> int:
        return sum(1 for _, sent, _ in self.log if sent is not None)

    def scopeless_asked(self) -> int:
        return sum(1 for scope, _, _ in self.log if scope is None)


# --- 1. a wrong password, private repositories only: failed logins without bound -----------


@pytest.mark.parametrize("together", [False, True])
async def test_a_wrong_password_on_private_repositories_costs_a_bounded_number_of_logins(
    now: list[float], together: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Scope-less ``400``, an anonymous token granting nothing for a private name: no verdict
    on the login, each miss's ``401`` stood for its repository only, and each miss sent the
    wrong password twice (its check's scoped request, then its own): 8 distinct private
    repositories, 16 failed logins, more with every miss. Now a repository whose ``401`` to
    the login got no verdict is not sent the login again for ``REFUSED_TTL``, and an upstream
    sends a login of no verdict ``NO_VERDICT_SENDS`` times a minute at most (a WARNING once
    when it holds it back). The login is not judged refused (nothing tells a wrong password
    from an account that may not read these), and each miss is answered ``401`` as before."""
    caplog.set_level(logging.WARNING, logger="docxy.upstream.tokens")
    registry = HubStyle(right=False)
    repositories = [f"priv/img{n}" for n in range(8)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answers = await misses(tokens, repositories, together=together, now=now, step=5)
        assert answers == [401] * 8
        assert not tokens.login_refused(ROBOT)
        assert registry.failed_logins() <= NO_VERDICT_SENDS, registry.log
        assert sum(HELD_BACK in r.getMessage() for r in caplog.records) == 1
        # a minute on: the login may go again, as much
        now[0] += REFUSED_TTL
        assert await miss(tokens, "priv/later") == 401
    assert registry.failed_logins() <= NO_VERDICT_SENDS + 1


async def test_a_wrong_password_on_one_private_repository_goes_once_a_minute(
    now: list[float],
) -> None:
    """The same private repository pulled again and again: two failed logins a miss, as long
    as it was pulled. Now its ``401`` with no verdict stands for ``REFUSED_TTL``."""
    registry = HubStyle(right=False)
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for _ in range(6):
            assert await miss(tokens, "priv/app") == 401
            now[0] += 5
        assert registry.failed_logins() == 1, registry.log
        now[0] += REFUSED_TTL
        assert await miss(tokens, "priv/app") == 401
    assert registry.failed_logins() == 2


async def test_a_right_password_reads_its_own_after_many_names_it_may_not_read(
    now: list[float],
) -> None:
    """The right password on such a token service: names it may not read (``401`` to it, an
    anonymous token that grants nothing) give no verdict either; once it got a token for its
    own repository, those never hold it back. Its private repositories read throughout."""
    registry = HubStyle()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "priv/a") == 200
        for n in range(3 * NO_VERDICT_SENDS):
            assert await miss(tokens, f"other/x{n}") == 401
            now[0] += 1
        assert await miss(tokens, "priv/b") == 200
        assert not tokens.login_refused(ROBOT)
        assert tokens.client.health_of(ROBOT).login == "accepted"
    assert ("repository:priv/b:pull", LOGIN, 200) in registry.log


# --- 2. a token service that answers every scope-less check 404 ------------------------------


@pytest.mark.parametrize("status", [404, 405])
async def test_a_scope_less_answer_seen_twice_in_a_row_is_remembered(
    now: list[float], status: int
) -> None:
    """A token service that answers every scope-less request ``404``: only a ``400`` was
    remembered, so each miss asked it twice (before its request, after its ``401``), four
    requests with the login a miss for a repository the right login may not read. Now the
    same answer twice in a row within ``REFUSED_TTL`` is remembered as a ``400`` is."""
    registry = HubStyle(scopeless=status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "priv/a") == 200
        for n in range(4):
            assert await miss(tokens, f"other/x{n}") == 401
            now[0] += 5
        assert await miss(tokens, "priv/b") == 200
        assert not tokens.login_refused(ROBOT)
    assert registry.scopeless_asked() == 2, registry.log


async def test_a_right_password_held_back_before_any_acceptance_reads_a_minute_on(
    now: list[float],
) -> None:
    """The price of the bound, as the README says it: the right password's first requests
    all for names it may not read (no verdict in any) hold the login back for the rest of that
    minute, its private repository answered ``401`` meanwhile; a minute on it reads, and is
    accepted (never held back so again)."""
    registry = HubStyle()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for n in range(NO_VERDICT_SENDS):
            assert await miss(tokens, f"other/x{n}") == 401
            now[0] += 1
        assert await miss(tokens, "priv/a") == 401  # held back: asked anonymously
        assert ("repository:priv/a:pull", None, 200) in registry.log
        now[0] += REFUSED_TTL
        assert await miss(tokens, "priv/b") == 200
        assert tokens.client.health_of(ROBOT).login == "accepted"
        assert not tokens.login_refused(ROBOT)


# --- a blip of the check: misses held back keep their anonymous tokens no longer than the hold ---


class BlipHub:
    """Docker Hub's way (a right login's scope-less check 200), whose check answers 500 once;
    public repositories for anyone, every token JWT-shaped."""

    def __init__(self) -> None:
        self.blips = 1
        self.log: list[tuple[str | None, str | None]] = []  # (scope, Authorization)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # concurrent misses all wait on the first check
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            scope = request.url.params.get("scope")
            sent = request.headers.get("authorization")
            self.log.append((scope, sent))
            if scope is None and self.blips:
                self.blips -= 1
                return httpx.Response(500)
            repo = scope.split(":")[1] if scope else ""
            grants = pull_of(repo) if scope else []
            body = {"token": jwt_shaped("robot" if sent else "", grants), "expires_in": 300}
            return httpx.Response(200, json=body)
        if reads(request.headers.get("authorization", ""), request.url.path):
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})


async def test_misses_held_back_by_a_blip_keep_anonymous_tokens_no_longer_than_the_hold(
    now: list[float],
) -> None:
    """A 500 to the check left the login without a verdict while 8 misses waited: the sixth
    on went anonymously (the cap), and kept those anonymous tokens for their whole 300 s,
    pulling on the anonymous quota though the login was accepted meanwhile. Past the hold
    they ask again, with the login."""
    hub = BlipHub()
    async with httpx.AsyncClient(transport=httpx.MockTransport(hub.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        repos = [f"pub/img{n}" for n in range(8)]
        assert await asyncio.gather(*(miss(tokens, repo) for repo in repos)) == [200] * 8
        anonymous = {scope for scope, sent in hub.log if scope and sent is None}
        assert anonymous, hub.log  # the cap held some back (else this test shows nothing)
        now[0] += REFUSED_TTL + 1
        before = len(hub.log)
        assert await asyncio.gather(*(miss(tokens, repo) for repo in repos)) == [200] * 8
        again = {scope for scope, sent in hub.log[before:] if scope}
        assert again == anonymous, hub.log[before:]  # asked anew, past the hold
        assert all(sent == LOGIN for scope, sent in hub.log[before:] if scope), hub.log[before:]
