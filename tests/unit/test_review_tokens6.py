"""Review of 165be19 (one token request with a stale-trusted login at a time) and 88eb9d8 (a
Basic-only upstream's login judged on ``/health``) (tokens6): faults found, each shown here
failing first (a strict xfail), then fixed. Nothing leaves the process: the upstreams are
``httpx.MockTransport`` fakes, and a clock the tests move (``now``, test_review_tokens4's)
stands for the time that passes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import UpstreamTimeout
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens, basic_authorization
from tests.unit import fakes
from tests.unit.logins import logged_in
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import BasicRegistry as ManifestBasicRegistry
from tests.unit.test_pull_scoped_blobs import DOCKER_MANIFEST
from tests.unit.test_review_tokens4 import Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens5 import BasicRegistry

#: Each wait of the fake upstreams' client: a request's whole wait for its answer's headers is
#: four of them (``headers_deadline``: pool, connect, write, read), 0.8 s.
STEP = 0.2
DEADLINE = 4 * STEP


class Silent(Revocable):
    """:class:`Revocable` whose token service, once :attr:`silent` is set, takes requests and
    never answers them (an event never set): the scoped ones (``scoped_silent``) or the
    scope-less login checks (``checks_silent``). ``held`` counts the requests it held."""

    def __init__(self) -> None:
        super().__init__()
        self.scoped_silent = False
        self.checks_silent = False
        self.held = 0
        self.never = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            scoped = "scope" in request.url.params
            if (self.scoped_silent and scoped) or (self.checks_silent and not scoped):
                self.held += 1
                await self.never.wait()
        await asyncio.sleep(0.01)  # as over a network: concurrent misses all start first
        return self(request)


def silent_login(registry: Silent) -> AbstractAsyncContextManager[MirrorTokens]:
    """``registry``'s mirror tokens (each client wait ``STEP``), its login accepted
    (:func:`~tests.unit.logins.logged_in`)."""
    return logged_in(httpx.MockTransport(registry.handle), STEP)


async def revoked_and_check_silent(
    registry: Silent, tokens: MirrorTokens, now: list[float]
) -> None:
    """1 s after the login's acceptance, its password revoked and the token service silent to
    login checks: a miss of ``owner/b`` is answered ``401`` (its scoped request refused), its
    check held until it timed out."""
    now[0] += 1  # its acceptance older than the 401s to come
    registry.revoked = True
    registry.checks_silent = True
    assert await miss(tokens, "owner/b") == 401


async def timed_misses(tokens: MirrorTokens, count: int) -> tuple[float, list[int | BaseException]]:
    start = time.perf_counter()
    misses = (miss(tokens, f"owner/img{n}") for n in range(count))
    results = await asyncio.gather(*misses, return_exceptions=True)
    return time.perf_counter() - start, results


# --- 1. a silent token service waited out twice by the misses that waited for the first ----


async def test_misses_waiting_for_a_silent_token_request_wait_one_timeout(
    now: list[float],
) -> None:
    """The login accepted, 150 s of quiet, then the token service takes requests and answers
    none: 5 concurrent misses. The one that went first waited its whole timeout; the 4 that
    waited for it then sent their own request each and waited the timeout again (2.4 s with
    the client's 0.3 s steps; 2 min with the default 60 s read timeout). They now share its
    timeout: one request, one wait."""
    registry = Silent()
    async with silent_login(registry) as tokens:
        now[0] += 150
        registry.scoped_silent = True
        took, results = await timed_misses(tokens, 5)
    assert all(isinstance(r, UpstreamTimeout) for r in results), results
    assert registry.held == 1
    assert took < 1.5 * DEADLINE, took


async def test_misses_waiting_for_a_silent_login_check_wait_one_timeout(
    now: list[float],
) -> None:
    """The same with the password revoked: the first miss's scoped request is answered 401,
    and its scope-less check (is it the login, or this repository?) is never answered. The
    misses that waited sent their own login (401 each) and waited for a check of their own,
    the timeout again. They still send their own (that check's timeout is no answer to their
    repositories: test_review_tokens7), but their 401s are not checked again while its
    silence is fresh: one timeout, each miss answered 401."""
    registry = Silent()
    async with silent_login(registry) as tokens:
        now[0] += 150
        registry.revoked = True
        registry.checks_silent = True
        scoped = len(registry.scoped)
        took, results = await timed_misses(tokens, 5)
    assert registry.held == 1
    # Each sends its own (the check's timeout says nothing of the login: tokens7), and its
    # 401 is not checked again while the first's check's silence is fresh: each 401 stands.
    assert len(registry.scoped) - scoped == 5
    assert results == [401] * 5, results
    assert took < 1.5 * DEADLINE, took


# --- 2. a repository's 401 to a good Basic login taken for the login refused ----------------


class AclRegistry(ManifestBasicRegistry):
    """A Basic-only registry whose account ``bot`` reads every repository but ``team/private``
    (an access list: ``401`` to it, as registries answer a repository the login may not read,
    or one that does not exist)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/team/private/"):
            self.requests.append(request)
            return fakes.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="lab"'}, length=True)
        return super().__call__(request)


async def test_a_repositorys_401_to_a_good_basic_login_does_not_flip_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pulls of owner/a, team/private, owner/b, team/private through the mirror (cache off:
    passed through with its Basic login): each 401 of team/private made ``/health`` say the
    login was refused, with a WARNING that its password is wrong, and the next owner/ pull
    said accepted again. A ``GET /v2/`` with the login now tells: it is accepted there, the
    401 is that repository's."""
    caplog.set_level(logging.INFO)
    registry = AclRegistry()
    content = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    registry.tag("1", content)
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    seen = []
    async with mirror(tmp_path, registry, cache__enabled="false", **settings) as app:
        client = app.test_client()
        for name in ("owner/a", "team/private", "owner/b", "team/private"):
            response = await client.get(f"/v2/{name}/manifests/1")
            report = json.loads(await (await client.get("/health")).get_data(as_text=True))
            seen.append((name, response.status_code, report["upstream"]["login"]))
    assert seen == [
        ("owner/a", 200, "accepted"),
        ("team/private", 401, "accepted"),
        ("owner/b", 200, "accepted"),
        ("team/private", 401, "accepted"),
    ]
    assert report["status"] == "ok"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_basic_401_confirmed_at_v2_still_shows_the_login_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password still shows, once: its repository's 401, and the ``GET /v2/`` with it
    that says 401 too; refused, one WARNING, and the next repository's 401 checked no more
    (no request more with the bad login than before)."""
    registry = BasicRegistry()
    registry.password = "rotated"
    upstream = Upstream("https://registry.test", credentials=("robot", "right"))
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return registry(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        for name in ("owner/a", "owner/b"):
            answer = await tokens.send(upstream, "GET", name, f"/v2/{name}/manifests/1")
            await answer.aclose()
            assert answer.status_code == 401
    assert client.health_of(upstream).login == "refused"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "wrong or revoked" in warnings[0], warnings
    # the probe, owner/a, its check with the login, owner/b
    assert asked == ["/v2/", "/v2/owner/a/manifests/1", "/v2/", "/v2/owner/b/manifests/1"]


async def test_concurrent_401s_share_one_check_of_the_basic_login() -> None:
    """Concurrent misses of private repositories, each a 401: one ``GET /v2/`` with the login
    says whose it is, not one each."""
    checks = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        if request.url.path == "/v2/" and sent is not None:
            checks[0] += 1
        await asyncio.sleep(0.02)
        good = sent == basic_authorization("robot", "right")
        if good and (request.url.path == "/v2/" or "/owner/" in request.url.path):
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    upstream = Upstream("https://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "owner/a", "/v2/owner/a/manifests/1")
        await answer.aclose()

        async def private(n: int) -> int:
            name = f"team/p{n}"
            answer = await tokens.send(upstream, "GET", name, f"/v2/{name}/manifests/1")
            await answer.aclose()
            return answer.status_code

        assert await asyncio.gather(*(private(n) for n in range(5))) == [401] * 5
    assert checks[0] == 1
    assert client.health_of(upstream).login == "accepted"


# --- 3. a redirect taken for the Basic login accepted ----------------------------------------


async def test_a_redirect_to_the_basic_login_is_no_acceptance() -> None:
    """A registry that redirects on its own origin, then answers the next hop 401 (the
    password wrong): the first hop's 307 counted as accepted, and ``/health`` said so while
    every pull failed. A redirect says nothing of the login now; the 401 it led to does."""

    def handler(request: httpx.Request) -> httpx.Response:
        good = request.headers.get("authorization") == basic_authorization("robot", "right")
        if request.url.path.startswith("/v2/") and request.url.path != "/v2/":
            return httpx.Response(307, headers={"Location": "/real" + request.url.path})
        if good:
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    upstream = Upstream("https://registry.test", credentials=("robot", "wrong"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "owner/a", "/v2/owner/a/manifests/1")
        await answer.aclose()
    assert answer.status_code == 401
    assert client.health_of(upstream).login == "refused"


async def test_a_redirect_that_drops_the_basic_login_is_no_acceptance() -> None:
    """``http://`` redirecting to ``https://`` on another host (another origin: the login is
    not carried): the ``301`` counted as accepted. It says nothing of the login now. (On its
    own host, the upgrade carries the login: test_review_login2.)"""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            target = str(request.url.copy_with(scheme="https", host="other.test"))
            return httpx.Response(301, headers={"Location": target})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    upstream = Upstream("http://registry.test", credentials=("robot", "wrong"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "owner/a", "/v2/owner/a/manifests/1")
        await answer.aclose()
    assert answer.status_code == 401
    assert client.health_of(upstream).login is None
