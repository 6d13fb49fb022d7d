"""The heap is trimmed once the mirror is at rest, never while a request is in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from docxy.http.rest import TrimAtRest
from tests.unit.asgi import call_asgi


class App:
    """Answers 200; a request to /hold waits until :attr:`release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/hold":
            self.holding.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def layer(app: App, delay: float = 3600.0) -> tuple[TrimAtRest, asyncio.Event]:
    trimmed = asyncio.Event()
    return TrimAtRest(app, delay=delay, trim=trimmed.set), trimmed


async def test_a_trim_waits_for_the_rest_after_the_last_request() -> None:
    rest, trimmed = layer(App(), delay=0.0)

    answer = await call_asgi(rest, "GET", "/v2/", host="mirror")

    assert answer.status == 200
    assert rest.pending is not None  # armed when the last request ended
    await asyncio.wait_for(trimmed.wait(), timeout=10)
    assert rest.pending is None


async def test_no_trim_is_pending_while_a_request_is_in_flight() -> None:
    app = App()
    rest, _ = layer(app)
    rest.arm()  # as at start
    at_start = rest.pending
    assert at_start is not None

    request = call_asgi(rest, "GET", "/hold", host="mirror")
    held = asyncio.get_running_loop().create_task(request)  # noqa: TID251 - the test owns it
    await app.holding.wait()

    assert at_start.cancelled()
    assert rest.pending is None
    assert rest.in_flight == 1
    await call_asgi(rest, "GET", "/v2/", host="mirror")  # ends while /hold still runs
    assert rest.pending is None
    app.release.set()
    assert (await held).status == 200
    assert rest.in_flight == 0
    assert rest.pending is not None and not rest.pending.cancelled()
    rest.disarm()


async def test_a_request_that_fails_still_ends_its_count() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the app failed")

    rest = TrimAtRest(broken, delay=3600.0, trim=lambda: None)
    scope = {"type": "http", "path": "/v2/"}
    try:
        await rest(scope, None, None)  # type: ignore[arg-type]
    except RuntimeError:
        pass
    assert rest.in_flight == 0
    assert rest.pending is not None
    rest.disarm()


async def test_lifespan_messages_are_not_requests() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    rest = TrimAtRest(app, delay=3600.0, trim=lambda: None)
    await rest({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    assert rest.pending is None and rest.in_flight == 0
