"""Caps on concurrent upstream fills: per client (``limits.fills_per_client``) and overall
(``limits.fills_total``).

A fill is the mirror fetching a blob it does not hold; it costs upstream quota, bandwidth and
cache space whether or not the client stays to read it. A request that would *start* one more
fill than allowed is answered ``429 TOOMANYREQUESTS``; joining a fill already running, or a
cache hit, is free. The client is the one admission named for this request (:data:`CLIENT`, a
context variable admission sets, so it follows the request into the tasks it starts); a client
in ``limits.exempt`` is named :data:`EXEMPT`, whose fills count towards ``fills_total`` only.

A client of a fill the cache gave up midway (its disk failed) gets the rest of the blob from the
upstream itself: that download counts as a fill too (:meth:`FillPermits.wait`), towards
``fills_total`` only, but is never refused (the client has the blob's first bytes): it waits
for a permit, first come first served, each freed permit handed to the longest waiting.
So does the pass-through of a request that joined a fill which then gave up, but that one is
first held to ``fills_per_client`` (joining was free: it was never counted for its client).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
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
        #: Downloads waiting for a permit (:meth:`wait`): their client, and the future that
        #: hands them one.
        self._waiting: deque[tuple[str, asyncio.Future[Release]]] = deque()

    @property
    def waiting(self) -> int:
        """Downloads waiting for a permit now (:meth:`wait`)."""
        return sum(not granted.done() for _, granted in self._waiting)

    def _full(self) -> bool:
        return bool(self.total) and sum(self.running.values()) >= self.total

    def acquire(self) -> Release:
        """A permit for one new fill by the current client, or :class:`TooManyRequests`."""
        client = CLIENT.get()
        if self._full():
            self.refused += 1
            self.refused_by["limits.fills_total"] += 1
            raise TooManyRequests(
                "the mirror is fetching as much as it may; try again shortly",
                {"retry_after": RETRY_AFTER},
            )
        self._check_client(client)
        return self._take(client)

    def _check_client(self, client: str) -> None:
        """:class:`TooManyRequests` if ``client`` has ``limits.fills_per_client`` downloads
        already, running or waiting for a permit (:meth:`wait`)."""
        if not self.per_client or client == EXEMPT:
            return
        waiting = sum(who == client and not granted.done() for who, granted in self._waiting)
        if self.running[client] + waiting >= self.per_client:
            self.refused += 1
            self.refused_by["limits.fills_per_client"] += 1
            raise TooManyRequests(
                "this client has too many downloads in progress upstream",
                {"retry_after": RETRY_AFTER},
            )

    async def wait(self, *, capped: bool = False) -> Release:
        """A permit for an upstream download the current client may not be refused (the rest
        of a blob it has the first bytes of), counted towards ``fills_total`` only: at once
        when one is free and nobody waits, else once one is handed on to it.

        ``capped``: a download the client was never counted for (it joined another client's
        fill, which then gave up): refused first, as :meth:`acquire` refuses, when the client
        has ``limits.fills_per_client`` downloads running or waiting; only ``fills_total``
        is waited for (the failed fill's own permit may not be given back yet)."""
        client = CLIENT.get()
        if capped:
            self._check_client(client)
        if not self._waiting and not self._full():
            return self._take(client)
        granted: asyncio.Future[Release] = asyncio.get_running_loop().create_future()
        self._waiting.append((client, granted))
        try:
            return await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                granted.result()()  # handed one as it was cancelled: on to the next
            elif (client, granted) in self._waiting:
                self._waiting.remove((client, granted))
            raise

    def _take(self, client: str) -> Release:
        self.running[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.running[client] -= 1
                if self.running[client] <= 0:
                    del self.running[client]
                self._hand_on()

        return release

    def _hand_on(self) -> None:
        """Give the permits free now to the downloads waiting longest (:meth:`wait`)."""
        while self._waiting and not self._full():
            client, granted = self._waiting.popleft()
            if not granted.done():  # else: its waiter was cancelled
                granted.set_result(self._take(client))

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
