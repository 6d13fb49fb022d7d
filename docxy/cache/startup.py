"""Reading a large cache directory at start without holding up the event loop.

The stores start serving at once and take over what a worker thread read once it is done;
until then they answer from disk directly and note what changes, as each store's docs say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

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
