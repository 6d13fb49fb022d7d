"""Review of a cache fill's download and its followers when the upstream or the disk misbehaves:
an upstream whose rest runs past the blob, a body whose every byte came but whose chunked ending
broke off."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.cache import fill
from tests.unit import fakes
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import BLOB, DIGEST, HALF, Upstream, cached_blobs, mirror

SETTINGS = {"upstream__username": "bot", "upstream__password": "s3cret"}
PATH, AUTH = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]


class Pieces(httpx.AsyncByteStream):
    """``data`` in ``pieces``-byte chunks, then (``then``) an error: a body that broke off."""

    def __init__(self, data: bytes, pieces: int, then: Exception | None = None) -> None:
        self.data, self.pieces, self.then = data, pieces, then

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.pieces):
            yield self.data[start : start + self.pieces]
        if self.then is not None:
            raise self.then


class LongRest(Upstream):
    """Answers a Range GET with the right Content-Range, then more bytes than it: the rest of
    the blob and ``extra`` after it, with a Content-Length of all of them (``length``) or none
    (chunked); in one piece with the last byte, or after it (``pieces``)."""

    def __init__(self, extra: bytes, length: bool, pieces: int) -> None:
        super().__init__()
        self.extra, self.length, self.pieces = extra, length, pieces

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ranged = request.headers.get("range")
        if ranged is None or request.url.host == "auth.test":
            return super().__call__(request)
        self.ranges.append(ranged)
        start = int(ranged.removeprefix("bytes=").removesuffix("-"))
        body = BLOB[start:] + self.extra
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        if self.length:
            headers["Content-Length"] = str(len(body))
        return httpx.Response(206, headers=headers, stream=Pieces(body, self.pieces))


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
@pytest.mark.parametrize("pieces", [len(BLOB), HALF // 4], ids=["with-last-byte", "after-it"])
async def test_a_followers_rest_with_bytes_past_the_blob_never_gives_its_client_more(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    length: bool,
    pieces: int,
) -> None:
    """The disk fails under the fill and its client's rest from the upstream (a 206 whose
    Content-Range is right) sends more bytes than the blob has: the client never gets a byte
    past the blob, nor its last byte from an answer that is not its rest: it is cut, with one
    WARNING saying so, as for a rest of wrong bytes."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = LongRest(b"junk" * 1000, length, pieces)
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            answer = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
    assert answer.status == 200
    assert len(answer.body) < len(BLOB), len(answer.body) - len(BLOB)
    assert answer.body == BLOB[: len(answer.body)] and not answer.complete
    assert upstream.ranges == [None, f"bytes={HALF}-"]
    said = [r.getMessage() for r in caplog.records if "the client is cut" in r.getMessage()]
    assert len(said) == 1 and "past" in said[0], caplog.text
    assert cached_blobs(tmp_path) == []
