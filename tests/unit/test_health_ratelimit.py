"""The mirror's own rate limit on ``/health`` ends by itself.

A 429 to the mirror's own request makes ``/health`` "degraded"; only a later manifest or blob
answer ended that, so a mirror nobody pulled through stayed degraded for hours after the limit
was over (monitoring paging someone for nothing). The limit now stands until the 429's
``Retry-After`` (a bounded hold without one), then ``/health`` says ok again, with when the
last 429 was; nothing is asked of the upstream to find out. A clock the test moves stands for
the time that passes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from docxy.core.headers import retry_after_seconds
from docxy.http.state import mirror_state
from docxy.upstream.client import RATE_LIMIT_HOLD, RATE_LIMIT_MAX, UpstreamHealth
from tests.unit.fakes import reply
from tests.unit.test_routes import REGISTRY, hub, mirror

START = 1_790_000_000.0  # 2026-09-21T14:13:20Z


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def iso(stamp: float) -> str:
    return UpstreamHealth(last_ok=stamp).as_dict()["last_ok"]  # type: ignore[return-value]


def too_many(retry_after: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]})
    return reply(429, body.encode(), headers)


async def test_an_idle_mirror_is_ok_again_once_the_retry_after_is_over() -> None:
    clock = Clock()
    limited = True

    def upstream(request: httpx.Request) -> httpx.Response:
        if limited and "/manifests/" in request.url.path:
            return too_many("120")
        return hub(request)

    async with mirror(upstream) as m:
        client = mirror_state(m.app).client
        client.health[httpx.URL(REGISTRY).netloc.decode()] = UpstreamHealth(clock=clock)

        async def health() -> dict[str, Any]:
            report: dict[str, Any] = await (await m.client.get("/health")).get_json()
            return report

        assert (await m.client.get("/v2/redis/manifests/latest")).status_code == 429
        asked = len(m.upstream.requests)
        during = await health()
        clock.now += 119
        later = await health()
        clock.now += 1
        after = await health()
        assert len(m.upstream.requests) == asked  # nothing was asked to find out
    assert during["status"] == later["status"] == "degraded"
    assert during["upstream"]["rate_limited_until"] == iso(START + 120)
    assert during["upstream"]["last_rate_limited"] == iso(START)
    assert after["status"] == "ok", after
    assert after["upstream"]["rate_limited_until"] is None
    assert after["upstream"]["last_rate_limited"] == iso(START)  # when the last 429 was
    assert after["upstream"]["last_error_message"] == "the upstream answered 429"


@pytest.mark.parametrize(
    ("retry_after", "hold"),
    [
        ("30", 30.0),
        (None, RATE_LIMIT_HOLD),  # none given: a bounded hold
        ("in a while", RATE_LIMIT_HOLD),  # unreadable: as none
        ("Mon, 21 Sep 2026 15:13:20 GMT", 3600.0),  # an HTTP-date
        ("99999999", RATE_LIMIT_MAX),  # never "degraded" for days on one answer
    ],
)
def test_the_limit_stands_as_long_as_the_upstream_said(
    retry_after: str | None, hold: float
) -> None:
    clock = Clock()
    health = UpstreamHealth(clock=clock)
    health.answered(429, retry_after=retry_after)
    clock.now += hold - 1
    assert (health.limited, health.healthy) == (True, False)
    clock.now += 1
    assert (health.limited, health.healthy) == (False, True)
    assert health.reachable is True


def test_trouble_after_the_429_still_stands_when_the_limit_is_over() -> None:
    """The limit ending says nothing of a timeout that came after it."""
    clock = Clock()
    health = UpstreamHealth(clock=clock)
    health.answered(429, retry_after="60")
    clock.now += 10
    health.failed("timeout talking to registry.test", "timeout")
    clock.now += 60
    assert (health.limited, health.healthy, health.reachable) == (False, False, False)


def test_a_new_429_holds_the_limit_again_and_a_pull_ends_it_at_once() -> None:
    clock = Clock()
    health = UpstreamHealth(clock=clock)
    health.answered(429, retry_after="60")
    clock.now += 50
    health.answered(429, retry_after="60")
    clock.now += 50
    assert health.healthy is False  # 100 s after the first, 50 after the second
    health.answered(200, own=True, pull=False)  # /v2/ answers whatever the limit
    assert health.healthy is False
    health.answered(200)  # an own pull got through
    assert (health.limited, health.healthy) == (False, True)


def test_a_clients_own_429_sets_no_limit() -> None:
    health = UpstreamHealth(clock=Clock())
    health.answered(429, own=False, retry_after="60")
    assert (health.limited, health.last_limited, health.healthy) == (False, None, None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (" 120 ", 120.0),
        ("Mon, 21 Sep 2026 14:13:50 GMT", 30.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # past: now
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("٣", None),  # a digit, but not an ASCII one
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, START) == seconds
