"""docxy.threads: finalizers that hand work to the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from docxy.threads import on_loop

DEADLOCK = 10.0  # seconds: far above what the loop below takes, bounds a hang


def test_a_finalizer_run_inside_the_executors_lock_on_the_loop_thread_does_not_deadlock() -> None:
    """A reader's finalizer (``weakref.finalize(..., on_loop, loop, close)``) runs whenever the
    garbage collector does, in whatever the loop thread was doing: seen in the full test run,
    inside ``ThreadPoolExecutor.submit`` (a new worker thread's allocation), which holds the
    executor's lock; the close it ran there submitted to the same executor, whose lock is not
    reentrant, and the event loop hung for good. ``on_loop`` on the loop's own thread now runs
    the call at the loop's next turn, outside whatever lock the finalizer interrupted."""
    outcome: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1)
        loop.set_default_executor(executor)
        closed = asyncio.Event()

        def close() -> None:  # as BlobFile.close: a close handed to a worker thread
            loop.run_in_executor(None, lambda: None).add_done_callback(lambda _: closed.set())

        with executor._shutdown_lock:  # where the collector ran the finalizer
            on_loop(loop, close)
        await asyncio.wait_for(closed.wait(), DEADLOCK)
        outcome.append("closed")

    runner = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    runner.start()
    runner.join(DEADLOCK)
    assert outcome == ["closed"], "the loop thread deadlocked in the finalizer's close"


def test_without_a_running_loop_the_call_runs_now() -> None:
    """No loop to hand it to (the server stopped, or none): run at once, as before."""
    ran: list[int] = []
    on_loop(None, lambda: ran.append(1))
    loop = asyncio.new_event_loop()
    on_loop(loop, lambda: ran.append(2))  # not running
    loop.close()
    on_loop(loop, lambda: ran.append(3))  # closed
    assert ran == [1, 2, 3]
