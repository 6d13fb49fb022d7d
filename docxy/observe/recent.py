"""Bounded in-memory tallies for the status page: the most pulled images, recent errors.

Both are fed once per request, so both have a hard cap: memory stays flat however many
distinct names clients send.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

from docxy.core.stamps import utc_stamp

MAX_KEY = 200  # characters of an image name kept; longer names are cut


class TopCounts:
    """Counts per key, for at most ``max_keys`` distinct keys.

    When the table is full, a new key replaces the least counted one (the "space-saving"
    scheme): it is kept as if it had that one's count, plus one, so that a name pulled often
    still climbs into the top while a flood of one-off names cannot grow the table; that
    inherited part is remembered, and :meth:`top` counts only what each key was seen itself
    (never more than it was: a name seen once shows 1, whatever it replaced).
    """

    def __init__(self, max_keys: int = 1000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._counts: Counter[str] = Counter()
        self._inherited: dict[str, int] = {}

    def add(self, key: str) -> None:
        key = key[:MAX_KEY]
        if key in self._counts or len(self._counts) < self.max_keys:
            self._counts[key] += 1
            return
        smallest, count = min(self._counts.items(), key=lambda item: item[1])
        del self._counts[smallest]
        self._inherited.pop(smallest, None)
        self._counts[key] = count + 1
        self._inherited[key] = count

    def top(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most counted keys by what each was seen itself, most first; ties by name."""
        seen = ((key, count - self._inherited.get(key, 0)) for key, count in self._counts.items())
        return sorted(seen, key=lambda item: (-item[1], item[0]))[:n]

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    at: float  # seconds since the epoch
    kind: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"at": utc_stamp(self.at), "kind": self.kind, "message": self.message}


class RecentErrors:
    """The last ``size`` errors, newest first."""

    def __init__(self, size: int = 20) -> None:
        self._events: deque[ErrorEvent] = deque(maxlen=size)

    def add(self, kind: str, message: str, at: float | None = None) -> None:
        self._events.append(ErrorEvent(time.time() if at is None else at, kind, message))

    def latest(self) -> list[ErrorEvent]:
        return sorted(self._events, key=lambda event: event.at, reverse=True)
