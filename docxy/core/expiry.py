"""A token answer's ``expires_in`` read as the seconds a token is used (a pure core).

The token spec makes it an integer of seconds, 60 when absent. Token services send other
things too: a float, a numeric string, JSON's ``Infinity`` or ``NaN`` (Python's json reads
them), an integer no float can hold (``1e400`` written out). None of these may raise where
the answer is read: anything that is no positive, finite length of time is the default.
"""

from __future__ import annotations

import math

#: The token spec's lifetime for an answer without ``expires_in``.
DEFAULT_EXPIRES_IN = 60.0


def token_lifetime(expires_in: object, longest: float) -> float:
    """Seconds a token is used: its ``expires_in``, at most ``longest``; the default for
    anything that is no positive, finite number of seconds."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return DEFAULT_EXPIRES_IN
    try:
        seconds = float(expires_in)
    except (ValueError, OverflowError):  # "soon"; an int past the floats
        return DEFAULT_EXPIRES_IN
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_EXPIRES_IN
    return min(seconds, longest)
