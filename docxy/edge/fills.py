"""Caps on concurrent upstream fills: per client (``limits.fills_per_client``) and overall
(``limits.fills_total``).

A fill is the mirror fetching a blob it does not hold; it costs upstream quota, bandwidth and
cache space whether or not the client stays to read it. A request that would *start* one more
fill than allowed is answered ``429 TOOMANYREQUESTS``; joining a fill already running, or a
cache hit, is free. The client is the one admission named for this request (:data:`CLIENT`, a
context variable admission sets, so it follows the request into the tasks it starts); a client
in ``limits.exempt`` is named :data:`EXEMPT`, whose fills count towards ``fills_total`` only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from docxy.core.errors import TooManyRequests

CLIENT: ContextVar[str] = ContextVar("docxy_client", default="unknown")
#: The name admission gives every client in ``limits.exempt``: never a client key (an address,
#: an IPv6 /64, ``user:NAME``, ``cert:NAME``, ``unknown``), and never capped per client.
EXEMPT = "(exempt)"
#: What a refused client is told to wait: fills of whole layers take a while.
RETRY_AFTER = "10"

Release = Callable[[], None]
Close = Callable[[], Awaitable[None]]


class FillPermits:
    """Counts fills in flight; 0 for a cap means no cap."""

    def __init__(self, per_client: int = 0, total: int = 0) -> None:
        self.per_client = per_client
        self.total = total
        self.running: Counter[str] = Counter()
        self.refused = 0
        self.refused_by: Counter[str] = Counter()  # by the setting that refused (/metrics)

    def acquire(self) -> Release:
        """A permit for one new fill by the current client, or :class:`TooManyRequests`."""
        client = CLIENT.get()
        if self.total and sum(self.running.values()) >= self.total:
            self.refused += 1
            self.refused_by["limits.fills_total"] += 1
            raise TooManyRequests(
                "the mirror is fetching as much as it may; try again shortly",
                {"retry_after": RETRY_AFTER},
            )
        if self.per_client and client != EXEMPT and self.running[client] >= self.per_client:
            self.refused += 1
            self.refused_by["limits.fills_per_client"] += 1
            raise TooManyRequests(
                "this client has too many downloads in progress upstream",
                {"retry_after": RETRY_AFTER},
            )
        self.running[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.running[client] -= 1
                if self.running[client] <= 0:
                    del self.running[client]

        return release

    def refusals(self) -> dict[str, int]:
        """Fills refused so far, by the setting that refused them (``docxy_refused_total``)."""
        return dict(self.refused_by)


def released_after(
    close: Callable[[], Awaitable[None]], release: Release
) -> Callable[[], Awaitable[None]]:
    """``close``, then ``release`` the permit, whatever ``close`` does."""

    async def closing() -> None:
        try:
            await close()
        finally:
            release()

    return closing
