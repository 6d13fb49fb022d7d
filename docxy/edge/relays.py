"""Token relays: requests the mirror passes to the upstream with no pull behind them.

A client's ``/auth/token`` is answered by the upstream's token service, and a ``/v2/`` the
mirror cannot answer itself by the upstream's own ``/v2/`` (its challenge, re-pointed at the
mirror). Both leave from the mirror's address, and neither fetches anything: a loop of them
would have the upstream rate-limit or ban that address, for every user of the mirror. So each
client address (IPv6: its /64; behind ``server.trusted_proxies`` the address they name) has a
bucket of ``limits.token_relays_per_minute`` of them, refilled at that rate; an empty one is
``429 TOOMANYREQUESTS`` with ``Retry-After``, and nothing is sent.

A ``/v2/`` without credentials only asks for the challenge, the same for every client, which
the mirror's own probe of the upstream's ``/v2/`` keeps (``UpstreamClient.challenge``): while
that is fresh, it is answered from it, relays nothing and counts nothing; a client out of
relays gets it however old, never a ``429``. A ``/v2/`` with credentials (``docker login``
checking a token) is relayed, and counted: only the upstream can say whether they hold. A
token request counts once if it asks the upstream anything (the realm lookup's ``/v2/``, the
token service); one the mirror answers itself (``mirror_only_token``) counts nothing.

A real pull asks few: dockerd 20.10 sends one ``/v2/`` and one ``/auth/token`` per image,
however many layers (measured through the mirror with a 40-layer image), and containerd asks
a token only when a request is challenged; dockerd's ``/v2/`` carries no credentials, and is
answered from the known challenge. Keyed by address, never by user: the relays are what an
anonymous client can make the mirror send.

An address in ``limits.exempt`` counts none (``docxy.http.routes.count_relay`` asks): a CI farm
behind one NAT is hundreds of dockerds, each asking a token per image, which one address's
bucket would throttle however well each behaves. The operator who lists a network vouches for
it; a loop inside it spends the mirror's standing with the upstream, which is the trade.
"""

from __future__ import annotations

import time

from docxy.core.errors import TooManyRequests
from docxy.edge.limits import Clock, SitedBuckets, retry_after

THROTTLED = "too many /v2/ and token requests from this client; try again later"
#: An IPv6 /48's budget, in per-address budgets: a home's /56 is 256 /64s, each with a bucket of
#: its own, so one such holder relayed 256 times as much as one address to the upstream's auth
#: service, which rate-limits the mirror's address for everyone.
SITE_FACTOR = 10


class TokenRelays(SitedBuckets):
    """Per-address buckets of relayed ``/v2/`` and token requests; ``per_minute`` 0 is off."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        super().__init__(per_minute, SITE_FACTOR, clock)
        self.refused = 0

    def refusals(self) -> dict[str, int]:
        """Relays refused so far (``docxy_refused_total``)."""
        return {"limits.token_relays_per_minute": self.refused}

    def take(self, client: str, site: str | None = None, *, refuse: bool = True) -> bool:
        """Count one relay for ``client`` (an address key) and its IPv6 ``site`` (its /48,
        ``docxy.core.cidr.site_key``): True. With either bucket empty, raise
        :class:`TooManyRequests` (a refusal, for ``/metrics``); or, not ``refuse``, return
        False, nothing counted: the caller answers without the upstream."""
        wait = self.take_place(client, site)
        if wait <= 0:
            return True
        if not refuse:
            return False
        self.refused += 1
        raise TooManyRequests(THROTTLED, {"retry_after": retry_after(wait)})
