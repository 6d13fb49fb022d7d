"""Review of 4087d5b (a ``401`` within ``CHECK_SILENCE_HOLD`` of a silent login check taken
unchecked for its repository's) and c74ff3c (a repository's ``401`` read before the Basic login
check: :func:`held_answer`) (tokens8): faults found, each shown here failing first (a strict
xfail), then fixed.

The token test uses test_review_tokens6's ``httpx.MockTransport`` fake and test_review_tokens4's
clock (``now``); the held-answer tests run a real httpx pool against a small HTTP/1.1 server of
their own on loopback (127.0.65.1, a port in 11400-11449)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from docxy.core.headers import response_headers
from docxy.upstream.client import MAX_HELD_BODY, Upstream, UpstreamClient
from docxy.upstream.tokens import CHECK_SILENCE_HOLD, MirrorTokens
from tests.unit.test_review_tokens4 import ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens6 import STEP, Silent
from tests.unit.test_review_tokens7 import LOGIN, all_connections_free

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
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(registry.handle), timeout=httpx.Timeout(STEP)
    ) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        now[0] += 1  # its acceptance older than the 401s to come
        registry.revoked = True
        registry.checks_silent = True
        assert await miss(tokens, "owner/b") == 401  # its check held, timed out
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


@dataclass
class Answering:
    """An HTTP/1.1 registry: ``GET /v2/`` answers ``200``; any other path gets ``answer``'s
    bytes (a whole response, maybe cut short), then the connection is held ``stall`` seconds
    (bounded) before it is closed. ``served`` counts the requests per kind."""

    answer: bytes
    stall: float = 0.0
    served: dict[str, int] = field(default_factory=lambda: {"v2": 0, "repo": 0})
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            for _ in range(100):  # requests on one connection, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b"\r\n", 1)[0].split()[1]
                if path == b"/v2/":
                    self.served["v2"] += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                self.served["repo"] += 1
                writer.write(self.answer)
                await writer.drain()
                if self.stall:
                    await asyncio.sleep(self.stall)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client, or the test's end
        finally:
            writer.close()


def unauthorized(body: bytes, *headers: bytes, length: int | None = None) -> bytes:
    """A Basic ``401`` with ``body`` (and a ``Content-Length`` of ``length``, if given)."""
    size = len(body) if length is None else length
    return (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        b'WWW-Authenticate: Basic realm="lab"\r\n'
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Length: "
        + str(size).encode()
        + b"\r\n\r\n"
        + body
    )


@asynccontextmanager
async def serving(registry: Answering) -> AsyncIterator[Upstream]:
    server = None
    for port in PORTS:
        try:
            server = await asyncio.start_server(registry.handle, HOST, port)
            break
        except OSError:
            continue
    assert server is not None, "no free port in 11400-11449 on 127.0.65.1"
    try:
        yield Upstream(f"http://{HOST}:{port}", credentials=("robot", "right"))
    finally:
        server.close()
        for writer in registry.writers:
            writer.close()
        await asyncio.wait(registry.tasks, timeout=3.0) if registry.tasks else None
        for task in registry.tasks:
            task.cancel()
        await server.wait_closed()


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
    registry = Answering(unauthorized(b"0123456789", length=100), stall=3.0)
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
    registry = Answering(
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
    registry = Answering(unauthorized(body, b"Content-Encoding: gzip"))
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
    registry = Answering(unauthorized(body, b"Content-Encoding: gzip"))
    async with serving(registry) as upstream:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as http:
            client, answer, raw = await pulled(http, upstream)
            assert (answer.status_code, raw) == (401, b"")
            headers = relayed(answer)
            assert headers["content-length"] == "0"
            assert "content-encoding" not in headers
            assert client.health_of(upstream).login == "accepted"
