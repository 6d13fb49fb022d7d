"""A token answer's ``expires_in`` read as the seconds a token is used (a pure core).

The token spec makes it an integer of seconds, 60 when absent. Token services send other
things too: a float, a numeric string, JSON's ``Infinity`` or ``NaN`` (Python's json reads
them), an integer no float can hold (``1e400`` written out). None of these may raise where
the answer is read: anything that is no positive, finite length of time is the default.

The default is also the least: Docker's client (distribution's token handler) raises any
shorter ``expires_in`` to 60 s and uses the token that long, so the mirror keeps knowing a
relayed token as long as clients send it, and its own tokens are not asked for again every
second (a token that did expire early upstream is answered 401, and asked for again once).
"""

from __future__ import annotations

import math

#: The token spec's lifetime for an answer without ``expires_in``, and the least one.
DEFAULT_EXPIRES_IN = 60.0


def token_lifetime(expires_in: object, longest: float) -> float:
    """Seconds a token is used: its ``expires_in``, at least the default and at most
    ``longest``; the default for anything that is no positive, finite number of seconds."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return DEFAULT_EXPIRES_IN
    try:
        seconds = float(expires_in)
    except (ValueError, OverflowError):  # "soon"; an int past the floats
        return DEFAULT_EXPIRES_IN
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_EXPIRES_IN
    return min(max(seconds, DEFAULT_EXPIRES_IN), longest)
