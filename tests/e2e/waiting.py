"""Bounded waits for the end-to-end tests: the one poll loop they share.

Every wait has a deadline and names what it waited for, so a hang ends as a failure saying what
never happened, never as a stuck run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL = 0.05


def eventually(condition: Callable[[], object], deadline: float) -> bool:
    """Poll ``condition`` until it holds or ``deadline`` seconds pass; whether it held."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(INTERVAL)
    return bool(condition())


def poll(check: Callable[[], object], deadline: float, what: str = "") -> None:
    """Poll ``check`` until it holds; after ``deadline`` seconds fail the test naming ``what``."""
    if not eventually(check, deadline):
        raise AssertionError(f"not within {deadline:.0f}s: {what}")
