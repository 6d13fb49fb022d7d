"""Review of the pull path (docxy/pull, docxy/edge/fills): faults a user or an abuser hits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import TooManyRequests
from docxy.edge.fills import CLIENT, EXEMPT, FillPermits
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_fills import BLOBS, D1, D2, Held, capped_mirror
from tests.unit.turns import until


class FailingFill:
    """An upstream whose first GET of D1 (the mirror's fill) is answered 503 once ``fail`` is
    set (a 404 would be its word on the blob, relayed to the fill's clients, none passed
    through); every later GET of D1 (a pass-through) gets the blob. D2's body flows once
    ``flowing`` is set. ``asked`` lists the blob GETs as they come."""

    def __init__(self) -> None:
        self.fail, self.flowing = asyncio.Event(), asyncio.Event()
        self.asked: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}")
        digest = request.url.path.rpartition("/")[2]
        self.asked.append(digest)
        if digest == D1 and self.asked.count(D1) == 1:
            await self.fail.wait()
            return fakes.reply(503, b'{"errors": []}')
        headers = {"Content-Length": str(len(BLOBS[digest]))}
        gate = self.flowing if digest == D2 else asyncio.Event()
        if digest != D2:
            gate.set()
        return httpx.Response(200, headers=headers, stream=Held(gate, BLOBS[digest]))


async def test_joining_a_fill_that_passes_through_keeps_the_per_client_cap(
    tmp_path: Path,
) -> None:
    """Client ``a`` (``limits.fills_per_client`` 1) has a fill of its own running and joins
    another client's fill of another blob (free); that fill fails and passes through. The
    joined request had never been counted against ``a``'s cap, yet its pass-through waited
    for a permit without the per-client check: ``a`` had two upstream downloads at once (and
    as many more as it joined). It is refused as a new fill of ``a``'s would be."""
    upstream = FailingFill()
    app = capped_mirror(tmp_path, upstream, per_client=1, total=0)  # type: ignore[arg-type]

    async def get(client: str, digest: str) -> AsgiAnswer:
        CLIENT.set(client)
        return await call_asgi(app, "GET", f"/v2/team/app/blobs/{digest}", host="mirror.test")

    async with app.test_app(), asyncio.TaskGroup() as tasks:
        permits = mirror_state(app).running.blobs.permits
        started = tasks.create_task(get("b", D1))  # b starts D1's fill, held upstream
        await until(lambda: D1 in upstream.asked)
        own = tasks.create_task(get("a", D2))  # a's own fill, running
        await until(lambda: D2 in upstream.asked)
        assert permits.running == {"a": 1, "b": 1}
        joined = tasks.create_task(get("a", D1))  # a joins b's fill: free
        await asyncio.sleep(0.05)
        upstream.fail.set()  # D1's fill fails: both its clients pass through
        b_answer, a_answer = await started, await joined
        upstream.flowing.set()
        assert (await own).body == BLOBS[D2]
    assert (b_answer.status, b_answer.body) == (200, BLOBS[D1])  # b started it: let in
    assert a_answer.status == 429 and b"too many downloads" in a_answer.body
    assert upstream.asked.count(D1) == 2  # the fill's, b's pass-through; none for a
    assert not permits.running


async def test_a_download_waiting_under_the_per_client_cap_counts_as_the_clients() -> None:
    """``wait(capped=True)`` refuses a client at its cap, counting the downloads it has waiting
    as well as running ones (else any number could queue up behind a full ``fills_total``);
    an exempt client is not capped; the plain ``wait`` stays uncapped."""
    permits = FillPermits(per_client=1, total=1)
    CLIENT.set("other")
    held = permits.acquire()
    CLIENT.set("a")
    first = spawn("first", permits.wait(capped=True))
    await asyncio.sleep(0)
    assert permits.waiting == 1
    with pytest.raises(TooManyRequests, match="too many downloads"):
        await permits.wait(capped=True)
    CLIENT.set(EXEMPT)
    exempt = spawn("exempt", permits.wait(capped=True))
    CLIENT.set("a")
    uncapped = spawn("uncapped", permits.wait())
    await asyncio.sleep(0)
    assert permits.waiting == 3
    held()
    (await first)()
    (await exempt)()
    (await uncapped)()
    assert not permits.running and permits.waiting == 0
