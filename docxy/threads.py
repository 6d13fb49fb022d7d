"""Blocking work in a thread of its own, awaited as a future on the event loop.

The default executor has a handful of workers shared by every ``to_thread`` (file reads of
every client): a cache fill that reads its upstream for minutes must not hold one of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_own_thread(
    name: str, work: Callable[[], T], discard: Callable[[T], None] | None = None
) -> asyncio.Future[T]:
    """Run ``work`` in a new daemon thread called ``name``; its result or exception lands in
    the returned future. If the future is cancelled first, ``discard`` gets the result (to
    close what ``work`` opened)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None and discard is not None:
                discard(result)  # type: ignore[arg-type]  # no error: work returned a T
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the loop is closed (shutdown): nobody awaits any more
            if error is None and discard is not None:
                discard(result)  # type: ignore[arg-type]

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
