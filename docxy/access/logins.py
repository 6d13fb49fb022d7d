"""Password guessing at ``/auth/token``: wrong passwords a client may try, per minute.

Each wrong password costs the client's address (an IPv6 client: its /64) one place of a
bucket of ``limits.failed_logins_per_minute`` that refills at that rate (taken before the
check, given back when the password was right). An IPv6 client's guess also costs one place
of its /48's bucket, :data:`SITE_FACTOR` times as large and as fast: a /64 is one subscriber's,
but a home holds a /56 and a business a /48, 256 or 65536 /64s each with its own bucket, so
without it one site guessed hundreds of times a minute (bounded only by the hashing slots,
which then held up everyone's logins). A guess needs room in both buckets, is taken from both
or neither, and a right password gives both places back. IPv4 has no wider bucket: a /24 is
many unrelated clients (NAT-ed offices, a hosting range), not one site's for the asking.
With either bucket empty, the client's logins are refused (``429`` with ``Retry-After``)
before any password is checked, the right one included: a refusal that still said "right"
would not stop guessing. Counted by address, never by user name, so nobody can lock a user out
from elsewhere (a guesser in a user's own /48 can, as one behind a user's own NAT can); a
login that succeeds or carries no password costs nothing. The same buckets hold the upstream
logins the mirror relays, each one the upstream refuses (``401``) a wrong password: the upstream
sees every guess come from the mirror's address. Those are passwords ``/auth/token`` relays to
a token service (``docxy.http.auth``) and Basic passwords passed through to a registry that
checks them itself (``docxy.http.routes.within_login_limit``). Their place is not taken before
the upstream is asked (:meth:`FailedLogins.refusal` only looks) but charged when it said wrong
(:meth:`FailedLogins.charge`): held for a round trip, right logins sent at once used it up.

``limits.exempt`` does not spare it, unlike the other per-client limits: a password guesser
inside a NAT-ed office is still guessing, and its colleagues, whose logins are right, spend
nothing from the bucket they share; only a burst of wrong ones (a guesser, or a misconfigured
job) empties it.
"""

from __future__ import annotations

import time

from docxy.core.errors import TooManyRequests
from docxy.edge.limits import Clock, SitedBuckets, retry_after

THROTTLED = "too many failed logins from this client; try again later"
#: An IPv6 /48's budget, in per-address budgets: ten /64s of a site may each use all of theirs
#: at once (an office's few misconfigured jobs, people mistyping), and the whole site's
#: guesses stay at ten times one address's (100 a minute by default, not 655360).
SITE_FACTOR = 10


class FailedLogins(SitedBuckets):
    """Per-client buckets of wrong passwords; ``per_minute`` 0 turns the limit off.

    A password check takes its place before it runs (:meth:`take`) and gives it back when the
    password was right (:meth:`give_back`): charging only after a wrong one let guesses sent
    at once all pass while the first waited for a hashing slot.
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        super().__init__(per_minute, SITE_FACTOR, clock)
        self.refused = 0

    def refusals(self) -> dict[str, int]:
        """Logins refused so far (``docxy_refused_total``)."""
        return {"limits.failed_logins_per_minute": self.refused}

    def take(self, client: str, site: str | None = None) -> TooManyRequests | None:
        """A place for one password check by ``client`` (and its IPv6 ``site``, its /48:
        ``docxy.core.cidr.site_key``), or why not (nothing taken then, from either)."""
        wait = self.take_place(client, site)
        if wait <= 0:
            return None
        self.refused += 1
        return TooManyRequests(THROTTLED, {"retry_after": retry_after(wait)})

    def give_back(self, client: str, site: str | None = None) -> None:
        """The check :meth:`take` made room for was no wrong password."""
        self.give_place(client, site)

    def refusal(self, client: str, site: str | None = None) -> TooManyRequests | None:
        """Why ``client`` may try no password now (its bucket, or its site's, is empty), or
        None; nothing taken. For a login another checks (a relayed one): :meth:`charge` it
        when that one said wrong."""
        wait = self.wait_place(client, site)
        if wait <= 0:
            return None
        self.refused += 1
        return TooManyRequests(THROTTLED, {"retry_after": retry_after(wait)})

    def charge(self, client: str, site: str | None = None) -> None:
        """A password that another checked (the upstream) was wrong: one place spent, after
        the fact (into debt for guesses that were in flight together)."""
        self.charge_place(client, site)
