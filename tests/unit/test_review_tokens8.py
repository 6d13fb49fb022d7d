"""Review of 4087d5b (a ``401`` within ``CHECK_SILENCE_HOLD`` of a silent login check taken
unchecked for its repository's) and c74ff3c (a repository's ``401`` read before the Basic login
check: :func:`held_answer`) (tokens8): faults found, each shown here failing first (a strict
xfail), then fixed.

The token test uses test_review_tokens6's ``httpx.MockTransport`` fake and test_review_tokens4's
clock (``now``); the held-answer tests run a real httpx pool against loopback_h1's small HTTP/1.1
registry on loopback (127.0.65.1, a port in 11400-11449)."""

from __future__ import annotations

import gzip
from contextlib import AbstractAsyncContextManager

import httpx

from docxy.core.headers import response_headers
from docxy.upstream.client import MAX_HELD_BODY, Upstream, UpstreamClient
from docxy.upstream.tokens import CHECK_SILENCE_HOLD
from tests.unit import loopback_h1
from tests.unit.loopback_h1 import H1Registry, all_connections_free, unauthorized
from tests.unit.test_review_tokens4 import ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens6 import Silent, revoked_and_check_silent, silent_login
from tests.unit.test_review_tokens7 import LOGIN

HOST = "127.0.65.1"
PORTS = range(11400, 11450)
DENIED = b'{"errors":[{"code":"UNAUTHORIZED","message":"no access"}]}'


# --- 1. a 401 left unchecked in the hold was remembered as the repository's for a minute -----


async def test_a_401_unchecked_in_the_hold_is_not_remembered_past_it(now: list[float]) -> None:
    """The login accepted, then its password revoked, and one miss's check of its scoped 401
    timed out (the token service silent to checks). The token service answers again; 1 s
    later another (public) repository misses: its 401 stands unchecked (the hold). That
    refusal was remembered for REFUSED_TTL: the same repository 6 s later, the hold over, got
    401 again without a token request, for a minute, where a check would have found the login
    refused and fetched its token anonymously (200). Only a checked 401 is remembered now."""
    registry = Silent()
    async with silent_login(registry) as tokens:
        await revoked_and_check_silent(registry, tokens, now)  # owner/b's 401
        assert registry.held == 1
        registry.checks_silent = False  # the token service answers again
        now[0] += 1
        assert await miss(tokens, "owner/c") == 401  # within the hold: not checked
        assert registry.checks == 1  # (the silent one only)
        # The pull services mark the 401 ``send`` answered: that stood a minute as well.
        tokens.mark_refused(ROBOT, "owner/c")
        assert not tokens.refused(ROBOT, "owner/c")
        now[0] += CHECK_SILENCE_HOLD + 1
        assert await miss(tokens, "owner/c") == 200  # checked: refused, anonymously
        assert tokens.login_refused(ROBOT)
        assert registry.scoped[-1] == ("repository:owner/c:pull", None)


# --- 2 and 3. a 401 whose body stalls or breaks off; a gzip body held and relayed -----------


def serving(registry: H1Registry) -> AbstractAsyncContextManager[Upstream]:
    """An HTTP/1.1 registry (loopback_h1's): ``GET /v2/`` answers ``200``; any other path
    gets the registry's ``answer``, then the connection is held ``stall`` seconds."""
    return loopback_h1.serving(registry, HOST, PORTS)


async def pulled(
    http: httpx.AsyncClient, upstream: Upstream, method: str = "GET"
) -> tuple[UpstreamClient, httpx.Response, bytes]:
    """A pull with the mirror's Basic login, its answer's raw bytes as a relay reads them."""
    client = UpstreamClient(http)
    url = upstream.url("/v2/owner/x/manifests/1")
    answer = await client.send(
        upstream, method, url, [("Authorization", LOGIN)], mirror_credentials=True
    )
    try:
        raw = b"".join([chunk async for chunk in answer.aiter_raw()])
    finally:
        await answer.aclose()
    return client, answer, raw


def relayed(answer: httpx.Response, method: str = "GET") -> dict[str, str]:
    headers = response_headers(answer.headers.multi_items(), head=method == "HEAD")
    return {k.lower(): v for k, v in headers}


async def test_a_401_whose_body_stalls_is_relayed_without_it() -> None:
    """A 401 whose body stops after 10 of its 100 bytes (the connection held open): reading it
    before the login check raised UpstreamTimeout out of ``send``, the client got 504 for a
    401, and the check never went. It goes back without its body now (``Content-Length:
    0``), and the check still goes."""
    registry = H1Registry(unauthorized(b"0123456789", length=100), stall=3.0)
    async with serving(registry) as upstream:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
            client, answer, raw = await pulled(http, upstream)
            assert (answer.status_code, raw) == (401, b"")
            assert relayed(answer)["content-length"] == "0"
            assert registry.served == {"v2": 1, "repo": 1}
            assert client.health_of(upstream).login == "accepted"


async def test_a_401_whose_body_breaks_off_is_relayed_without_it() -> None:
    """The same with the connection closed after 10 of its 100 bytes: UpstreamUnavailable out
    of ``send`` (502 to the client). Relayed without its body now, the check gone."""
    registry = H1Registry(
        unauthorized(b"0123456789", b"Content-Encoding: gzip", length=100), stall=0.01
    )
    async with serving(registry) as upstream:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
            client, answer, raw = await pulled(http, upstream)
            assert (answer.status_code, raw) == (401, b"")
            headers = relayed(answer)
            assert headers["content-length"] == "0"
            assert "content-encoding" not in headers
            assert registry.served == {"v2": 1, "repo": 1}
            assert client.health_of(upstream).login == "accepted"


async def test_a_gzip_401_is_relayed_as_it_came() -> None:
    """A gzip-encoded 401 body is held as its raw bytes: relayed with its Content-Encoding,
    and it decodes to the registry's body."""
    body = gzip.compress(DENIED)
    registry = H1Registry(unauthorized(body, b"Content-Encoding: gzip"))
    async with serving(registry) as upstream:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
            client, answer, raw = await pulled(http, upstream)
            assert (answer.status_code, raw) == (401, body)
            headers = relayed(answer)
            assert headers["content-encoding"] == "gzip"
            assert headers["content-length"] == str(len(body))
            assert gzip.decompress(raw) == DENIED
            assert client.health_of(upstream).login == "accepted"
            assert await all_connections_free(http, upstream, 2) == [200, 200]


async def test_a_gzip_401_too_large_to_hold_loses_its_encoding_with_its_body() -> None:
    """Over the bound, the 401 goes back with no body: no Content-Encoding either (an empty
    body announced as gzip does not decode)."""
    body = gzip.compress(b"x" * (2 * MAX_HELD_BODY), compresslevel=0)
    assert len(body) > MAX_HELD_BODY
    registry = H1Registry(unauthorized(body, b"Content-Encoding: gzip"))
    async with serving(registry) as upstream:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
            client, answer, raw = await pulled(http, upstream)
            assert (answer.status_code, raw) == (401, b"")
            headers = relayed(answer)
            assert headers["content-length"] == "0"
            assert "content-encoding" not in headers
            assert client.health_of(upstream).login == "accepted"
