"""Named, owned background tasks: every task has a name and a reference until it finishes.

:class:`Coalesced` runs one such task per key for any number of callers waiting for the same
answer (the mirror's upstream tokens, the upstream's ``/v2/`` probe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


def spawn(name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start ``coro`` as a task called ``name``; keep it referenced and log if it crashes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=exc)


async def cancel_all() -> None:
    tasks = list(_running)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class Coalesced(Generic[K, T]):
    """At most one task per key: the first caller starts ``work()`` as a named task, callers
    arriving meanwhile wait for the same result. Each waiter is shielded, so a caller going
    away cancels only its own wait. An ``expected`` exception reaches every waiter (returned by
    the task, so it is not logged as a crash) and is forgotten with the task: the next caller
    starts again."""

    def __init__(self, expected: type[BaseException] | tuple[type[BaseException], ...]) -> None:
        self._expected = expected
        self._running: dict[K, asyncio.Task[T | _Failed]] = {}
        #: Callers that waited for another's task instead of starting their own.
        self.joined = 0

    def running(self, key: K) -> bool:
        """Whether a task for ``key`` is running: a caller of :meth:`share` now would join it."""
        return key in self._running

    async def run(self, key: K, name: str, work: Callable[[], Awaitable[T]]) -> T:
        result, _ = await self.share(key, name, work)
        return result

    async def share(self, key: K, name: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """:meth:`run`, and whether this caller joined a task another caller started (so that
        it can say it cost the upstream nothing of its own)."""
        task = self._running.get(key)
        joined = task is not None
        if task is None:
            task = self._running[key] = spawn(name, self._one(key, work))
        else:
            self.joined += 1
        result = await asyncio.shield(task)
        if isinstance(result, _Failed):
            raise result.error
        return result, joined

    async def _one(self, key: K, work: Callable[[], Awaitable[T]]) -> T | _Failed:
        try:
            return await work()
        except self._expected as exc:
            return _Failed(exc)
        finally:
            del self._running[key]
