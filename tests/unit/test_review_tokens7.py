"""Review of 1dc91c3 (a repository's ``401`` to the mirror's Basic login checked at ``GET /v2/``)
and cc1eca3 (misses waiting for a silent token request time out with it) (tokens7): faults
found, each shown here failing first (a strict xfail), then fixed.

The pool tests run a real httpx connection pool against loopback_h1's small HTTP/1.1 registry on
loopback (127.0.63.1, a port in 11300-11349); the token tests use test_review_tokens6's
``httpx.MockTransport`` fakes and test_review_tokens4's clock (``now``)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from docxy.tasks import spawn
from docxy.upstream.client import MAX_HELD_BODY, Upstream, UpstreamClient
from docxy.upstream.tokens import CHECK_SILENCE_HOLD, basic_authorization
from tests.unit import loopback_h1
from tests.unit.loopback_h1 import H1Registry, all_connections_free, pool, raw_answer, unauthorized
from tests.unit.test_review_tokens4 import ROBOT, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens6 import DEADLINE, Silent, revoked_and_check_silent, silent_login

HOST = "127.0.63.1"
PORTS = range(11300, 11350)
LOGIN = basic_authorization("robot", "right")
DENIED = b'{"errors":[{"code":"UNAUTHORIZED","message":"no access"}]}'


# --- 1 and 2. the 401's connection held through the Basic login check ----------------------


def basic_only(v2_delay: float, denied: bytes = DENIED) -> H1Registry:
    """A Basic-only registry over HTTP/1.1 (keep-alive): every repository answers ``401``
    with a small JSON body (``denied``); ``GET /v2/`` answers ``200`` after ``v2_delay``
    seconds."""
    v2 = raw_answer(
        b"200 OK", b"{}", b"Content-Type: application/json", b'WWW-Authenticate: Basic realm="lab"'
    )
    return H1Registry(unauthorized(denied), v2_answer=v2, v2_delay=v2_delay)


def serving(registry: H1Registry) -> AbstractAsyncContextManager[Upstream]:
    return loopback_h1.serving(registry, HOST, PORTS)


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
    registry = basic_only(v2_delay=0.5)
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
    registry = basic_only(v2_delay=0.2)
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
    registry = basic_only(v2_delay=0.05)
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
    registry = basic_only(v2_delay=0.05, denied=b"x" * (MAX_HELD_BODY + 1))
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
    async with silent_login(registry) as tokens:
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
    async with silent_login(registry) as tokens:
        await revoked_and_check_silent(registry, tokens, now)  # owner/b's 401
        assert await miss(tokens, "owner/c") == 401  # not checked: no second wait
        assert registry.held == 1
        now[0] += CHECK_SILENCE_HOLD + 1
        registry.checks_silent = False
        assert await miss(tokens, "owner/d") == 200  # checked: refused, anonymously
        assert tokens.login_refused(ROBOT)
