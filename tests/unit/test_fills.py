"""Caps on concurrent upstream fills, per client and overall, in the request path."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.core.errors import TooManyRequests
from docxy.edge.fills import CLIENT, FillPermits
from docxy.http.app import create_app
from docxy.http.middleware import AccessLog, Guard
from docxy.http.responses import relay
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_cache_blobs import HeldSync

BLOBS = {
    f"sha256:{hashlib.sha256(data).hexdigest()}": data for data in (b"a" * 70000, b"b" * 9, b"c")
}
D1, D2, D3 = BLOBS


def test_permits_count_per_client_and_overall() -> None:
    contextvars.copy_context().run(count_permits)  # the client names stay in this test


def count_permits() -> None:
    permits = FillPermits(per_client=1, total=2)
    CLIENT.set("a")
    release_a = permits.acquire()
    with pytest.raises(TooManyRequests, match="too many downloads"):
        permits.acquire()
    CLIENT.set("b")
    permits.acquire()
    CLIENT.set("c")
    with pytest.raises(TooManyRequests, match="as much as it may"):
        permits.acquire()
    release_a()
    release_a()  # twice is once
    permits.acquire()
    assert permits.running == {"b": 1, "c": 1}
    assert permits.refused == 2


async def test_a_download_that_may_not_be_refused_waits_for_a_permit_in_turn() -> None:
    """``wait`` (the rest of a blob a client has the start of) counts towards ``fills_total``
    like a fill, but waits instead of a 429: each freed permit goes to the longest waiting,
    never to a new fill first; a waiter that leaves takes none, and one handed a permit as
    it leaves gives it on. The per-client cap does not hold it back."""
    permits = FillPermits(per_client=1, total=1)
    fill = permits.acquire()
    first, second, leaving = (spawn(f"wait {n}", permits.wait()) for n in range(3))
    await asyncio.sleep(0)
    assert permits.waiting == 3 and not first.done()
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert permits.waiting == 2
    fill()
    with pytest.raises(TooManyRequests, match="as much as it may"):
        permits.acquire()  # the freed permit went to the first waiting, not to a new fill
    release_first = await first
    assert permits.running == {"unknown": 1} and permits.waiting == 1
    release_first()
    release_second = await second
    assert permits.running == {"unknown": 1} and permits.waiting == 0
    release_second()
    assert not permits.running
    assert await permits.wait() is not None and permits.running == {"unknown": 1}  # free: at once

    handed = FillPermits(total=1)
    held = handed.acquire()
    late = spawn("late", handed.wait())
    await asyncio.sleep(0)
    held()  # handed to ``late``, which is cancelled before it runs again
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert not handed.running and handed.waiting == 0


class Held(fakes.Body):
    """A blob body that flows only once the test lets it."""

    def __init__(self, gate: asyncio.Event, data: bytes) -> None:
        super().__init__(data)
        self.gate = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.gate.wait()
        for chunk in self.chunks:
            yield chunk


class HeldUpstream:
    """A token upstream whose blob bodies flow once ``flowing`` is set; ``fetched`` lists the
    blob GETs, ``asked`` is set at each."""

    def __init__(self) -> None:
        self.flowing, self.asked = asyncio.Event(), asyncio.Event()
        self.fetched: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return fakes.reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})
        if request.url.path == "/v2/":
            challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'
            return fakes.reply(401, b"{}", {"WWW-Authenticate": challenge})
        digest = request.url.path.rpartition("/")[2]
        self.fetched.append(digest)
        self.asked.set()
        headers = {"Content-Length": str(len(BLOBS[digest]))}
        return httpx.Response(200, headers=headers, stream=Held(self.flowing, BLOBS[digest]))


def capped_mirror(tmp_path: Path, upstream: HeldUpstream, *, per_client: int, total: int) -> Quart:
    settings = {
        "upstream.registry": "https://registry.test",
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
        "limits.fills_per_client": str(per_client),
        "limits.fills_total": str(total),
    }
    return create_app(
        load_config(settings, environ={}), probe=False, transport=httpx.MockTransport(upstream)
    )


async def test_over_the_caps_a_new_fill_is_429_and_joining_is_free(tmp_path: Path) -> None:
    upstream = HeldUpstream()
    app = capped_mirror(tmp_path, upstream, per_client=1, total=2)
    flowing, fetched, asked = upstream.flowing, upstream.fetched, upstream.asked

    async def get(client: str, digest: str) -> AsgiAnswer:
        CLIENT.set(client)  # as the gate does; each task has its own context
        return await call_asgi(app, "GET", f"/v2/team/app/blobs/{digest}", host="mirror.test")

    async def upstream_asked(count: int) -> None:
        while len(fetched) < count:
            asked.clear()
            await asked.wait()

    async with app.test_app(), asyncio.TaskGroup() as tasks:
        first = tasks.create_task(get("a", D1))
        await upstream_asked(1)
        refused = await get("a", D2)
        assert refused.status == 429
        assert b"TOOMANYREQUESTS" in refused.body and refused.headers["Retry-After"] == "10"
        joined = tasks.create_task(get("a", D1))  # the same blob: joins the running fill
        other = tasks.create_task(get("b", D2))
        await upstream_asked(2)
        overall = await get("c", D3)
        assert overall.status == 429 and b"as much as it may" in overall.body
        flowing.set()
        answers = [await first, await joined, await other]
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.body for a in answers] == [BLOBS[D1], BLOBS[D1], BLOBS[D2]]
    assert fetched == [D1, D2]  # one fetch per blob; the refused ones never went upstream
    assert not mirror_state(app).running.blobs.permits.running  # every permit given back


async def test_a_fills_permit_is_given_back_once_its_blob_verifies_not_after_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit's sync of a big blob takes seconds after the client's last byte: the client's
    next layer is not refused meanwhile (``limits.fills_per_client`` 1)."""
    held_sync = HeldSync(monkeypatch)

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}")
        digest = request.url.path.rpartition("/")[2]
        return fakes.reply(200, BLOBS[digest], {"Content-Length": str(len(BLOBS[digest]))})

    settings = {
        "upstream.registry": "https://registry.test",
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
        "limits.fills_per_client": "1",
    }
    app = create_app(
        load_config(settings, environ={}), probe=False, transport=httpx.MockTransport(upstream)
    )
    CLIENT.set("a")
    try:
        async with app.test_app():
            first = await call_asgi(app, "GET", f"/v2/team/app/blobs/{D1}", host="mirror.test")
            assert (first.status, first.body) == (200, BLOBS[D1])
            assert held_sync.started.wait(5)  # D1's commit still syncs
            second = await call_asgi(app, "GET", f"/v2/team/app/blobs/{D2}", host="mirror.test")
            assert (second.status, second.body) == (200, BLOBS[D2])
            held_sync.release()
    finally:
        held_sync.release()


async def test_a_blob_passed_through_is_an_upstream_download_under_the_caps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A GET of a blob not cached with a ``Range`` header (any: an upstream that ignores it
    sends the whole blob) is passed through, uncached: it took no permit, so adding one got
    round both caps, as often as wanted. A refusal is logged as a fill's is, not as a blob
    passed through (``cache=uncached reason=range`` on a 429)."""
    caplog.set_level(logging.INFO, logger="docxy")
    upstream = HeldUpstream()  # a range it ignores: the whole blob
    app = capped_mirror(tmp_path, upstream, per_client=1, total=1)
    flowing, fetched, asked = upstream.flowing, upstream.fetched, upstream.asked
    ranged = [("Range", "bytes=0-")]
    logged = AccessLog(Guard(app, None))

    async def get(client: str, digest: str) -> AsgiAnswer:
        CLIENT.set(client)
        path = f"/v2/team/app/blobs/{digest}"
        return await call_asgi(logged, "GET", path, host="mirror.test", headers=ranged)

    async with app.test_app(), asyncio.TaskGroup() as tasks:
        permits = mirror_state(app).running.blobs.permits
        first = tasks.create_task(get("a", D1))
        while not fetched:
            asked.clear()
            await asked.wait()
        assert dict(permits.running) == {"a": 1}
        mine, anyone = await get("a", D2), await get("z", D3)
        assert (mine.status, anyone.status) == (429, 429)
        assert b"TOOMANYREQUESTS" in mine.body and b"as much as it may" in anyone.body
        refused = [r.getMessage() for r in caplog.records if r.name == "docxy.access"][-2:]
        assert [" 429 " in line and "cache=- " in line for line in refused] == [True, True]
        flowing.set()
        assert (await first).body == BLOBS[D1]
        assert fetched == [D1]
        assert not permits.running
        again = await get("z", D3)
        assert again.status == 200 and again.body == BLOBS[D3]
        assert fetched == [D1, D3]
    assert not permits.running  # given back once the relayed body was done


async def test_a_relayed_body_dropped_unstarted_gives_its_permit_back() -> None:
    """Quart closes only a body it began to send: a client gone before the first byte left
    the permit taken for good (with ``fills_total`` 1, no fill ever again)."""
    permits = FillPermits(total=1)
    answer = httpx.Response(200, content=b"blob")
    response = relay(
        answer, method="GET", realm="r", library_prefix=False, release=permits.acquire()
    )
    assert sum(permits.running.values()) == 1
    del response
    gc.collect()
    await asyncio.sleep(0)  # the finalizer's release runs at the loop's next turn
    assert not permits.running
