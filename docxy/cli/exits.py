"""The exit codes the ``docxy`` commands share: 0 done; 1 ran but did not do what was asked
(a command may give its 1 a name of its own: ``docxy cache``'s not found, ``docxy health``'s
unhealthy); 2 a configuration or usage error (argparse's own code for bad usage; but
``docxy health`` says a config error and exits 1, as Docker reserves a HEALTHCHECK's 2); 130
interrupted (Ctrl-C: the shell's own code for a command ended by SIGINT), and 128 + N for
another signal N a command stops at (143 for SIGTERM, see :func:`cancelled_by_signals`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def exit_code(signum: int) -> int:
    """The shell's code for a command ended by signal ``signum``: ``128 + signum``."""
    return 128 + signum


@contextlib.contextmanager
def cancelled_by_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[list[signal.Signals]]:
    """Within it, the first of ``signals`` cancels the running task, which can then say what
    it did before it ends (with :func:`exit_code`); the list yielded holds the signals caught.
    A second raises KeyboardInterrupt, as ``asyncio.run`` does for a second Ctrl-C. SIGTERM's
    default ends the process on the spot, with no word of what was done. Outside the main
    thread, where handlers cannot be set, nothing changes."""
    caught: list[signal.Signals] = []
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        yield caught
        return
    loop = asyncio.get_running_loop()
    live = True

    def cancel() -> None:
        if live:  # not once the block is left: the work ended meanwhile, whole
            task.cancel()

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum))
        if len(caught) > 1:
            raise KeyboardInterrupt
        loop.call_soon_threadsafe(cancel)

    previous = {each: signal.signal(each, handler) for each in signals}
    try:
        yield caught
    finally:
        live = False
        for each, before in previous.items():
            signal.signal(each, signal.SIG_DFL if before is None else before)
