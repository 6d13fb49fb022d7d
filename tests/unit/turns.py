"""Waiting for a state of the event loop in a test, bounded so that it never hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

YIELDS = 10_000  # turns of the event loop a test waits for something before it fails
#: ...and then, for a state that waits on a worker thread (a close, a temp file's removal) on a
#: loaded machine, seconds more of short sleeps: a bound, not a timing assertion.
PATIENCE = 30.0


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition`` holds (bounded: never hangs a test).

    Most states come within a few turns of the loop; one that needs a worker thread may need
    that thread to be scheduled first, which on a busy machine takes longer than any number of
    turns, so after :data:`YIELDS` turns the wait goes on in 1 ms sleeps up to :data:`PATIENCE`.
    """
    for _ in range(YIELDS):
        if condition():
            return
        await asyncio.sleep(0)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the awaited state never came")
