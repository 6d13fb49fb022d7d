"""Waiting for a state of the event loop in a test, bounded so that it never hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

YIELDS = 10_000  # turns of the event loop a test waits for something before it fails


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition`` holds (bounded: never hangs a test)."""
    for _ in range(YIELDS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the awaited state never came")
