"""Password guessing at ``/auth/token``: wrong passwords a client may try, per minute.

Each wrong password costs the client's address (an IPv6 client: its /64) one place of a
bucket of ``limits.failed_logins_per_minute`` that refills at that rate (taken before the
check, given back when the password was right). With the bucket
empty, the client's logins are refused (``429`` with ``Retry-After``) before any password is
checked, the right one included: a refusal that still said "right" would not stop guessing.
Counted by address, never by user name, so nobody can lock a user out from elsewhere; a
login that succeeds or carries no password costs nothing.

``limits.exempt`` does not spare it, unlike the other per-client limits: a password guesser
inside a NAT-ed office is still guessing, and its colleagues, whose logins are right, spend
nothing from the bucket they share; only a burst of wrong ones (a guesser, or a misconfigured
job) empties it.
"""

from __future__ import annotations

import time

from docxy.core.errors import TooManyRequests
from docxy.edge.limits import Buckets, Clock, retry_after

THROTTLED = "too many failed logins from this client; try again later"


class FailedLogins:
    """Per-client buckets of wrong passwords; ``per_minute`` 0 turns the limit off.

    A password check takes its place before it runs (:meth:`take`) and gives it back when the
    password was right (:meth:`give_back`): charging only after a wrong one let guesses sent
    at once all pass while the first waited for a hashing slot.
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.buckets = Buckets(per_minute / 60, per_minute, clock)
        self.refused = 0

    def refusals(self) -> dict[str, int]:
        """Logins refused so far (``docxy_refused_total``)."""
        return {"limits.failed_logins_per_minute": self.refused}

    def take(self, client: str) -> TooManyRequests | None:
        """A place for one password check by ``client``, or why not (nothing taken then)."""
        wait = self.buckets.take(client)
        if wait <= 0:
            return None
        self.refused += 1
        return TooManyRequests(THROTTLED, {"retry_after": retry_after(wait)})

    def give_back(self, client: str) -> None:
        """The check :meth:`take` made room for was no wrong password."""
        self.buckets.give(client)
