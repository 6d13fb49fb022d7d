"""ASGI layer: the heap handed back to the system once the mirror is at rest.

``docxy.heap.tune_malloc`` fixes glibc's trim threshold at 16 MiB and keeps chunk buffers under
8 MiB on the heap, for speed while blobs move. At rest that costs: the freed buffers of the last
pulls stay resident (measured: a mirror at 51 MiB USS after start sat at 79 MiB after a few
pulls; one ``malloc_trim`` gave 20 MiB of it back). So once no request has been in flight for
:data:`REST_DELAY` seconds, and once after start (the garbage of the imports: 4 MiB), the heap
is trimmed. A request that starts meanwhile cancels the pending trim; the request path pays a
counter and, when the last request ends, one timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from docxy.heap import malloc_trim

#: Seconds without a request in flight before the heap is trimmed.
REST_DELAY = 5.0


class TrimAtRest:
    """Wraps the mirror's ASGI app; :meth:`arm` once serving, then every request counts."""

    def __init__(
        self,
        app: ASGIFramework,
        *,
        delay: float = REST_DELAY,
        trim: Callable[[], object] = malloc_trim,
    ) -> None:
        self.app = app
        self.delay = delay
        self.trim = trim
        self.in_flight = 0
        #: The trim waiting for the rest to last; None while requests run or once it ran.
        self.pending: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """Trim after ``delay`` unless a request starts first (at start, and after each burst)."""
        self.disarm()
        self.pending = asyncio.get_running_loop().call_later(self.delay, self._at_rest)

    def disarm(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    def _at_rest(self) -> None:
        self.pending = None
        self.trim()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        self.disarm()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.arm()
