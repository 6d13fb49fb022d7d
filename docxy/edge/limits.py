"""Per-client token buckets: request rate, manifest fetches and bandwidth.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second. Taking from a full
enough bucket is free; otherwise the caller learns how long until it would be, which becomes
``Retry-After``. Bandwidth may run into debt (a chunk is sent, then charged); a client in debt
is paced within a response and refused a new one until the debt is paid.

An IPv6 client is kept by its /64 and, where a limit keeps sites, by its /48 as well
(:class:`SitedBuckets`, :class:`SitedBandwidth`): a /64 is one subscriber's, but a home holds a
/56 and a business a /48, 256 or 65536 /64s each with buckets of its own.

The table of buckets is bounded: the least recently used client is forgotten first, and a
forgotten client starts again with a full bucket, which only ever errs towards serving.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
MAX_CLIENTS = 65536


@dataclass(slots=True)
class Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` if the bucket holds it and return 0; else take nothing and return
        the seconds until it would."""
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate

    def wait(self, now: float, amount: float = 1.0) -> float:
        """The seconds until the bucket holds ``amount`` (0: it does now); nothing taken."""
        self._refill(now)
        return max(0.0, (amount - self.tokens) / self.rate)

    def give(self, now: float, amount: float = 1.0) -> None:
        """Put back ``amount`` taken for something that turned out free (up to ``burst``)."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + amount)

    def charge(self, now: float, amount: float) -> float:
        """Take ``amount`` even into debt; return the seconds until the debt is paid."""
        self._refill(now)
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)

    def debt(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 when it is not in debt)."""
        self._refill(now)
        return max(0.0, -self.tokens / self.rate)


class Buckets:
    """One :class:`Bucket` per client key, for one kind of limit; ``rate`` 0 means off."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def __bool__(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def of(self, key: str) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = Bucket(self.rate, self.burst, self.burst, self.clock())
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str, amount: float = 1.0) -> float:
        return self.of(key).take(self.clock(), amount) if self else 0.0

    def wait(self, key: str, amount: float = 1.0) -> float:
        return self.of(key).wait(self.clock(), amount) if self else 0.0

    def give(self, key: str, amount: float = 1.0) -> None:
        if self:
            self.of(key).give(self.clock(), amount)

    def charge(self, key: str, amount: float) -> float:
        return self.of(key).charge(self.clock(), amount) if self else 0.0

    def debt(self, key: str) -> float:
        return self.of(key).debt(self.clock()) if self else 0.0


class SitedBuckets:
    """Per-address :class:`Buckets` (an IPv6 client's /64), and for IPv6 one per /48 as well,
    ``site_factor`` times as large and as fast: a /64 is one subscriber's, but a home holds a
    /56 and a business a /48, 256 or 65536 /64s each with a bucket of its own. A place needs
    room in both; refused by the site, the address's place is not spent."""

    def __init__(self, per_minute: int, site_factor: int, clock: Clock = time.monotonic) -> None:
        self.buckets = Buckets(per_minute / 60, per_minute, clock)
        wider = per_minute * site_factor
        self.sites = Buckets(wider / 60, wider, clock)

    def take_place(self, client: str, site: str | None) -> float:
        """Take one place for ``client`` and its ``site`` (``docxy.core.cidr.site_key``): 0, or
        the seconds until there is one (nothing taken then, from either)."""
        wait = self.buckets.take(client)
        if wait <= 0 and site is not None:
            wait = self.sites.take(site)
            if wait > 0:
                self.buckets.give(client)
        return wait

    def give_place(self, client: str, site: str | None) -> None:
        """Give back a place :meth:`take_place` took."""
        self.buckets.give(client)
        if site is not None:
            self.sites.give(site)

    def wait_place(self, client: str, site: str | None) -> float:
        """The seconds until ``client`` and its ``site`` both have a place (0: they do now);
        nothing taken."""
        wait = self.buckets.wait(client)
        if site is not None:
            wait = max(wait, self.sites.wait(site))
        return wait

    def charge_place(self, client: str, site: str | None) -> None:
        """Spend a place of ``client`` and its ``site`` after the fact, into debt if none is
        left: what was spent past the limit is waited out before the next place."""
        self.buckets.charge(client, 1.0)
        if site is not None:
            self.sites.charge(site, 1.0)


class SitedBandwidth:
    """Per-address bandwidth :class:`Buckets` (bytes a second, a second's burst), and for IPv6
    one per /48 ``site_factor`` times as fast and as deep, as :class:`SitedBuckets` keeps
    places. Bandwidth is charged after it is sent, into debt, not taken beforehand: each chunk
    is charged to both, and a client owes the deeper of its own debt and its site's."""

    def __init__(self, rate: float, site_factor: int, clock: Clock = time.monotonic) -> None:
        self.buckets = Buckets(rate, rate, clock)
        wider = rate * site_factor
        self.sites = Buckets(wider, wider, clock)

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def charge(self, client: str, amount: float, site: str | None = None) -> float:
        """Charge ``amount`` to ``client`` and its ``site``, into debt; the seconds until both
        are paid."""
        wait = self.buckets.charge(client, amount)
        if site is not None:
            wait = max(wait, self.sites.charge(site, amount))
        return wait

    def debt(self, client: str, site: str | None = None) -> float:
        """Seconds until ``client`` and its ``site`` are out of debt (0: neither is in it)."""
        debt = self.buckets.debt(client)
        if site is not None:
            debt = max(debt, self.sites.debt(site))
        return debt


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
