"""A slow upstream's bytes reach a fill's clients as they come, not a pump buffer at a time.

The direct GET reads the body with ``http.client``, whose ``read(size)`` returns once ``size``
bytes are in or the body ends. With every read a whole ``PUMP_BUFFER``, a follower of a fill
from an upstream sending a few hundred KB/s got its bytes seconds apart, and nothing of a blob
smaller than that until its end. The pump's first reads are small and grow while reads are
quick (:func:`docxy.cache.fill.next_read_size`).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
from pathlib import Path

import pytest

from docxy.cache.fill import (
    FAST_READ,
    PUMP_BUFFER,
    PUMP_READ_MIN,
    SLOW_READ,
    BlobWriter,
    next_read_size,
)
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.test_cache_blobs import GUARD, as_follower, as_writer, guard, make_store


class SocketBody:
    """A body read as ``docxy.upstream.direct.DirectBody`` reads it: ``HTTPResponse.read``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._response = http.client.HTTPResponse(sock)
        self._response.begin()

    def read(self, size: int) -> bytes:
        return self._response.read(size)

    def interrupt(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)


async def test_a_follower_gets_the_first_bytes_before_the_upstream_sends_the_rest(
    tmp_path: Path,
) -> None:
    """The upstream sends 250 kB of a 1 MB blob, then waits until a client of the fill has
    had bytes before it sends the rest. A follower is one read behind the pump (a read is
    handed on whole, and the last byte written waits for the next read or the commit): the
    first two reads must be in the first 250 kB. A pump whose first read waits for more than
    came hands nothing on, and the fill stalls until the guard fails the test."""
    first, rest = os.urandom(250_000), os.urandom(750_000)
    data = first + rest
    ours, theirs = socket.socketpair()
    client_had_bytes = threading.Event()

    def upstream() -> None:
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + first)
        if client_had_bytes.wait(GUARD):
            theirs.sendall(rest)

    sender = threading.Thread(target=upstream, daemon=True)
    sender.start()
    store = make_store(tmp_path)
    writer = await as_writer(store, digest_of(data))
    follower = await as_follower(store, digest_of(data))

    async def pumped(writer: BlobWriter) -> None:
        async with writer:
            writer.announce(len(data))
            await writer.pump(SocketBody(ours))
            await writer.commit(len(data))

    got: list[bytes] = []

    async def collect() -> None:
        async with follower:
            async for chunk in follower:
                got.append(chunk)
                client_had_bytes.set()

    fill = spawn("fill", pumped(writer))
    try:
        await guard(collect())
        await guard(fill)
    finally:
        client_had_bytes.set()
        sender.join(GUARD)
        ours.close()
        theirs.close()
    assert b"".join(got) == data
    assert len(got[0]) <= len(first)  # it came before the rest was sent


@pytest.mark.parametrize(
    ("size", "took", "expected"),
    [
        (PUMP_READ_MIN, FAST_READ / 2, 2 * PUMP_READ_MIN),  # quick: doubled
        (PUMP_BUFFER, FAST_READ / 2, PUMP_BUFFER),  # not above the pump's size
        (PUMP_BUFFER, SLOW_READ * 2, PUMP_BUFFER // 2),  # slow: halved
        (PUMP_READ_MIN, SLOW_READ * 2, PUMP_READ_MIN),  # not below the smallest
        (4 * PUMP_READ_MIN, (FAST_READ + SLOW_READ) / 2, 4 * PUMP_READ_MIN),  # between: kept
    ],
)
def test_next_read_size(size: int, took: float, expected: int) -> None:
    assert next_read_size(size, took, PUMP_BUFFER) == expected


def test_a_pump_smaller_than_the_smallest_read_keeps_its_own_size() -> None:
    """A store with many fills at once makes its pumps' reads smaller (``chunk_of``): a slow
    read never takes one above that."""
    small = PUMP_READ_MIN // 4
    assert next_read_size(small, SLOW_READ * 2, small) == small
    assert next_read_size(small, FAST_READ / 2, small) == small
