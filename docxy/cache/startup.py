"""Reading a large cache directory at start without holding up the event loop.

The stores start serving at once and take over what a worker thread read once it is done;
until then they answer from disk directly and note what changes, as each store's docs say.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def read_in_thread(name: str, work: Callable[[], T]) -> Future[T]:
    """Run ``work`` in a daemon thread called ``name``; its result (or error) in the future.

    Daemon: the work only reads, so there is nothing to finish when the process exits.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            log.error("cache: %s failed: %s", name, exc)
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


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
