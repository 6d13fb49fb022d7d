"""A small upstream answer's gzip or deflate, undone with a bound (docxy.upstream.encoding):
an answer that inflates past the limit is refused before it is in memory whole."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream.client import make_http_client, read_small
from docxy.upstream.encoding import ACCEPTED, Inflater

MiB = 1 << 20
TOKEN = json.dumps({"token": "t0ken", "expires_in": 300}).encode()


class Chunks(httpx.AsyncByteStream):
    """A body sent as the network would: ``data`` in reads of ``size``."""

    def __init__(self, data: bytes, size: int = MiB) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]


async def fetched(
    body: bytes, coding: str | None, limit: int = 4 * MiB, *, reads: int = MiB
) -> bytes:
    headers = {"Content-Encoding": coding} if coding else {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == ACCEPTED
        return httpx.Response(200, headers=headers, stream=Chunks(body, reads))

    config = load_config({}, environ={}).upstream
    async with make_http_client(config, httpx.MockTransport(handler)) as client:
        answer = await client.send(client.build_request("GET", "http://up.test/token"), stream=True)
        return await read_small(answer, limit)


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        (None, lambda data: data),
        ("identity", lambda data: data),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("GZIP", gzip.compress),
    ],
)
async def test_an_answer_in_each_coding_reads_as_its_bytes(
    coding: str | None, encode: Callable[[bytes], bytes]
) -> None:
    assert await fetched(encode(TOKEN), coding) == TOKEN


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("reads", [1, MiB], ids=["byte-by-byte", "whole"])
@pytest.mark.parametrize(
    "encode", [zlib.compress, raw_deflate, gzip.compress], ids=["zlib", "raw", "gzip"]
)
async def test_deflate_reads_in_each_form_servers_send(
    encode: Callable[[bytes], bytes], reads: int
) -> None:
    """``deflate`` is zlib's wrapper by its definition; some servers send it raw (httpx and
    browsers read both), others gzip. Raw deflate was called corrupt."""
    assert await fetched(encode(TOKEN), "deflate", reads=reads) == TOKEN


async def test_a_deflate_body_of_one_byte_broke_off() -> None:
    with pytest.raises(UpstreamUnavailable, match="broke off"):
        await fetched(zlib.compress(TOKEN)[:1], "deflate")


async def test_a_gzip_bomb_is_refused_before_it_is_inflated_whole() -> None:
    """64 MiB of zeros in 64 KiB of gzip, sent as one read: httpx inflated each read whole
    (64 MiB here; 1 MiB of gzip can make a gigabyte) before the size check saw it."""
    bomb = gzip.compress(bytes(64 * MiB), compresslevel=9)
    assert len(bomb) < MiB
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamUnavailable, match="exceeded 4194304 bytes"):
            await fetched(bomb, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB held at once"


async def test_an_answer_just_at_the_limit_is_read_whole() -> None:
    body = b"x" * MiB
    assert await fetched(gzip.compress(body), "gzip", limit=MiB) == body
    with pytest.raises(UpstreamUnavailable, match="exceeded"):
        await fetched(gzip.compress(body + b"x"), "gzip", limit=MiB)


@pytest.mark.parametrize(
    ("body", "coding", "words"),
    [
        (gzip.compress(TOKEN)[:-8], "gzip", "broke off"),
        (b"not gzip at all", "gzip", "corrupt"),
        (TOKEN, "br", "encoded as br"),
        (gzip.compress(gzip.compress(TOKEN)), "gzip, gzip", "encoded as gzip, gzip"),
    ],
    ids=["truncated", "corrupt", "brotli", "twice"],
)
async def test_an_answer_that_cannot_be_read_says_why(body: bytes, coding: str, words: str) -> None:
    with pytest.raises(UpstreamUnavailable, match=words):
        await fetched(body, coding)


async def test_an_empty_body_is_empty_whatever_its_coding() -> None:
    assert await fetched(b"", "gzip") == b""


def test_no_coding_needs_no_inflater() -> None:
    assert Inflater.of(None) is None and Inflater.of("identity") is None and Inflater.of("") is None
