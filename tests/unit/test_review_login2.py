"""Review of the mirror's own upstream login (login2): faults found, each shown here failing
first (a strict xfail), then fixed. Nothing leaves the process: the upstreams are
``httpx.MockTransport`` fakes, and a clock the tests move (``now``) stands for the time that
passes."""

from __future__ import annotations

import httpx
import pytest

from docxy.upstream.client import Upstream, UpstreamClient, next_hop
from docxy.upstream.tokens import MirrorTokens
from tests.unit.test_review_tokens4 import LOGIN, REFUSED
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
