"""Times as the mirror tells them: ``2026-12-01T10:14:00Z`` (UTC, to the second, ``Z``).

``/health``, ``/status.json``, the status page and the log tell every time this way, whether it
was kept as seconds since the epoch (the upstream's health, recent errors) or as a datetime (a
certificate's expiry, the renewer's runs): one spelling a reader can match across them, and
sort as text. Not ``isoformat()``'s ``+00:00`` with microseconds.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import overload

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@overload
def utc_stamp(when: float | dt.datetime) -> str: ...
@overload
def utc_stamp(when: float | dt.datetime | None) -> str | None: ...
def utc_stamp(when: float | dt.datetime | None) -> str | None:
    """`when` (seconds since the epoch, or a datetime: a naive one is local time, as
    ``astimezone`` takes it) in UTC to the second, the fraction dropped; None for None."""
    if when is None:
        return None
    if isinstance(when, dt.datetime):
        return when.astimezone(dt.UTC).strftime(FORMAT)
    return time.strftime(FORMAT, time.gmtime(when))


def aware(text: object) -> dt.datetime | None:
    """``text`` read as an ISO 8601 time with an offset (``utc_stamp``'s, or
    ``2026-12-01T10:14:00.123456+00:00``); None for anything else, a time UTC cannot hold too
    (``0001-01-01T00:00:00+05:00``: told in UTC it raised OverflowError, and a renewer status
    file holding one made ``/health``, ``/metrics`` and the status page answer 500)."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    try:
        when.astimezone(dt.UTC)
    except OverflowError:
        return None
    return when


def restamped(text: object) -> object:
    """An ISO 8601 time with an offset (``2026-12-01T10:14:00.123456+00:00``, as files written
    before this module have it) as :func:`utc_stamp` tells it; anything else as it was."""
    when = aware(text)
    return text if when is None else utc_stamp(when)
