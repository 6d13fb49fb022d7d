"""Blocking work in a thread of its own, awaited as a future on the event loop.

The default executor has a handful of workers shared by every ``to_thread`` (file reads of
every client): a cache fill that reads its upstream for minutes must not hold one of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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


def within(seconds: float, name: str, work: Callable[[], T]) -> T:
    """``work()``, run in a new daemon thread called ``name`` and waited for (blocking) up to
    ``seconds``; :class:`TimeoutError` after that. For a call that cannot be interrupted (a
    name lookup): it goes on in its thread after the timeout, its result dropped."""
    done = concurrent.futures.Future[T]()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return done.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{name}: not done within {seconds:g}s") from None


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def soon_on(loop: asyncio.AbstractEventLoop | None, call: Callable[[], object]) -> None:
    """Run ``call`` on ``loop`` as soon as it can, never now: from another thread, or from a
    finalizer that may run in a thread holding a lock ``call`` takes. Nothing when there is no
    loop or it is closed: nobody is left to serve."""
    if loop is None:
        return
    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:  # closed
        pass


def on_loop(loop: asyncio.AbstractEventLoop | None, call: Callable[[], None]) -> None:
    """Run ``call`` on ``loop`` at its next turn (``call_soon_threadsafe``), also from the loop's
    own thread; now only if it runs no more (or is None). For finalizers, which the garbage
    collector may run in any thread that allocates while a collection is due: what they undo
    (a store's state, a fill's followers) lives on the loop. Never now on the loop's thread
    either: a finalizer runs inside whatever that thread was doing, such as
    ``ThreadPoolExecutor.submit`` holding the executor's lock (not reentrant), which a close
    handed to a worker thread takes again: the loop hung for good."""
    if loop is not None and loop.is_running():
        try:
            loop.call_soon_threadsafe(call)
            return
        except RuntimeError:  # closed meanwhile
            pass
    call()
