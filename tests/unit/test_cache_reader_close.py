"""A client that leaves while its blob's disk read still runs in a worker thread: the reader's
descriptor is closed only once that read returns, so the read never lands in another file."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from docxy.tasks import spawn
from tests.unit.test_cache_blobs import blob, make_store, put

GUARD = 10.0  # seconds before a would-be hang becomes a test failure


async def test_a_client_leaving_mid_read_never_reads_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path / "cache")
    data = blob(64 * 1024, seed=3)
    digest = await put(store, data)
    reader = store.open_read(digest)
    assert reader is not None
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    got: list[bytes | OSError] = []
    pread = os.pread

    def held(fd: int, length: int, offset: int) -> bytes:
        started.set()
        release.wait(GUARD)
        try:
            chunk = pread(fd, length, offset)
            got.append(chunk)
        except OSError as exc:
            got.append(exc)
            raise
        finally:
            done.set()
        return chunk

    async def stream() -> None:
        async for _ in reader:
            pass

    monkeypatch.setattr(os, "pread", held)
    streaming = spawn("stream", stream())
    assert await asyncio.to_thread(started.wait, GUARD)
    streaming.cancel()  # the client left: the response stream is cancelled
    with pytest.raises(asyncio.CancelledError):
        await streaming
    other = tmp_path / "other"
    other.write_bytes(b"\0" * len(data))
    other_fd = os.open(other, os.O_RDONLY)  # the lowest free number: the reader's, if closed
    try:
        release.set()
        assert await asyncio.to_thread(done.wait, GUARD)
        assert got == [data]  # the blob's bytes, not the other's
        os.fstat(other_fd)  # the other file was not closed by the reader
    finally:
        os.close(other_fd)
