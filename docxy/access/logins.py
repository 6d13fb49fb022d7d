"""Password guessing at ``/auth/token``: wrong passwords a client may try, per minute.

Each wrong password costs the client's address (an IPv6 client: its /64) one place of a
bucket of ``limits.failed_logins_per_minute`` that refills at that rate. With the bucket
empty, the client's logins are refused (``429`` with ``Retry-After``) before any password is
checked, the right one included: a refusal that still said "right" would not stop guessing.
Counted by address, never by user name, so nobody can lock a user out from elsewhere; a
login that succeeds or carries no password costs nothing.
"""

from __future__ import annotations

import time

from docxy.core.errors import TooManyRequests
from docxy.edge.limits import Buckets, Clock, retry_after

THROTTLED = "too many failed logins from this client; try again later"


class FailedLogins:
    """Per-client buckets of wrong passwords; ``per_minute`` 0 turns the limit off."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.buckets = Buckets(per_minute / 60, per_minute, clock)

    def refusal(self, client: str) -> TooManyRequests | None:
        """Why ``client`` may not try a password now, or None."""
        wait = self.buckets.wait(client)
        if wait <= 0:
            return None
        return TooManyRequests(THROTTLED, {"retry_after": retry_after(wait)})

    def failed(self, client: str) -> None:
        """``client`` sent a wrong password."""
        self.buckets.take(client)
