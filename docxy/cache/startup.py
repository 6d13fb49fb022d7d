"""Reading a large cache directory at start without holding up the event loop.

The stores start serving at once and take over what a worker thread read once it is done;
until then they answer from disk directly and note what changes, as each store's docs say.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


#: After a failed read at start (:func:`read_in_thread`), the next try waits this long
#: (seconds), twice as long after each failure up to :data:`RETRY_LONGEST`: a disk that failed
#: a listing once (EIO, a network file system's hiccup) is read again soon, one that keeps
#: failing is not hammered, and no failure is for ever (it was, until a restart).
RETRY_FIRST = 2.0
RETRY_LONGEST = 60.0


class StartRead(Future[T]):
    """The future of a read at start (:func:`read_in_thread`): done once a try succeeds, with
    its result; :attr:`first_try` is done once the first try ended, however it did."""

    def __init__(self) -> None:
        super().__init__()
        self.first_try: Future[None] = Future()


def read_in_thread(name: str, what: str, work: Callable[[], T]) -> StartRead[T]:
    """Run ``work`` (``what`` it reads, for the log) in a daemon thread called ``name``; its
    result in the future. A try that raises is said in one ERROR (what, why, when it is tried
    again) and tried again, after :data:`RETRY_FIRST` seconds growing to
    :data:`RETRY_LONGEST`, until one succeeds: the stores serve from disk meanwhile, as while
    the read is in flight, and take over its result once it comes, as after any start. A
    failure that ended in the future instead was raised again by every later lookup, until a
    restart. (Only a BaseException that is no Exception ends the future with it.)

    Daemon: the work only reads, so there is nothing to finish when the process exits.
    """
    future: StartRead[T] = StartRead()

    def run() -> None:
        delay, tries = RETRY_FIRST, 1
        while True:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - said, and tried again
                log.error(
                    "cache: %s failed (%s: %s); served from disk meanwhile, tried again in %g s",
                    what,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                _ended(future.first_try)
                time.sleep(delay)
                delay, tries = min(delay * 2, RETRY_LONGEST), tries + 1
                continue
            except BaseException as exc:
                log.error("cache: %s failed: %s", what, exc)
                future.set_exception(exc)
                _ended(future.first_try)
                return
            if tries > 1:
                log.info("cache: %s done at try %d", what, tries)
            future.set_result(result)
            _ended(future.first_try)
            return

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _ended(first_try: Future[None]) -> None:
    if not first_try.done():
        first_try.set_result(None)


async def waited_off_loop(future: Future[Any]) -> None:
    """Wait, without blocking the loop, until ``future`` (of :func:`read_in_thread`) is done;
    its result or error is the caller's to take from ``future`` itself.

    Waited on, not awaited: a waiter cancelled (the start's cap check, as the loop closes)
    would else cancel the read itself, and its thread fail to set the result. The asyncio copy
    waited on has its error taken here, even after its waiter was cancelled: else every failed
    read left a "Future exception was never retrieved" ERROR behind."""
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(_taken)
    await asyncio.wait([wrapped])


def _taken(wrapped: asyncio.Future[Any]) -> None:
    if not wrapped.cancelled():
        wrapped.exception()  # retrieved: the caller takes it from the thread's future
