"""Review of the Basic-only upstream's refused-login hold and the token path's redirect guard
(login3): faults found, each shown here failing first (a strict xfail), then fixed. Nothing
leaves the process: the upstreams are ``httpx.MockTransport`` fakes, and the upstream client's
clock is moved by the test (``client_now``)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import CHECK_SILENCE_HOLD, REFUSED_TTL, MirrorTokens, basic_authorization
from tests.unit.test_review_login2 import basic_miss
from tests.unit.test_review_login2 import client_now as client_now  # noqa: F401 (the fixture)
from tests.unit.test_review_tokens4 import now as now  # noqa: F401 (the fixture)

UPSTREAM = Upstream("https://registry.test", credentials=("robot", "right"))
CHALLENGE = {"WWW-Authenticate": 'Basic realm="r"'}


@pytest.fixture(autouse=True)
def no_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """No name is looked up: every host here is a fake's."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"a name lookup: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


class Registry:
    """A registry with Basic auth and no token service, accepting ``robot:<password>``, each
    answer a little late (concurrent requests overlap). ``failed`` counts the requests that
    carried another login (failed logins on the account); ``sent`` has each request's (path,
    whether it carried a login). A repository named ``forbidden`` is one the account may not
    read (``401`` to the right login); ``v2`` set answers ``GET /v2/`` with a login that
    (``"timeout"``: no answer in time)."""

    def __init__(self, password: str = "right") -> None:
        self.password = password
        self.failed = 0
        self.v2: int | str | None = None
        self.sent: list[tuple[str, bool]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        sent = request.headers.get("authorization")
        path = request.url.path
        self.sent.append((path, sent is not None))
        if sent is not None and path == "/v2/" and self.v2 == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if sent is not None and path == "/v2/" and isinstance(self.v2, int):
            return httpx.Response(self.v2)
        if sent is not None and sent == basic_authorization("robot", self.password):
            if "forbidden" in path:
                return httpx.Response(401, headers=CHALLENGE)
            return httpx.Response(200, json={})
        if sent is not None:
            self.failed += 1
        return httpx.Response(401, headers=CHALLENGE)

    def logins_since(self, start: int) -> list[str]:
        """The paths of the requests with a login since the ``start``-th."""
        return [path for path, login in self.sent[start:] if login]


async def refused(registry: Registry, client: UpstreamClient, tokens: MirrorTokens) -> None:
    """The login refused: one miss with the wrong password, and its /v2/ check."""
    assert await basic_miss(tokens, UPSTREAM, "o/a") == 401
    assert client.health_of(UPSTREAM).login == "refused"
    assert registry.failed == 2


# --- 1. past the hold, a repository's 401 held a mended password another minute ------------


async def test_a_mended_password_is_not_held_again_by_a_repositorys_401(
    client_now: list[float],
) -> None:
    """Once the minute was up, whichever request went first with the login was taken as the
    check, and its ``401`` held the login another minute without asking ``/v2/``: the
    password mended at the registry, the first miss a repository the account may not read,
    and the account's private repositories ``401`` for another minute (and again, as long as
    such a miss came first). Now ``GET /v2/`` with the login is the check: it accepts it, and
    the repository's ``401`` is that repository's."""
    registry = Registry(password="other")
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        await refused(registry, client, tokens)
        registry.password = "right"  # mended
        client_now[0] += REFUSED_TTL + 1
        start = len(registry.sent)
        assert await basic_miss(tokens, UPSTREAM, "o/forbidden") == 401
        assert await basic_miss(tokens, UPSTREAM, "o/private") == 200
        assert client.health_of(UPSTREAM).login == "accepted"
        assert registry.logins_since(start)[0] == "/v2/"  # the check went first
        assert await tokens.basic_login(UPSTREAM) is not None  # a pass-through has it too
    assert registry.failed == 2


# --- 2. past the hold, every request in flight sent the refused password --------------------


async def test_past_the_hold_one_check_goes_and_the_others_wait_for_it(
    client_now: list[float],
) -> None:
    """Past the minute, every concurrent miss sent the (still wrong) password: 5 misses, 5
    more failed logins on the account (the lockout the hold is for). Now one ``GET /v2/``
    with it goes, the others waiting for its verdict: its ``401`` holds the login another
    minute, and they all go without it."""
    registry = Registry(password="other")
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        await refused(registry, client, tokens)
        client_now[0] += REFUSED_TTL + 1
        start = len(registry.sent)
        answers = await asyncio.gather(*(basic_miss(tokens, UPSTREAM, f"o/i{n}") for n in range(5)))
        assert answers == [401] * 5
        assert registry.failed == 3  # the one check
        assert registry.logins_since(start) == ["/v2/"]
        assert client.health_of(UPSTREAM).login == "refused"
        assert await basic_miss(tokens, UPSTREAM, "o/b") == 401  # held another minute
    assert registry.failed == 3


async def test_past_the_hold_a_mended_password_goes_with_every_waiter(
    client_now: list[float],
) -> None:
    """The same five misses once the password is mended: one check, then all with the
    login (``200``), no failed login."""
    registry = Registry(password="other")
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        await refused(registry, client, tokens)
        registry.password = "right"
        client_now[0] += REFUSED_TTL + 1
        start = len(registry.sent)
        answers = await asyncio.gather(*(basic_miss(tokens, UPSTREAM, f"o/i{n}") for n in range(5)))
        assert answers == [200] * 5
        assert registry.logins_since(start).count("/v2/") == 1
        assert client.health_of(UPSTREAM).login == "accepted"
    assert registry.failed == 2


@pytest.mark.parametrize("v2", [503, 500, "timeout"])
async def test_past_the_hold_a_silent_check_sends_no_login(
    client_now: list[float], v2: int | str
) -> None:
    """The check answered ``5xx`` (or not in time) says nothing of the login: the misses go
    without it (no failed login), the login stays refused on ``/health``, and is held back
    another ``REFUSED_TTL`` (the registry may have counted the check a failed login: asked
    again every few seconds, a slow login backend would lock the account)."""
    registry = Registry(password="other")
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        await refused(registry, client, tokens)
        client_now[0] += REFUSED_TTL + 1
        registry.v2 = v2
        start = len(registry.sent)
        answers = await asyncio.gather(*(basic_miss(tokens, UPSTREAM, f"o/i{n}") for n in range(3)))
        assert answers == [401] * 3
        assert registry.failed == 2
        assert registry.logins_since(start) == ["/v2/"]
        assert client.health_of(UPSTREAM).login == "refused"
        start = len(registry.sent)
        assert await basic_miss(tokens, UPSTREAM, "o/b") == 401
        assert registry.logins_since(start) == []  # not asked again at once
        client_now[0] += CHECK_SILENCE_HOLD + 1
        start = len(registry.sent)
        assert await basic_miss(tokens, UPSTREAM, "o/b2") == 401
        assert registry.logins_since(start) == []  # nor seconds later: a hold's time
        registry.v2 = None
        registry.password = "right"  # mended meanwhile
        client_now[0] += REFUSED_TTL
        assert await basic_miss(tokens, UPSTREAM, "o/c") == 200
        assert client.health_of(UPSTREAM).login == "accepted"
    assert registry.failed == 2


# --- 3. the token path's guard: a 200 from a hop the login did not reach ---------------------


async def test_a_token_got_where_the_login_did_not_go_does_not_accept_it(
    now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """The realm redirects the token requests to another host: the login is not sent there
    (:func:`~docxy.upstream.client.next_hop`), and that host's ``200`` (an anonymous token)
    says nothing of the password, here a wrong one: taken for the login accepted, ``/health``
    would say ``login: "accepted"`` (and an INFO line "accepted ... again" after a refusal)."""
    seen: list[tuple[str, str | None, bool]] = []
    challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'

    def handle(request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        sent = request.headers.get("authorization")
        if host == "registry.test" and path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if host == "auth.test":
            location = "https://tokens.test" + request.url.raw_path.decode()
            return httpx.Response(307, headers={"Location": location})
        if host == "tokens.test":
            seen.append((host, request.url.params.get("scope"), sent is not None))
            return httpx.Response(200, json={"token": "anonymous", "expires_in": 300})
        if sent == "Bearer anonymous":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    upstream = Upstream("https://registry.test", credentials=("robot", "wrong"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(upstream, "GET", "o/a", "/v2/o/a/manifests/1")
        await answer.aclose()
        assert answer.status_code == 200
        assert ("tokens.test", "repository:o/a:pull", False) in seen  # the scoped hop, no login
        assert client.health_of(upstream).login != "accepted"
    assert "accepted the mirror's login" not in caplog.text
