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
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


#: After a read at start failed (:class:`StartRead`), its first use this many seconds later
#: reads again; twice as long after each failure in a row, up to :data:`RETRY_LONGEST`. A
#: failure was for ever before (every lookup raised it until a restart); a disk that keeps
#: failing is not read again and again meanwhile.
RETRY_FIRST = 5.0
RETRY_LONGEST = 60.0


def read_in_thread(name: str, work: Callable[[], T]) -> Future[T]:
    """Run ``work`` in a daemon thread called ``name``; its result (or error) in the future.

    Daemon: the work only reads, so there is nothing to finish when the process exits.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class StartRead(Generic[T]):
    """A store's read at start (``what`` it reads, for the log), run by ``work`` in a worker
    thread (:func:`read_in_thread`); tried again, lazily, after a failure.

    A try that fails is said in one ERROR (what, why, when it is tried again), and stays
    failed: :meth:`result` raises its error, as before, at once. But not for ever: the first
    :meth:`result` :data:`RETRY_FIRST` seconds or more after the failure (growing to
    :data:`RETRY_LONGEST` with each failure in a row) starts a fresh try, the failed one
    dropped, and still raises the old error (the caller does not wait for the new read). The
    fresh try is then in flight as the first one was at start: :meth:`done` is False and the
    stores serve from disk meanwhile; :meth:`result` raises the old error at once rather than
    block through it (a first try is waited for, as ever). ``fresh`` is called on the loop
    before a fresh try starts: what the store noted for the failed read (its journal of
    changes) is dropped, for the fresh read sees the disk as it is then. One INFO when a try
    after a failure succeeds."""

    def __init__(
        self,
        name: str,
        what: str,
        work: Callable[[], T],
        *,
        fresh: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.what, self._work, self._fresh, self._clock = name, what, work, fresh, clock
        self._callbacks: list[Callable[[Future[T]], object]] = []
        self._failures = 0  # in a row
        self._due = 0.0  # when the failed try may be tried again
        self._error: BaseException | None = None  # the last failed try's
        self.future = self._start()

    def _start(self) -> Future[T]:
        future = read_in_thread(self.name, self._work)
        future.add_done_callback(self._ended)
        for callback in self._callbacks:
            future.add_done_callback(callback)
        return future

    def _ended(self, future: Future[T]) -> None:
        """In the worker thread (before the other callbacks): say how the try ended."""
        error = future.exception()
        if error is None:
            if self._failures:
                log.info("cache: %s succeeded after %d failed tries", self.what, self._failures)
            self._failures, self._error = 0, None
            return
        pause = min(RETRY_FIRST * 2**self._failures, RETRY_LONGEST)
        self._failures += 1
        self._due = self._clock() + pause
        self._error = error
        log.error(
            "cache: %s failed (%s: %s); tried again at its first use %g s from now",
            self.what,
            type(error).__name__,
            error,
            pause,
        )

    def add_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        """Call ``callback`` with each try's future once that try ended (in its thread)."""
        self._callbacks.append(callback)
        self.future.add_done_callback(callback)

    def done(self) -> bool:
        """Whether the current try ended (a fresh try after a failure: not until it did)."""
        return self.future.done()

    def failed(self) -> bool:
        """Whether the current try failed (not tried again yet)."""
        future = self.future
        return future.done() and future.exception() is not None

    def result(self) -> T:
        """The read's result; a failed try's error (a fresh try started if it is due); while a
        fresh try is in flight, the failed one's error at once. A first try is waited for
        (blocking): see :func:`waited_off_loop` to wait without blocking the loop."""
        future, error = self.future, self._error
        if error is not None and not future.done():
            raise error  # a fresh try in flight: not waited for
        try:
            return future.result()
        except BaseException:
            if self._error is not None and self._clock() >= self._due:
                self._fresh()
                self.future = self._start()
            raise


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
