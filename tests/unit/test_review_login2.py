"""Review of the mirror's own upstream login (login2): faults found, each shown here failing
first (a strict xfail), then fixed. Nothing leaves the process: the upstreams are
``httpx.MockTransport`` fakes, and a clock the tests move (``now``) stands for the time that
passes."""

from __future__ import annotations

import asyncio
import time
import types

import httpx
import pytest

from docxy.upstream import client as client_module
from docxy.upstream.client import Upstream, UpstreamClient, next_hop
from docxy.upstream.tokens import REFUSED_TTL, MirrorTokens, basic_authorization
from tests.unit.test_review_tokens4 import LOGIN, REFUSED, ROBOT, Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)

# --- 1. a realm's redirect to https on its own host drops the login -------------------------


@pytest.mark.parametrize(
    ("url", "location", "kept"),
    [
        ("http://auth.test/token", "https://auth.test/token?a=1", True),
        ("http://auth.test:80/token", "https://auth.test:443/token", True),
        ("http://auth.test:5000/token", "https://auth.test:5000/token", True),
        ("http://auth.test/token", "https://auth.test:8443/token", False),
        ("http://auth.test:8080/token", "https://auth.test/token", False),
        ("https://auth.test/token", "http://auth.test/token", False),
        ("http://auth.test/token", "https://other.test/token", False),
        ("http://auth.test/token", "https://sub.auth.test/token", False),
        ("https://auth.test/token", "https://auth.test/v2/token", True),
    ],
)
def test_a_redirect_keeps_the_login_only_on_its_origin_or_its_upgrade_to_https(
    url: str, location: str, kept: bool
) -> None:
    """Docker's client keeps ``Authorization`` on a redirect to the same host: the mirror
    dropped it on ``http://auth.test`` -> ``https://auth.test`` too (another scheme, so
    another origin), and a token service that upgrades its plain-HTTP realm never saw the
    login. Kept now on an upgrade to HTTPS on the same host (default ports, or the same
    one), never on a downgrade, another port or another host."""
    _, headers = next_hop(url, location, [("Authorization", LOGIN), ("Accept", "x")])
    assert (("Authorization", LOGIN) in headers) is kept
    assert ("Accept", "x") in headers


class Redirecting:
    """A private registry (no anonymous tokens) whose plain-HTTP realm redirects to HTTPS,
    at ``to`` (its own host by default); ``log`` has each token request's (scheme, scope,
    whether it carried a login)."""

    def __init__(self, to: str = "https://auth.test") -> None:
        self.to = to
        self.log: list[tuple[str, str | None, bool]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        challenge = 'Bearer realm="http://auth.test/token",service="registry.test"'
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.url.path == "/token":
            sent = request.headers.get("authorization")
            scope = request.url.params.get("scope")
            self.log.append((request.url.scheme, scope, sent is not None))
            if request.url.scheme == "http":
                location = self.to + request.url.raw_path.decode()
                return httpx.Response(301, headers={"Location": location})
            if sent != LOGIN:
                return httpx.Response(401, json={"details": "incorrect username or password"})
            return httpx.Response(200, json={"token": "robot", "expires_in": 300})
        if request.headers.get("authorization") == "Bearer robot":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})


async def test_a_realm_upgraded_to_https_gets_the_login(
    now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A plain-HTTP registry whose realm ``http://auth.test/token`` answers ``301`` to its
    ``https://`` self: the login went to the first hop only, the second's ``401`` (no login)
    was taken for the password refused: a WARNING, ``login: refused``, and the private pull
    answered ``401`` with the right password."""
    registry = Redirecting()
    upstream = Upstream("http://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "o/a", "/v2/o/a/manifests/1")
        await answer.aclose()
        assert answer.status_code == 200
        assert not tokens.login_refused(upstream)
        assert client.health_of(upstream).login == "accepted"
    assert ("https", "repository:o/a:pull", True) in registry.log
    assert REFUSED not in caplog.text


async def test_a_check_whose_last_hop_lost_the_login_is_no_verdict(
    now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """The realm redirects to another host: the login is not sent there (rightly), and that
    host's ``401`` to the login-less request is no word on the password: it was taken for
    one (``password is wrong or revoked``, ``login: refused``, the login withheld a minute)."""
    registry = Redirecting(to="https://tokens.test")
    upstream = Upstream("http://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "o/a", "/v2/o/a/manifests/1")
        await answer.aclose()
        assert answer.status_code == 401  # no anonymous token there: refused, as it is
        assert not tokens.login_refused(upstream)
        assert client.health_of(upstream).login != "refused"
    assert ("https", None, False) in registry.log  # the check's last hop: no login
    assert REFUSED not in caplog.text


# --- 2. a Basic-only upstream is sent a refused password on every request -------------------


@pytest.fixture
def client_now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The upstream client module's monotonic clock, moved by the test."""
    clock = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(client_module, "time", fake)
    return clock


class BasicOnly:
    """A registry with Basic auth and no token service, accepting ``robot:<password>``;
    ``failed`` counts the requests that carried another login (failed logins on the
    account), ``sent`` has each request's (path, whether it carried a login)."""

    def __init__(self, password: str = "right") -> None:
        self.password = password
        self.failed = 0
        self.sent: list[tuple[str, bool]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        self.sent.append((request.url.path, sent is not None))
        if sent is not None and sent == basic_authorization("robot", self.password):
            return httpx.Response(200, json={})
        if sent is not None:
            self.failed += 1
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})


async def basic_miss(tokens: MirrorTokens, upstream: Upstream, repository: str) -> int:
    answer = await tokens.send(upstream, "GET", repository, f"/v2/{repository}/manifests/1")
    await answer.aclose()
    return answer.status_code


async def test_a_refused_basic_login_is_not_sent_again_for_a_while(
    client_now: list[float],
) -> None:
    """A wrong ``upstream.password`` for a Basic-only upstream went with every request of the
    mirror's, for ever: 6 misses, 7 failed logins on the account (Nexus and Artifactory lock
    one). A token service's refusal is held ``REFUSED_TTL``; now a Basic one confirmed by
    ``/v2/`` is too: no login goes for that minute, and past it ``GET /v2/`` with it is the
    next check (its ``401`` holds it again, its ``2xx`` accepts it; test_review_login3)."""
    registry = BasicOnly(password="other")
    upstream = Upstream("https://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        for n in range(6):
            assert await basic_miss(tokens, upstream, f"o/i{n}") == 401
        assert registry.failed == 2  # the first miss and its /v2/ check
        assert client.health_of(upstream).login == "refused"
        assert await tokens.basic_login(upstream) is None  # nor passed through for a client
        client_now[0] += REFUSED_TTL + 1
        assert await basic_miss(tokens, upstream, "o/a") == 401  # the check: refused still
        assert await basic_miss(tokens, upstream, "o/b") == 401
        assert registry.failed == 3
        client_now[0] += REFUSED_TTL + 1
        registry.password = "right"  # mended
        assert await basic_miss(tokens, upstream, "o/c") == 200
        assert client.health_of(upstream).login == "accepted"
        assert await basic_miss(tokens, upstream, "o/d") == 200
    assert registry.failed == 3


# --- 3. a pass-through loses the mirror's Basic login while /v2/ answers 5xx ----------------


async def test_a_basic_login_stands_while_v2_is_in_trouble(client_now: list[float]) -> None:
    """A Basic-only upstream probed before, its ``/v2/`` answering ``503`` when the challenge
    is asked again (past ``REALM_TTL``): the mirror's own requests went on with the challenge
    last seen (``_challenge``), but ``basic_login`` answered None, and a pull passed through
    for a client went without the login (``401`` for a private repository). It stands now as
    for the mirror's own; an upstream never probed still has none to give."""
    state = {"v2": 401}

    def handle(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization")
        if request.url.path == "/v2/" and sent is None and state["v2"] == 503:
            return httpx.Response(503)
        if sent == LOGIN:
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    upstream = Upstream("https://registry.test", credentials=("robot", "right"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        state["v2"] = 503
        assert await tokens.basic_login(upstream) is None  # never probed: not known
        state["v2"] = 401
        assert await tokens.basic_login(upstream) == LOGIN
        client_now[0] += client_module.REALM_TTL + 1
        state["v2"] = 503
        assert await tokens.basic_login(upstream) == LOGIN
        assert await basic_miss(tokens, upstream, "o/a") == 200  # the mirror's own, as before


# --- 4. README: what a password revoked in a quiet spell costs the account ------------------


class CountingRevocable(Revocable):
    """:class:`Revocable`, each answer a little late (so concurrent misses overlap), counting
    the requests whose login it refused (failed logins on the account)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        if request.url.host == "auth.test" and self.revoked and "authorization" in request.headers:
            self.failed += 1
        return self(request)


@pytest.mark.parametrize(("quiet", "failed"), [(30.0, 6), (REFUSED_TTL + 60, 2)])
async def test_a_revoked_password_costs_two_failed_logins_only_past_a_minute(
    now: list[float], quiet: float, failed: int
) -> None:
    """The README said a password revoked in a quiet spell costs the account two failed
    logins, not one per concurrent miss: so it does once the acceptance is more than a minute
    old (one token request with the login at a time, :meth:`MirrorTokens._login_turn`); within
    that minute the misses do not wait, each sends the login, and the check is one more. The
    README says both now."""
    registry = CountingRevocable()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry.handle)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        now[0] += quiet
        registry.revoked = True
        answers = await asyncio.gather(*(miss(tokens, f"owner/i{n}") for n in range(5)))
        assert answers == [200] * 5  # public: anonymous tokens read them
        assert tokens.login_refused(ROBOT)
    assert registry.failed == failed
