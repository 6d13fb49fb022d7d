"""Review of the login check against a token service that answers ``400`` to a scope-less
request (login5, after fa048d6): its scoped check took any anonymous ``200`` for "anonymous
reads it", but token services hand anonymous tokens that grant nothing for any scope (Docker
Hub always issues one; Distribution's convention: the ``access`` claim is then empty). Shown
failing first (a strict xfail), then fixed. Nothing leaves the process: the upstreams are
``httpx.MockTransport`` fakes, and a clock the tests move (``now``) stands for the time."""

from __future__ import annotations

import httpx
import pytest

from docxy.upstream.client import UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit.test_review_login4 import jwt_shaped, pull_of, reads
from tests.unit.test_review_tokens import TOKEN_CHALLENGE
from tests.unit.test_review_tokens4 import LOGIN, ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)


class GcrStyle:
    """A token service that answers ``400`` without a scope; the login reads ``priv/*`` and
    ``pub/*``, is answered ``401`` for ``other/*`` (another account's, as gcr.io answers a
    good login that may not read one); anyone gets a token for any scope, granting pull on
    ``pub/*`` only (for ``other/*`` and ``priv/*`` an empty ``access``, as Docker Hub gives).
    ``log`` has each token request's (scope, Authorization, status)."""

    def __init__(self, *, opaque: bool = False) -> None:
        self.log: list[tuple[str | None, str | None, int]] = []
        self.opaque = opaque

    def token(self, scope: str, sent: str | None) -> str:
        repository = scope.split(":")[1]
        readable = repository.startswith("pub/") or (
            sent == LOGIN and repository.startswith("priv/")
        )
        if self.opaque:
            return "robot" if sent == LOGIN else "anonymous"
        subject = "robot" if sent == LOGIN else ""
        return jwt_shaped(subject, pull_of(repository) if readable else [])

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            return self.token_answer(request)
        return self.registry_answer(request)

    def token_answer(self, request: httpx.Request) -> httpx.Response:
        scope = request.url.params.get("scope")
        sent = request.headers.get("authorization")
        if scope is None:
            answer = httpx.Response(400, json={"details": "scope required"})
        elif sent is not None and sent != LOGIN:
            answer = httpx.Response(401, json={"details": "bad password"})
        elif sent == LOGIN and scope.startswith("repository:other/"):
            answer = httpx.Response(401, json={"details": "access denied"})
        else:
            answer = httpx.Response(200, json={"token": self.token(scope, sent)})
        self.log.append((scope, sent, answer.status_code))
        return answer

    def registry_answer(self, request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization", "")
        path = request.url.path
        if self.opaque:
            pub_ok = sent in ("Bearer robot", "Bearer anonymous")
            ok = (path.startswith("/v2/priv/") and sent == "Bearer robot") or (
                path.startswith("/v2/pub/") and pub_ok
            )
        else:
            ok = reads(sent, path)
        if ok:
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})


@pytest.mark.parametrize("opaque", [False, True])
@pytest.mark.parametrize("fresh", [True, False])
async def test_a_right_password_is_not_refused_by_a_repository_it_may_not_read(
    now: list[float], fresh: bool, opaque: bool
) -> None:
    """The right password; a client pulls a name the account may not read (or a made-up
    one): the login gets ``401``, an anonymous request a token that grants nothing. That is
    no word on the login: it stays in use, the mirror's private repositories read (they were
    answered ``401`` for a minute, with a WARNING "wrong or revoked", renewable by pulling
    that name every minute). A token that is no JWT says nothing of what it grants."""
    registry = GcrStyle(opaque=opaque)
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        if not fresh:
            assert await miss(tokens, "priv/a") == 200  # the login reads its private one
            now[0] += 1
        assert await miss(tokens, "other/x") == 401  # anyone may ask for another's
        assert not tokens.login_refused(ROBOT), registry.log
        assert tokens.client.health_of(ROBOT).login != "refused"
        assert await miss(tokens, "priv/b") == 200


class OneOff(GcrStyle):
    """:class:`GcrStyle` whose token service answers the scope-less login check as
    ``docker login`` expects (a token for the right login), but the first such request
    ``status`` once (a path a proxy lost for a moment, a request timed out). ``checks``
    counts the scope-less requests."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.checks = 0

    def token_answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("scope") is not None:
            return super().token_answer(request)
        self.checks += 1
        if self.checks == 1:
            return httpx.Response(self.status, json={"details": "not now"})
        return httpx.Response(200, json={"token": jwt_shaped("robot", [])})


@pytest.mark.parametrize("status", [404, 408])
async def test_a_one_off_answer_to_the_login_check_is_not_taken_for_scope_required(
    now: list[float], status: int
) -> None:
    """A scope-less check answered ``404`` or ``408`` once was taken for "scope required"
    (as a ``400``) for a minute: the checks meanwhile went with a scope only, and a
    repository the account may not read gave them no verdict (the login never known
    accepted, such ``401``s unchecked). Only a ``400`` (or the same answer twice in a row) is
    remembered so: the next check asks without a scope again, and that answer accepts the
    login. (The miss's own ``401`` is not checked again since login6: its scoped check just
    found no verdict in that repository's ``401``, the login is not sent for it again.)"""
    registry = OneOff(status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "other/x") == 401  # before it: the one-off, no verdict
        assert registry.checks == 1
        assert await miss(tokens, "other/y") == 401  # its check: asked without a scope again
        assert registry.checks == 2
        assert tokens.client.health_of(ROBOT).login == "accepted"
        assert not tokens.login_refused(ROBOT)
