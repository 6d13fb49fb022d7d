"""The stop's cut (``docxy.http.drain``): a real Quart app called as hypercorn calls it.

Quart runs each handler in a task of its own; the cut must reach it (its ``finally`` runs, no
task is left behind) and then answer what was not answered. The e2e test
(``tests/e2e/test_stop_drain_e2e.py``) does the same through the real server, SIGTERM and a
cache fill.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from quart import Quart, Response

from docxy.http.drain import RETRY_AFTER, Drain
from docxy.http.middleware import AccessLog
from tests.unit.asgi import AsgiAnswer, call_asgi

HOST = "mirror.example.com"
GUARD = 5.0  # seconds: a cut that never comes fails the test instead of hanging it
FIRST = b"first bytes of the body"


class Stalled:
    """A Quart app whose handlers stall until cancelled, noting that they were."""

    def __init__(self) -> None:
        self.app = Quart(__name__)
        self.running = asyncio.Event()
        self.unwound: list[str] = []
        self.app.add_url_rule("/unanswered", "unanswered", self.unanswered)
        self.app.add_url_rule("/streaming", "streaming", self.streaming)
        self.app.add_url_rule("/quick", "quick", self.quick)

    async def unanswered(self) -> str:
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.unwound.append("unanswered")
        return "never"

    async def streaming(self) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield FIRST
                self.running.set()
                await asyncio.Event().wait()
                yield b"never"
            finally:
                self.unwound.append("streaming")

        response = Response(body(), headers={"Content-Length": "1000"})
        response.timeout = None
        return response

    async def quick(self) -> str:
        self.running.set()
        return "quick"


async def cut_while_running(
    path: str, *, log: bool = False, headers: tuple[tuple[str, str], ...] = ()
) -> tuple[Stalled, AsgiAnswer]:
    stalled = Stalled()
    drain = Drain(stalled.app)
    app = AccessLog(drain) if log else drain
    call: asyncio.Future[AsgiAnswer] = asyncio.get_running_loop().create_future()

    async def request() -> None:
        call.set_result(await call_asgi(app, "GET", path, host=HOST, headers=headers))

    async with asyncio.timeout(GUARD), asyncio.TaskGroup() as group:
        group.create_task(request())
        await stalled.running.wait()
        drain.stop(0)
    return stalled, call.result()


async def test_a_request_not_answered_yet_gets_503_and_its_handler_is_cancelled() -> None:
    stalled, answer = await cut_while_running("/unanswered")
    assert stalled.unwound == ["unanswered"]  # Quart's handler task got the cut, not orphaned
    assert answer.status == 503 and answer.complete, answer
    assert answer.headers["Retry-After"] == str(RETRY_AFTER)
    assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    (error,) = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAVAILABLE" and "shutting down" in error["message"]
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert [t for t in left if "handle_request" in repr(t)] == []


async def test_a_streaming_body_is_cut_short_never_finished() -> None:
    stalled, answer = await cut_while_running("/streaming")
    assert stalled.unwound == ["streaming"]  # the body's generator was closed
    assert answer.status == 200, answer
    assert answer.body == FIRST
    assert not answer.complete


async def test_a_request_that_ends_in_the_drain_is_untouched() -> None:
    stalled = Stalled()
    drain = Drain(stalled.app)
    drain.stop(GUARD)  # stopping, but the drain is not over
    async with asyncio.timeout(GUARD):
        answer = await call_asgi(drain, "GET", "/quick", host=HOST)
    assert (answer.status, answer.body, answer.complete) == (200, b"quick", True)
    # The wait for the client's next message is given up with the request, not left behind.
    waits = [t for t in asyncio.all_tasks() if t.get_name() == "request-receive"]
    assert all(t.done() or t.cancelling() for t in waits), waits


async def test_the_access_log_says_stopped_once_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Bearer SECRET-TOKEN-OF-THE-CLIENT"
    await cut_while_running(
        "/unanswered?token=QUERY-SECRET", log=True, headers=(("Authorization", secret),)
    )
    access = [r for r in caplog.records if r.name == "docxy.access"]
    (line,) = [r.getMessage() for r in access]
    assert line.startswith("GET /unanswered 503 ") and line.endswith(" stopped"), line
    assert "total=" in line
    assert all(r.exc_info is None for r in caplog.records)
    assert "SECRET" not in caplog.text
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cutting the 1 request(s)" in warning.getMessage()
