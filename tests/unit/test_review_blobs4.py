"""Review of the blob path of a pull (docxy/pull/blobs.py, the fill's followers, the blob
responses) as Docker, containerd and skopeo use it: ranges, HEADs, digests, redirects, and a
fill whose upstream body fails before its first byte."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from docxy.pull import blobs
from docxy.tasks import spawn
from tests.unit.asgi import call_asgi
from tests.unit.test_fills import Held
from tests.unit.test_pull_blobs import CutAfter, committed, mirror, reply

BLOB = bytes(range(256)) * 1024  # 256 KiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PATH = f"/v2/library/app/blobs/{DIGEST}"


class BreaksFirst:
    """An anonymous registry whose first blob GET (the mirror's fill) answers 200 with the
    blob's length, then breaks off before its first byte; every later GET gets the blob."""

    def __init__(self) -> None:
        self.gets: list[str | None] = []  # the Range of each blob GET

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(BLOB))})
        self.gets.append(request.headers.get("range"))
        if len(self.gets) == 1:
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=CutAfter(BLOB, 0))
        return reply(200, BLOB)


async def test_a_fill_whose_body_breaks_off_before_its_first_byte_is_no_200_then_a_cut(
    tmp_path: Path,
) -> None:
    """The fill's upstream answered 200 and the length, then reset before a byte: its client
    got ``200 Content-Length: N`` and a cut of no bytes (docker: "unexpected EOF"), where the
    failure could still be answered as any fill's failure before its headers is (a
    pass-through: the upstream's own answer, here the blob)."""
    upstream = BreaksFirst()
    async with mirror(tmp_path, upstream) as app:
        answer = await call_asgi(app, "GET", PATH, host="mirror.test")
    assert answer.status == 200
    assert answer.complete and answer.body == BLOB, (answer.complete, len(answer.body))
    assert answer.headers["Cache-Status"] == "Docxy; fwd=bypass; detail=upstream-failed"
    assert upstream.gets == [None, None]  # the fill's, then the client's pass-through


class HeldAfterHeaders:
    """An anonymous registry whose blob body flows only once ``flowing`` is set."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        headers = {"Content-Length": str(len(BLOB))}
        return httpx.Response(200, headers=headers, stream=Held(self.flowing, BLOB))


async def test_a_fill_slow_after_its_headers_still_answers_its_client_before_a_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for a fill's first byte is bounded: an upstream that sends its headers, then
    nothing yet, still has the mirror's headers go out to its client (the earlier unbounded
    wait, reverted in a0642b1, hung such clients until the first byte)."""
    monkeypatch.setattr(blobs, "FIRST_BYTE_WAIT", 0.2)
    upstream = HeldAfterHeaders()
    started = asyncio.Event()
    async with mirror(tmp_path, upstream) as app:
        asking = spawn("asking", call_asgi(app, "GET", PATH, host="mirror.test", started=started))
        try:
            await asyncio.wait_for(started.wait(), 10.0)  # no byte has come
        finally:
            upstream.flowing.set()
        answer = await asyncio.wait_for(asking, 10.0)
        await committed(app)
    assert (answer.status, answer.complete, answer.body == BLOB) == (200, True, True)
    assert answer.headers["Cache-Status"] == "Docxy; fwd=miss"
