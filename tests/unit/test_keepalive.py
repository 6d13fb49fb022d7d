"""The direct GETs' idle connections (docxy.upstream.keepalive): the newest fresh one is taken,
at most a few are kept per origin, and those idle too long are closed, whatever origin they
are of."""

from __future__ import annotations

import http.client
import time
from typing import cast

import pytest

from docxy.upstream.keepalive import IDLE_SECONDS, IdleConnections, Origin


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)  # the module's time.monotonic()
    return clock


def origin(host: str) -> Origin:
    return ("https", host, 443)


def conn(name: str) -> Connection:
    return Connection(name)


def give(pool: IdleConnections, where: Origin, connection: Connection) -> None:
    pool.give(where, cast(http.client.HTTPConnection, connection))


def test_the_newest_fresh_connection_of_the_origin_is_taken(clock: Clock) -> None:
    pool = IdleConnections(per_origin=2)
    old, new, other = conn("old"), conn("new"), conn("other")
    give(pool, origin("cdn.test"), old)
    give(pool, origin("cdn.test"), new)
    give(pool, origin("registry.test"), other)
    assert cast(object, pool.take(origin("cdn.test"))) is new
    assert cast(object, pool.take(origin("cdn.test"))) is old
    assert pool.take(origin("cdn.test")) is None
    assert not (old.closed or new.closed or other.closed)


def test_past_the_cap_the_oldest_of_the_origin_is_closed(clock: Clock) -> None:
    pool = IdleConnections(per_origin=2)
    first, second, third = conn("1"), conn("2"), conn("3")
    for connection in (first, second, third):
        give(pool, origin("cdn.test"), connection)
    assert first.closed and not second.closed and len(pool) == 2


def test_connections_idle_too_long_are_closed_whatever_their_origin(clock: Clock) -> None:
    """Sockets to CDN hosts not asked again stayed open (in CLOSE_WAIT once the server closed
    them) until the mirror stopped: only their own origin's next use pruned them."""
    pool = IdleConnections()
    stale = [conn(f"cdn-{n}") for n in range(8)]
    for n, connection in enumerate(stale):
        give(pool, origin(f"cdn-{n}.test"), connection)
    clock.now += IDLE_SECONDS + 1
    fresh = conn("fresh")
    give(pool, origin("registry.test"), fresh)
    assert all(connection.closed for connection in stale)
    assert len(pool) == 1 and not fresh.closed
    clock.now += IDLE_SECONDS + 1
    assert pool.take(origin("elsewhere.test")) is None
    assert fresh.closed and len(pool) == 0
