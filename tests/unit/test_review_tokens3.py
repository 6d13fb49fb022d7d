"""Review of the mirror's login to a token service (6890b56) and of the relay of the registry's
4xx to clients without credentials of their own (922376a) (tokens3): faults found, each shown
here failing first (a strict xfail), then fixed. Nothing leaves the process: the upstreams are
``httpx.MockTransport`` fakes."""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path

import httpx
import pytest

from docxy.http.state import mirror_state
from docxy.upstream import anonymous as anonymous_module
from docxy.upstream import tokens as tokens_module
from docxy.upstream.anonymous import OFFLINE_TOKEN
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens, basic_authorization
from tests.unit.test_pull_blobs import mirror as blob_mirror
from tests.unit.test_review_privrelay import BLOB, MANIFEST, HidesPrivate, token_from_mirror
from tests.unit.test_review_tokens import TOKEN_CHALLENGE
from tests.unit.test_review_tokens2 import REVOKED, refusing_login

# --- 1. a valid login told 401 for one repository it cannot read ----------------------------

ROBOT = Upstream("https://registry.test", credentials=("robot", "right"))
LOGIN = basic_authorization("robot", "right")


def one_repository_unauthorized(asked: list[tuple[str | None, str | None]]) -> httpx.MockTransport:
    """A registry whose token service answers the (valid) login ``401`` for ``owner/b``, which
    the account may not read (gcr.io, Artifact Registry: "You don't have the needed
    permissions"), and a token for anything else, the scope-less login (``docker login``'s
    check) included; ``asked`` gets each token request's (scope, Authorization)."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            scope = request.url.params.get("scope")
            sent = request.headers.get("authorization")
            asked.append((scope, sent))
            if sent == LOGIN and scope == "repository:owner/b:pull":
                return httpx.Response(
                    401, json={"details": "you don't have the needed permissions"}
                )
            token = "robot" if sent == LOGIN else "anonymous"
            return httpx.Response(200, json={"token": token, "expires_in": 300})
        if request.headers.get("authorization") == "Bearer robot":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})

    return httpx.MockTransport(upstream)


async def test_a_401_for_one_repository_keeps_the_login_for_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Deployment retrying an image the account cannot read (``owner/b``): the token
    service's 401 for that one repository was taken for the login refused, and ``owner/a`` (a
    private repository the account reads) got anonymous tokens for a minute, again and again,
    with a WARNING saying the password was wrong. The scope-less login decides: it is good, the
    401 stands for ``owner/b`` only."""
    asked: list[tuple[str | None, str | None]] = []
    caplog.set_level(logging.WARNING, logger=tokens_module.__name__)
    async with httpx.AsyncClient(transport=one_repository_unauthorized(asked)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        b = await tokens.send(ROBOT, "GET", "owner/b", "/v2/owner/b/manifests/1")
        a = await tokens.send(ROBOT, "GET", "owner/a", "/v2/owner/a/manifests/1")
        assert not tokens.login_refused(ROBOT)
    assert b.status_code == 401  # the token service's word on owner/b, as before 6890b56
    assert a.status_code == 200  # read with the login's token
    assert ("repository:owner/a:pull", LOGIN) in asked
    assert not [r for r in caplog.records if "refused the mirror's login" in r.getMessage()]


async def test_a_refused_login_is_still_withheld_from_the_whole_upstream() -> None:
    """The password wrong (401 everywhere, the scope-less login too): withheld host-wide, as
    6890b56 made it; one request carried it."""
    asked: list[str | None] = []
    async with httpx.AsyncClient(transport=refusing_login(asked)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        for name in ("owner/a", "owner/b", "owner/c"):
            answer = await tokens.send(REVOKED, "GET", name, f"/v2/{name}/manifests/1")
            assert answer.status_code == 200  # public content, anonymous tokens
        assert tokens.login_refused(REVOKED)
    assert len([a for a in asked if a is not None]) == 1


# --- 2. concurrent misses each sending the bad login -----------------------------------------


def slowly(transport: httpx.MockTransport) -> httpx.MockTransport:
    """``transport``'s answers, each after a moment (as over a network): requests sent at
    once are all in flight before the first answer comes."""

    async def later(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        answer = transport.handler(request)
        assert isinstance(answer, httpx.Response)
        return answer

    return httpx.MockTransport(later)


async def test_concurrent_misses_send_a_refused_login_once() -> None:
    """Misses of 8 repositories at once (a compose file's pull): each sent the login before the
    first 401 came back, 8 failed logins on the account. One check is in flight per upstream;
    the others wait for its verdict."""
    asked: list[str | None] = []
    async with httpx.AsyncClient(transport=slowly(refusing_login(asked))) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answers = await asyncio.gather(
            *(
                tokens.send(REVOKED, "GET", f"owner/img{n}", f"/v2/owner/img{n}/manifests/1")
                for n in range(8)
            )
        )
    assert [a.status_code for a in answers] == [200] * 8
    assert len([a for a in asked if a is not None]) == 1


# --- 3. an anonymous client counted as credentialed ------------------------------------------


async def test_an_anonymous_token_past_its_expiry_is_still_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd sends a token a while past its ``expires_in``: the record of the token
    relayed for an anonymous pull was gone at expiry, the client counted as credentialed, and
    the registry's 404 to the mirror cost a second upstream request (passed through)."""
    now = [1000.0]
    monkeypatch.setattr(anonymous_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    hub = HidesPrivate()
    async with blob_mirror(tmp_path, hub) as app:
        token = await token_from_mirror(app)
        now[0] += 400  # past any token's expires_in of the hub's
        response = await app.test_client().get(BLOB, headers={"Authorization": token})
    assert response.status_code == 404
    assert [m for m, _ in hub.asked(BLOB)] == ["GET"]  # the mirror's one request, relayed


@pytest.mark.parametrize("handed_out", [False, True], ids=["never-here", "a-minute-ago"])
async def test_the_offline_token_is_never_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handed_out: bool
) -> None:
    """The offline (and mirror-only) token grants nothing upstream: known as anonymous only
    60 s after it was last handed out (or never, after a restart), then counted as the
    client's own credential: one more upstream request for every registry 404."""
    now = [1000.0]
    monkeypatch.setattr(anonymous_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    hub = HidesPrivate()
    offline = {"Authorization": f"Bearer {OFFLINE_TOKEN}"}
    async with blob_mirror(tmp_path, hub) as app:
        if handed_out:
            mirror_state(app).client.anonymous_tokens.remember(OFFLINE_TOKEN, 60)
            now[0] += 61
        response = await app.test_client().get(MANIFEST, headers=offline)
    assert response.status_code == 404
    assert [m for m, _ in hub.asked(MANIFEST)] == ["GET"]


def test_an_anonymous_record_outlives_its_token_a_while_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The grace is for whether a request carries a credential of its own; whether a token
    holds (the health's question) still ends at its expiry, and the record is bounded."""
    now = [1000.0]
    monkeypatch.setattr(anonymous_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    tokens = anonymous_module.AnonymousTokens()
    tokens.remember("t", 300)
    now[0] += 301
    assert not tokens.holds("Bearer t") and tokens.anonymous("Bearer t")
    now[0] += anonymous_module.GRACE
    assert not tokens.anonymous("Bearer t")
    assert tokens.anonymous(f"Bearer {OFFLINE_TOKEN}")  # never handed out here: still nobody's
    assert not tokens.anonymous("Bearer of-a-login") and not tokens.anonymous("Basic eDp5")


async def test_a_login_check_that_fails_leaves_the_401_to_its_repository() -> None:
    """The scope-less check after a scope's 401 cannot be made (the token service's connection
    drops): the 401 is the token service's answer for that repository, not an outage."""
    inner = one_repository_unauthorized([])
    checks = [0]

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test" and "scope" not in request.url.params:
            checks[0] += 1
            if checks[0] > 1:  # the first check (before the scope's request) passes
                raise httpx.ConnectError("dropped", request=request)
        answer = inner.handler(request)
        assert isinstance(answer, httpx.Response)
        return answer

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answer = await tokens.send(ROBOT, "GET", "owner/b", "/v2/owner/b/manifests/1")
    assert checks[0] == 2
    assert answer.status_code == 401
    assert not tokens.login_refused(ROBOT)


# --- 4. the login check's own trouble (a regression read of 65bace0) -------------------------


def checked_login(
    asked: list[str | None], check: httpx.Response | Exception
) -> httpx.MockTransport:
    """A token service whose scope-less login check gets ``check`` (an answer, or raised) and
    whose scoped requests get a token; ``asked`` gets each token request's ``scope``."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        if request.url.host == "auth.test":
            scope = request.url.params.get("scope")
            asked.append(scope)
            if scope is None:
                if isinstance(check, Exception):
                    raise check
                return check
            return httpx.Response(200, json={"token": "good", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer good":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": TOKEN_CHALLENGE})

    return httpx.MockTransport(upstream)


async def test_a_login_check_answered_429_asks_for_no_token_before_its_retry_after() -> None:
    """The check answered ``429`` with ``Retry-After`` (too many failed logins): the token
    service asked for rest, and the README says it is asked for no new token until then. The
    misses waiting on that check each sent their scoped request all the same."""
    asked: list[str | None] = []
    busy = httpx.Response(429, headers={"Retry-After": "60"}, json={"errors": []})
    async with httpx.AsyncClient(transport=slowly(checked_login(asked, busy))) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answers = await asyncio.gather(
            *(
                tokens.send(REVOKED, "GET", f"owner/img{n}", f"/v2/owner/img{n}/manifests/1")
                for n in range(4)
            ),
            return_exceptions=True,
        )
    assert all(isinstance(a, Exception) for a in answers), answers
    assert asked == [None]  # the check alone: no scoped request during the rest


async def test_a_login_check_that_breaks_leaves_the_misses_their_own_requests() -> None:
    """The one shared check's connection reset: every concurrent miss of every repository
    failed with it, where each repository's own token request would have got its token."""
    asked: list[str | None] = []
    reset = httpx.ReadError("connection reset")
    async with httpx.AsyncClient(transport=slowly(checked_login(asked, reset))) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        answers = await asyncio.gather(
            *(
                tokens.send(REVOKED, "GET", f"owner/img{n}", f"/v2/owner/img{n}/manifests/1")
                for n in range(4)
            ),
            return_exceptions=True,
        )
    assert [getattr(a, "status_code", a) for a in answers] == [200] * 4
