"""Review of 1dc91c3 (a repository's ``401`` to the mirror's Basic login checked at ``GET /v2/``)
and cc1eca3 (misses waiting for a silent token request time out with it) (tokens7): faults
found, each shown here failing first (a strict xfail), then fixed.

The pool tests run a real httpx connection pool against a small HTTP/1.1 server of their own on
loopback (127.0.63.1, a port in 11300-11349); the token tests use test_review_tokens6's
``httpx.MockTransport`` fakes and test_review_tokens4's clock (``now``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from docxy.tasks import spawn
from docxy.upstream.client import MAX_HELD_BODY, Upstream, UpstreamClient
from docxy.upstream.tokens import CHECK_SILENCE_HOLD, MirrorTokens, basic_authorization
from tests.unit.test_review_tokens4 import ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens6 import DEADLINE, STEP, Silent

HOST = "127.0.63.1"
PORTS = range(11300, 11350)
LOGIN = basic_authorization("robot", "right")
DENIED = b'{"errors":[{"code":"UNAUTHORIZED","message":"no access"}]}'


# --- 1 and 2. the 401's connection held through the Basic login check ----------------------


@dataclass
class BasicOnly:
    """A Basic-only registry over HTTP/1.1 (keep-alive): every repository answers ``401``
    with a small JSON body; ``GET /v2/`` answers ``200`` after ``v2_delay`` seconds. ``served``
    counts the requests per kind."""

    v2_delay: float = 0.5
    denied: bytes = DENIED
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
                    await asyncio.sleep(self.v2_delay)
                    status, body = b"200 OK", b"{}"
                else:
                    self.served["repo"] += 1
                    status, body = b"401 Unauthorized", self.denied
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b'WWW-Authenticate: Basic realm="lab"\r\n'
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client, or the test's end (a task cancelled: no error logged for it)
        finally:
            writer.close()


@asynccontextmanager
async def serving(registry: BasicOnly) -> AsyncIterator[Upstream]:
    server = None
    for port in PORTS:
        try:
            server = await asyncio.start_server(registry.handle, HOST, port)
            break
        except OSError:
            continue
    assert server is not None, "no free port in 11300-11349 on 127.0.63.1"
    try:
        yield Upstream(f"http://{HOST}:{port}", credentials=("robot", "right"))
    finally:
        server.close()
        for writer in registry.writers:
            writer.close()  # a connection a leaked answer held: its handler reads its end
        await asyncio.wait(registry.tasks, timeout=3.0)
        for task in registry.tasks:
            task.cancel()
        await server.wait_closed()


def pool(size: int, pool_timeout: float) -> httpx.AsyncClient:
    timeout = httpx.Timeout(3.0, pool=pool_timeout)
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=size), timeout=timeout)


async def all_connections_free(
    http: httpx.AsyncClient, upstream: Upstream, size: int
) -> list[int | str]:
    """``size`` streamed requests held open together: each gets a connection of the pool if
    none is held by an answer nobody closes (a pool timeout of 0.5 s for the one that does
    not)."""
    url = upstream.url("/v2/")

    async def hold() -> int | str:
        request = http.build_request("GET", url, timeout=httpx.Timeout(3.0, pool=0.5))
        try:
            answer = await http.send(request, stream=True)
        except httpx.PoolTimeout:
            return "PoolTimeout"
        try:
            await asyncio.sleep(0.8)  # while the others ask for theirs
            return answer.status_code
        finally:
            await answer.aclose()

    return list(await asyncio.gather(*(hold() for _ in range(size))))


async def until(condition: object, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not in time")


@pytest.mark.parametrize("ending", ["cancelled", "error"])
async def test_a_401_whose_client_goes_during_the_login_check_leaves_its_connection(
    ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull's 401 to the Basic login, and its client gone (the request cancelled) while the
    ``GET /v2/`` check was in flight: the 401's answer was held open through the check and
    closed by no one, its connection lost to the pool for good (a pool of 2: the next two
    streams got one 200 and one pool timeout). The same for an error out of the check other
    than an UpstreamError. The 401's connection is free before the check now."""
    registry = BasicOnly(v2_delay=0.5)
    async with serving(registry) as upstream, pool(2, 2.0) as http:
        client = UpstreamClient(http)
        if ending == "error":
            real = client._check_basic_login

            async def broken(upstream: Upstream, login: str) -> None:
                await real(upstream, login)
                raise RuntimeError("a fault of the check's own")

            monkeypatch.setattr(client, "_check_basic_login", broken)
        url = upstream.url("/v2/owner/x/manifests/1")
        login = [("Authorization", LOGIN)]
        sending = spawn("a pull", client.send(upstream, "GET", url, login, mirror_credentials=True))
        await until(lambda: registry.served["v2"] == 1)  # the 401 in, its check asked
        if ending == "cancelled":
            sending.cancel()
        with pytest.raises(asyncio.CancelledError if ending == "cancelled" else RuntimeError):
            await sending
        await until(lambda: not client._basic_checks.running(upstream.host))
        assert await all_connections_free(http, upstream, 2) == [200, 200]


async def test_concurrent_401s_on_a_full_pool_get_their_verdict_promptly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4 pulls of private repositories at once on a pool of 4 connections: each 401 held its
    connection while its check waited for a fifth, so every 401 waited the pool timeout (10 s
    by default) and got no verdict, with a WARNING that all the mirror's connections were in
    use. The 401s free theirs first now: one check, answered, and the 401s go back with their
    bodies."""
    caplog.set_level(logging.INFO)
    registry = BasicOnly(v2_delay=0.2)
    async with serving(registry) as upstream, pool(4, 2.0) as http:
        client = UpstreamClient(http)

        async def private(n: int) -> tuple[int, bytes, float]:
            start = time.perf_counter()
            url = upstream.url(f"/v2/team/p{n}/manifests/1")
            answer = await client.send(
                upstream, "GET", url, [("Authorization", LOGIN)], mirror_credentials=True
            )
            try:
                body = await answer.aread()
            finally:
                await answer.aclose()
            return answer.status_code, body, time.perf_counter() - start

        results = await asyncio.gather(*(private(n) for n in range(4)))
        health = client.health_of(upstream)
    assert [(status, body) for status, body, _ in results] == [(401, DENIED)] * 4
    assert max(took for _, _, took in results) < 1.0, results  # not the pool timeout (2 s)
    assert registry.served == {"v2": 1, "repo": 4}
    assert health.login == "accepted"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_401_relayed_after_the_check_keeps_its_body_for_the_relay() -> None:
    """The 401 read before its check is still a stream to the relay (``aiter_raw``), its
    headers as they came."""
    registry = BasicOnly(v2_delay=0.05)
    async with serving(registry) as upstream, pool(2, 2.0) as http:
        client = UpstreamClient(http)
        url = upstream.url("/v2/owner/x/manifests/1")
        answer = await client.send(
            upstream, "GET", url, [("Authorization", LOGIN)], mirror_credentials=True
        )
        try:
            raw = b"".join([chunk async for chunk in answer.aiter_raw()])
        finally:
            await answer.aclose()
        assert (answer.status_code, raw) == (401, DENIED)
        assert answer.headers["content-length"] == str(len(DENIED))
        assert answer.headers["www-authenticate"] == 'Basic realm="lab"'
        assert await all_connections_free(http, upstream, 2) == [200, 200]


async def test_a_401_too_large_to_hold_goes_back_without_its_body() -> None:
    """A 401 whose body is over the bound read before the check: closed (its connection
    back to the pool), relayed with no body and ``Content-Length: 0``; the check still goes."""
    registry = BasicOnly(v2_delay=0.05, denied=b"x" * (MAX_HELD_BODY + 1))
    async with serving(registry) as upstream, pool(2, 2.0) as http:
        client = UpstreamClient(http)
        url = upstream.url("/v2/owner/x/manifests/1")
        answer = await client.send(
            upstream, "GET", url, [("Authorization", LOGIN)], mirror_credentials=True
        )
        try:
            raw = b"".join([chunk async for chunk in answer.aiter_raw()])
        finally:
            await answer.aclose()
        assert (answer.status_code, raw, answer.headers["content-length"]) == (401, b"", "0")
        assert registry.served == {"v2": 1, "repo": 1}
        assert client.health_of(upstream).login == "accepted"
        assert await all_connections_free(http, upstream, 2) == [200, 200]


# --- 3. misses for readable repositories failed with the leader's check's timeout ------------


class Acl(Silent):
    """:class:`Silent` whose token service refuses the login's scoped requests for
    ``team/private`` (the account may not read it): a ``401``, the login good."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        scope = request.url.params.get("scope") or ""
        if request.url.host == "auth.test" and "team/private" in scope:
            self.scoped.append((scope, request.headers.get("authorization")))
            return httpx.Response(401, json={"details": "no access"})
        return super().__call__(request)


async def test_misses_of_readable_repositories_do_not_share_a_private_ones_check_timeout(
    now: list[float],
) -> None:
    """The login accepted, 150 s of quiet; a miss of team/private goes first with it (a scoped
    401: the account may not read it), and its scope-less check of the login is never
    answered. 4 misses of readable repositories waited for it, then failed with its check's
    timeout (504), where they had sent their own requests and got their 200s before cc1eca3.
    Only the token service's silence to the scoped request itself ends them so now."""
    registry = Acl()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(registry.handle), timeout=httpx.Timeout(STEP)
    ) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await miss(tokens, "owner/a") == 200
        now[0] += 150
        registry.checks_silent = True
        start = time.perf_counter()
        lead = spawn("team/private", miss(tokens, "team/private"))
        await until(lambda: registry.held == 1)  # its 401 in, its check held
        readable = [spawn(f"owner/r{n}", miss(tokens, f"owner/r{n}")) for n in range(4)]
        results = await asyncio.gather(*readable, return_exceptions=True)
        took = time.perf_counter() - start
        led = await asyncio.gather(lead, return_exceptions=True)
    assert results == [200] * 4, results
    assert not isinstance(led[0], BaseException), led
    assert registry.held == 1
    assert took < 1.5 * DEADLINE, took


async def test_a_silent_login_check_is_remembered_a_few_seconds_only(now: list[float]) -> None:
    """A check of a scoped 401 that timed out spares the next 401s a check of their own
    (each would wait the timeout again), for ``CHECK_SILENCE_HOLD`` only: after it, a 401 is
    checked again, and a revoked password is found (the miss then goes anonymously)."""
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
        assert await miss(tokens, "owner/c") == 401  # not checked: no second wait
        assert registry.held == 1
        now[0] += CHECK_SILENCE_HOLD + 1
        registry.checks_silent = False
        assert await miss(tokens, "owner/d") == 200  # checked: refused, anonymously
        assert tokens.login_refused(ROBOT)
