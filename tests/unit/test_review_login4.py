"""Review of the mirror's own login check against a token service that answers ``400`` to a
scope-less request (login4): shown failing first (a strict xfail), then fixed. Nothing leaves
the process: the upstreams are ``httpx.MockTransport`` fakes, and a clock the tests move
(``now``) stands for the time that passes."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from docxy.upstream.client import UpstreamClient
from docxy.upstream.tokens import REFUSED_TTL, MirrorTokens
from tests.unit.test_review_tokens import TOKEN_CHALLENGE
from tests.unit.test_review_tokens4 import LOGIN, ROBOT, Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_shaped(subject: str, access: list[dict[str, object]]) -> str:
    """A token shaped as Distribution's (a JWT, its signature not checked by the mirror)."""
    header = _b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"sub": subject, "access": access}).encode())
    return f"{header}.{payload}.{_b64url(b'not checked')}"


def pull_of(repository: str) -> list[dict[str, object]]:
    return [{"type": "repository", "name": repository, "actions": ["pull"]}]


def reads(authorization: str, path: str) -> bool:
    """Whether a :func:`jwt_shaped` bearer token grants pull on the repository of ``path``
    (``/v2/<namespace>/<name>/...``), as the registry checks it."""
    if not authorization.startswith("Bearer ") or authorization.count(".") != 2:
        return False
    payload = authorization.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return bool(claims["access"] == pull_of("/".join(path.split("/")[2:4])))


class ScopeRequired(Revocable):
    """:class:`Revocable` whose token service answers ``400`` to every scope-less request
    (with or without a login, right or wrong), as some do ("scope required"); its ``owner/*``
    repositories are public, ``other/*`` private to an account that is not the mirror's (the
    login gets ``401`` for them, as gcr.io answers). Anyone gets a token for any scope, as
    Docker Hub gives: a JWT whose ``access`` grants pull where the asker may read, nothing
    (empty) where not. Each answer a little late, so concurrent misses overlap. ``failed``
    counts the token requests that carried the login while it is ``revoked``: failed logins
    on the account."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host != "auth.test":
            if reads(request.headers.get("authorization", ""), request.url.path):
                return httpx.Response(200, json={})
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        sent = request.headers.get("authorization")
        if sent is not None and self.revoked:
            self.failed += 1
        scope = request.url.params.get("scope")
        if scope is None:
            self.checks += 1
            return httpx.Response(400, json={"details": "scope required"})
        self.scoped.append((scope, sent))
        return self.token_answer(scope.split(":")[1], sent)

    def token_answer(self, repository: str, sent: str | None) -> httpx.Response:
        if sent is not None and (self.revoked or sent != LOGIN):
            return httpx.Response(401, json={"details": "incorrect username or password"})
        if repository.startswith("other/") and sent is not None:
            return httpx.Response(401, json={"details": "access denied"})
        access = [] if repository.startswith("other/") else pull_of(repository)
        token = jwt_shaped("robot" if sent else "", access)
        return httpx.Response(200, json={"token": token, "expires_in": 300})


async def misses(
    tokens: MirrorTokens, repositories: list[str], *, together: bool, now: list[float], step: float
) -> list[int]:
    """A miss of each repository (:func:`miss`): all at once, or one after another ``step``
    seconds apart on the fake clock ``now``."""
    if together:
        return list(await asyncio.gather(*(miss(tokens, r) for r in repositories)))
    answers = []
    for repository in repositories:
        answers.append(await miss(tokens, repository))
        now[0] += step
    return answers


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
        answers = await misses(tokens, repositories, together=together, now=now, step=10)
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
    an anonymous token that grants nothing), on a fresh start and after a quiet spell, is
    that repository's ``401`` only; the login stays in use, its readable repositories read.
    So are concurrent misses of such repositories a second after an acceptance (the clock
    moved: at the acceptance's instant their ``401``s were not checked at all)."""
    registry = ScopeRequired()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        if quiet:
            assert await miss(tokens, "owner/a") == 200
            now[0] += quiet
        assert await miss(tokens, "other/x") == 401
        assert not tokens.login_refused(ROBOT)
        assert await miss(tokens, "owner/b") == 200
        now[0] += 1
        assert await asyncio.gather(*(miss(tokens, f"other/y{n}") for n in range(3))) == [401] * 3
        assert not tokens.login_refused(ROBOT)
        assert tokens.client.health_of(ROBOT).login != "refused"
    assert ("repository:owner/b:pull", LOGIN) in registry.scoped  # the login went with it
    checked = [s for s, sent in registry.scoped if s.startswith("repository:other/y") and not sent]
    assert checked  # their 401s were checked (anonymously, with the scope)


async def test_a_token_service_wanting_a_scope_is_not_asked_without_one_each_miss(
    now: list[float],
) -> None:
    """A wrong password and only private repositories (an anonymous token that grants
    nothing to compare with): no verdict, each miss's ``401`` stands for its repository. Each
    miss asked the scope-less check twice (before its request and after its ``401``), three
    failed logins a miss; the scoped check would have added one more. Within a minute of its
    ``400`` the token service is not asked without a scope again: one scoped request with the
    login per miss, and the check's."""
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
