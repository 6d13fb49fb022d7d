"""The mirror's stop: requests still running when the drain ends get an answer, not a 500.

On SIGTERM hypercorn stops accepting, lets its connections finish for ``graceful_timeout``
and then cancels the ones left. Measured before this layer: a request cancelled there before
its answer started got hypercorn's own bodiless ``500``, and Quart's handler, which runs in a
task of its own that the cancellation never reaches (``quart.asgi.ASGIHTTPConnection``), ran
on, orphaned, into the closed upstream client: an ``unexpected error`` traceback, then
asyncio's "Task exception was never retrieved" for each such request.

:class:`Drain` ends them itself, :data:`CUT_MARGIN` seconds before hypercorn would, the way
Quart ends a request whose client went away: each request still running is told
``http.disconnect``, and Quart cancels its handler and closes its body (an upstream answer
closed, a cache fill aborted: its temp file removed, nothing visible). Then

- a request not yet answered gets ``503 UNAVAILABLE`` with ``Retry-After``
  (:class:`ShuttingDown`): a client retries, and another replica (or this one restarted)
  answers;
- a body already streaming stays cut: its ``Content-Length`` or chunked framing unfinished,
  the connection closed, so the client sees a broken download, never a short success.

Either way the access log's one line for the request ends in ``stopped`` (``docxy.http.
middleware.AccessLog``: method, path, status, bytes, how long it ran); the stop logs one
WARNING with how many requests it cut, a fill given up its usual INFO line; no traceback.

Only the app's requests are cut here: connections idle or still sending a request head are
closed by hypercorn as soon as the stop begins (measured), so none is left for its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from docxy.core.errors import MirrorUnavailable
from docxy.edge.replies import send_error
from docxy.http.middleware import STOPPED
from docxy.tasks import spawn

log = logging.getLogger(__name__)

#: How long before hypercorn's own deadline (``graceful_timeout``) the requests left are cut:
#: time for their handlers to unwind (a fill's temp file removed) and the 503s to go out.
CUT_MARGIN = 1.0
#: What a 503 of the stop tells the client to wait: a restart's time, about.
RETRY_AFTER = 10

_DISCONNECT: ASGIReceiveEvent = {"type": "http.disconnect"}


class ShuttingDown(MirrorUnavailable):
    """503 UNAVAILABLE: the mirror stopped before it could answer; ``Retry-After`` says when
    to ask again."""

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("Retry-After", str(RETRY_AFTER))]


class Drain:
    """Cuts the requests still running when :meth:`stop`'s time is up (see the module)."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app
        self.running = 0
        self._cut: asyncio.Future[None] | None = None

    def stop(self, after: float) -> None:
        """The mirror is stopping: cut what still runs ``after`` seconds from now."""
        self._cut_future()
        asyncio.get_running_loop().call_later(max(after, 0.0), self._cut_now)

    def _cut_now(self) -> None:
        if self._cut is None or self._cut.done():
            return
        if self.running:
            log.warning(
                "stopping: the drain is over, cutting the %d request(s) still running "
                "(503 if not answered yet)",
                self.running,
            )
        self._cut.set_result(None)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":  # the lifespan; a WebSocket upgrade is refused at once
            await self.app(scope, receive, send)
            return
        cut = False
        started = ended = False

        async def drained() -> ASGIReceiveEvent:
            nonlocal cut
            message = await self._receive(receive)
            if message is None:
                cut = True
                return _DISCONNECT
            return message

        async def tracking_send(message: ASGISendEvent) -> None:
            nonlocal started, ended
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body":
                ended = not message.get("more_body", False)
            await send(message)

        self.running += 1
        try:
            await self.app(scope, drained, tracking_send)
        finally:
            self.running -= 1
        if not cut or ended:
            return
        facts: Any = scope.get("docxy")
        if isinstance(facts, dict):
            facts[STOPPED] = True
        if not started:
            error = ShuttingDown("the mirror is shutting down; try again shortly")
            await send_error(send, error, [("Connection", "close")])

    def _cut_future(self) -> asyncio.Future[None]:
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
        return self._cut

    async def _receive(self, receive: ASGIReceiveCallable) -> ASGIReceiveEvent | None:
        """The client's next message, or None once the stop has cut the request."""
        cut = self._cut_future()
        if cut.done():
            return None
        got = spawn("request-receive", _next(receive))
        try:
            await asyncio.wait((got, cut), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not got.done():
                got.cancel()  # the stop came first, or the request is over
        if got.done() and not got.cancelled():
            message: ASGIReceiveEvent = got.result()
            return message
        return None


async def _next(receive: ASGIReceiveCallable) -> ASGIReceiveEvent:
    return await receive()
