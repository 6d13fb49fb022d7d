"""Review of the mirror's own login check against a token service that answers ``400`` to a
scope-less request (login4): shown failing first (a strict xfail), then fixed. Nothing leaves
the process: the upstreams are ``httpx.MockTransport`` fakes, and a clock the tests move
(``now``) stands for the time that passes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from docxy.upstream.client import UpstreamClient
from docxy.upstream.tokens import REFUSED_TTL, MirrorTokens
from tests.unit.test_review_tokens4 import LOGIN, ROBOT, Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)


class ScopeRequired(Revocable):
    """:class:`Revocable` whose token service answers ``400`` to every scope-less request
    (with or without a login, right or wrong), as some do ("scope required"); its ``owner/*``
    repositories are public, ``other/*`` private to an account that is not the mirror's (the
    login gets ``401`` for them, as gcr.io answers, and so does an anonymous request). Each
    answer a little late, so concurrent misses overlap. ``failed`` counts the token requests
    that carried the login while it is ``revoked``: failed logins on the account."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        if request.url.host != "auth.test":
            return self(request)
        sent = request.headers.get("authorization")
        if sent is not None and self.revoked:
            self.failed += 1
        scope = request.url.params.get("scope")
        if scope is None:
            self.checks += 1
            return httpx.Response(400, json={"details": "scope required"})
        if scope.startswith("repository:other/"):
            self.scoped.append((scope, sent))
            return httpx.Response(401, json={"details": "access denied"})
        return self(request)


@pytest.mark.parametrize("together", [False, True])
async def test_a_wrong_password_costs_failed_logins_once_not_per_miss(
    now: list[float], together: bool
) -> None:
    """The scope-less check answered ``400`` gave no verdict, so each scoped ``401`` to the
    wrong password stood for its repository alone: every miss sent it again (two checks and
    a scoped request, three failed logins each) and every public repository was answered
    ``401``. Now the check asks once more with the miss's scope, and compares with the same
    scope asked anonymously: the login refused for the upstream, public repositories read
    anonymously, the account sent the wrong password a bounded number of times."""
    registry = ScopeRequired()
    registry.revoked = True
    repositories = [f"owner/img{n}" for n in range(5)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        if together:
            answers = await asyncio.gather(*(miss(tokens, r) for r in repositories))
        else:
            answers = []
            for repository in repositories:
                answers.append(await miss(tokens, repository))
                now[0] += 10
        assert registry.failed <= 2  # the scope-less check, and its scoped one
        assert answers == [200] * 5  # public: anonymous tokens read them
        assert tokens.login_refused(ROBOT)
        assert tokens.client.health_of(ROBOT).login == "refused"
        now[0] += REFUSED_TTL + 1  # a minute on: checked again, once
        assert await miss(tokens, "owner/later") == 200
    assert registry.failed <= 4
    anonymous = {scope for scope, sent in registry.scoped if sent is None}
    assert {f"repository:{r}:pull" for r in repositories} <= anonymous


@pytest.mark.parametrize("quiet", [0.0, REFUSED_TTL + 30])
async def test_a_right_password_is_never_judged_refused(now: list[float], quiet: float) -> None:
    """The right password on such a token service (the case that made df98667 go, reverted
    in cef36a3): a first miss of a repository the account may not read (``401`` to the login,
    and to an anonymous request), on a fresh start and after a quiet spell, is that
    repository's ``401`` only; the login stays in use, its readable repositories read."""
    registry = ScopeRequired()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        if quiet:
            assert await miss(tokens, "owner/a") == 200
            now[0] += quiet
        assert await miss(tokens, "other/x") == 401
        assert not tokens.login_refused(ROBOT)
        assert await miss(tokens, "owner/b") == 200
        assert await asyncio.gather(*(miss(tokens, f"other/y{n}") for n in range(3))) == [401] * 3
        assert not tokens.login_refused(ROBOT)
        assert tokens.client.health_of(ROBOT).login != "refused"
    assert ("repository:owner/b:pull", LOGIN) in registry.scoped  # the login went with it


async def test_a_token_service_wanting_a_scope_is_not_asked_without_one_each_miss(
    now: list[float],
) -> None:
    """A wrong password and only private repositories (no anonymous token to compare with):
    no verdict, each miss's ``401`` stands for its repository. Each miss asked the scope-less
    check twice (before its request and after its ``401``), three failed logins a miss; the
    scoped check would have added one more. Within a minute of its ``400`` the token service
    is not asked without a scope again: one scoped request with the login per miss, and the
    check's."""
    registry = ScopeRequired()
    registry.revoked = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for n in range(5):
            assert await miss(tokens, f"other/img{n}") == 401
            now[0] += 10
        assert not tokens.login_refused(ROBOT)  # nothing told it
    assert registry.checks == 1
    assert registry.failed <= 1 + 2 * 5
