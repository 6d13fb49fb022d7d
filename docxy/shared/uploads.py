"""The shared tier's upload queue: bounded in waiting items and in uploads at once.

``offer(digest)`` queues a blob unless it is already waiting or being uploaded, or the queue is
full (then it is dropped and counted: another replica, or the next fill, will upload it); the tier
drops what waits when the store fails (:meth:`UploadQueue.drop_waiting`). At most
``concurrency`` worker tasks run; each takes items until the queue is empty, then ends.
A queue of ``concurrency`` 0 takes nothing (a read-only replica, ``shared.uploads = 0``): an
offer is refused, not counted as dropped. Nothing here is on a client's path: ``offer`` never
waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from docxy.core.digests import Digest
from docxy.tasks import spawn

#: Blobs waiting for an upload; past that, new ones are dropped.
MAX_WAITING = 256


class UploadQueue:
    def __init__(
        self,
        upload: Callable[[Digest], Awaitable[None]],
        concurrency: int,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        if concurrency < 0 or max_waiting < 1:
            raise ValueError("an upload queue needs room for one waiting upload at least")
        self._upload = upload
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._waiting: deque[Digest] = deque()
        self._busy: set[Digest] = set()  # waiting or being uploaded
        self._workers: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self._cancelled = False  # shutdown: no upload starts from now on

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Uploads under way now (workers alive)."""
        return len(self._workers)

    def offer(self, digest: Digest) -> bool:
        """Queue ``digest``; False when it is queued already, the queue is full, or it was
        cancelled (a fill whose commit ends during the stop: its client is being closed), or
        it takes none (``concurrency`` 0: nothing is dropped, as nothing is meant to go)."""
        if digest in self._busy or self._cancelled or self.concurrency == 0:
            return False
        if len(self._waiting) >= self.max_waiting:
            self.dropped += 1
            return False
        self._waiting.append(digest)
        self._busy.add(digest)
        if len(self._workers) < self.concurrency:
            worker = spawn(f"shared-upload-{len(self._workers)}", self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return True

    async def _work(self) -> None:
        while self._waiting:
            digest = self._waiting.popleft()
            try:
                await self._upload(digest)  # reports its own failures
            finally:
                self._busy.discard(digest)
        # Leave the set now, with no await since the queue was seen empty: an offer made from
        # here on starts a worker of its own instead of counting on this one.
        self._workers.discard(asyncio.current_task())

    def drop_waiting(self) -> int:
        """Forget the blobs waiting (uploads running go on), counted as dropped; how many."""
        count = len(self._waiting)
        self._busy.difference_update(self._waiting)
        self._waiting.clear()
        self.dropped += count
        return count

    def cancel(self) -> None:
        """Stop every upload now (shutdown); what waited is forgotten, and what is offered
        later is not taken."""
        self._cancelled = True
        self._waiting.clear()
        self._busy.clear()
        for worker in list(self._workers):
            worker.cancel()

    async def drained(self) -> None:
        """Wait until no upload waits or runs (tests; shutdown cancels instead); bounded by the work
        queued."""
        while self._workers:
            await asyncio.wait(list(self._workers))
