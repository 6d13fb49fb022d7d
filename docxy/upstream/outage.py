"""Upstreams remembered as down: requests fail fast while one probe at a time goes.

Where the upstream is blocked the worst way (packets dropped: every connect waits
``upstream.connect_timeout``), stale-if-error served a cached tag only after each request's
own attempt had waited that long (a cached pull's ``HEAD`` and ``GET`` of its tag, 10 s each),
every pull, for as long as the outage lasted. As
nginx's ``max_fails``/``fail_timeout`` and Envoy's outlier detection do, a failure at the
connection (a connect or TLS handshake timed out, refused, unreachable, a name not resolved:
never an HTTP status, nor an answer or body slow to come, which may be one endpoint's),
:data:`FAILURES_TO_HOLD` in a row with no answer between, marks the origin it was sent to
down: one connection refused by one of a registry's many addresses, the others answering, holds
nothing up (nginx never takes the one server of a group down at all; here, with a stale answer
to give, waiting is what the hold saves). For :data:`FIRST_HOLD` seconds no request
is sent to it; then one at a time is (the probe), the others still not: a probe that fails
holds it down twice as long again (up to :data:`LONGEST_HOLD`), the first answer (any status)
ends the outage. A request not sent is refused with the error of the failure that marked it
down (``not tried``), told to the upstream's health as that failure was: the callers take it
as they took the failure (stale-if-error; the same ``502``/``504`` ``UNAVAILABLE`` for a
request with nothing cached, which would have waited the timeout only to get it).

Kept per upstream and per origin asked (the registry, its token service), so one upstream's
outage never holds another's requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType

from docxy.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from docxy.core.hosts import origin
from docxy.core.stamps import utc_stamp

#: Failures at the connection in a row (no answer from the origin between) that take it down.
FAILURES_TO_HOLD = 3
#: Seconds an origin is held down once taken down.
FIRST_HOLD = 5.0
#: The longest hold, however many failures in a row.
LONGEST_HOLD = 60.0

Key = tuple[str, tuple[str, str | None, int | None]]


@dataclass(slots=True)
class _Down:
    since: float  # wall clock: the first failure of this outage
    until: float  # monotonic: when it is taken to be over (unless it fails again)
    hold: float  # seconds of the latest hold
    said: str  # the latest failure, in words
    timeout: bool  # whether it was a timeout (UpstreamTimeout) or not (UpstreamUnavailable)
    probing: bool = False  # a request is being sent to it now


#: The outage whose probe the current task is sending, if any: only its failure doubles the
#: hold (another request failing meanwhile was sent before the hold, one of its burst).
_PROBING: ContextVar[_Down | None] = ContextVar("docxy_outage_probe", default=None)


class _Probe:
    """The one request sent to an origin taken to be down: the next may go once it ends."""

    def __init__(self, down: _Down) -> None:
        self._down = down
        self._token: Token[_Down | None] | None = None

    def __enter__(self) -> None:
        self._token = _PROBING.set(self._down)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._down.probing = False
        if self._token is not None:
            _PROBING.reset(self._token)


class Outages:
    """Which origins of which upstreams failed at the connection lately (see the module)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock, self._wall = clock, wall
        self._down: dict[Key, _Down] = {}
        #: origins not down (yet): their failures at the connection since their last answer,
        #: and when the first of them was (wall clock)
        self._failures: dict[Key, tuple[int, float]] = {}

    @staticmethod
    def _key(host: str, url: str) -> Key:
        return host, origin(url)

    def attempt(
        self, host: str, url: str, told: Callable[[str, str], None]
    ) -> _Probe | nullcontext[None]:
        """May a request of upstream ``host`` to ``url`` be sent? A context its sending runs
        in (a probe's end lets the next one go); raises the error of the failure that marked
        ``url``'s origin down while it is held down or another request is its probe, after
        ``told`` (the upstream health's ``failed``) hears it as a failure of that kind."""
        down = self._down.get(self._key(host, url))
        if down is None:
            return nullcontext()  # not down: nothing to keep
        if not down.probing and self._clock() >= down.until:
            down.probing = True
            return _Probe(down)
        said = f"upstream down since {utc_stamp(down.since)} ({down.said}), not tried"
        told(said, "timeout" if down.timeout else "unreachable")
        error: type[UpstreamError] = UpstreamTimeout if down.timeout else UpstreamUnavailable
        raise error(f"the upstream registry did not answer: {said}")

    def failed(self, host: str, url: str, said: str, *, timeout: bool) -> None:
        """A request to ``url`` got no connection (``timeout``: in time): its origin is down
        for :data:`FIRST_HOLD` seconds once this is the :data:`FAILURES_TO_HOLD`-th such failure
        since it last answered; for twice the last hold if this was its probe. A request sent
        before the hold began that fails in it (one of a burst, all waiting out the same
        connect timeout) changes nothing: each doubled the first hold to a minute, a registry
        restarting under a few clients held down a minute after it was back."""
        key = self._key(host, url)
        now = self._clock()
        down = self._down.get(key)
        if down is None:
            failures, since = self._failures.get(key, (0, self._wall()))
            if failures + 1 < FAILURES_TO_HOLD:
                self._failures[key] = failures + 1, since
                return
            self._failures.pop(key, None)
            self._down[key] = _Down(since, now + FIRST_HOLD, FIRST_HOLD, said, timeout)
            return
        if not down.probing or _PROBING.get() is not down:
            return  # sent before the hold (or its probe), not the probe itself
        down.hold = min(down.hold * 2, LONGEST_HOLD)
        down.until, down.said, down.timeout = now + down.hold, said, timeout

    def answered(self, host: str, url: str) -> None:
        """``url``'s origin answered (whatever its status): up."""
        key = self._key(host, url)
        self._down.pop(key, None)
        self._failures.pop(key, None)

    def down(self, host: str, url: str) -> bool:
        """Whether ``url``'s origin is taken to be down (until it answers)."""
        return self._key(host, url) in self._down
