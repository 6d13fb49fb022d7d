"""A fill's temp file preallocated to the announced length: blocks found before the first
write, the size left to the writes, no room reported before the first byte."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from docxy.cache import fill
from docxy.cache.fill import BlobFollower
from docxy.cache.preallocate import Fallocate, preallocate
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.asgi import call_asgi
from tests.unit.test_cache_blobs import GUARD, as_writer, blob, guard, make_store, read
from tests.unit.test_pull_blobs import BLOB, DIGEST, Upstream, cached_blobs, mirror


def failing(code: int) -> Fallocate:
    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        ctypes.set_errno(code)
        return -1

    return fallocate


def test_unsupported_means_not_preallocated_and_no_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        for code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            assert preallocate(fd, 1 << 20, failing(code)) is False
        assert preallocate(fd, 1 << 20, None) is False  # no fallocate in this C library
        with pytest.raises(OSError) as raised:
            preallocate(fd, 1 << 20, failing(errno.ENOSPC))
        assert raised.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_the_c_librarys_error_is_the_one_raised(tmp_path: Path) -> None:
    """The real ``fallocate`` on a descriptor open for reading only: its errno (EBADF) is
    what is raised, not 0 (the errno copy ctypes keeps must be the call's)."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as raised:
            preallocate(fd, 1 << 20)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.EBADF


def test_a_signal_during_the_call_is_tried_again(tmp_path: Path) -> None:
    calls: list[int] = []

    def interrupted_once(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append(length)
        if len(calls) == 1:
            ctypes.set_errno(errno.EINTR)
            return -1
        return 0

    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert preallocate(fd, 1 << 20, interrupted_once) is True
    finally:
        os.close(fd)
    assert calls == [1 << 20, 1 << 20]


async def test_a_known_length_is_preallocated_and_the_file_grows_with_the_writes(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        supported = preallocate(probe, 4096)
    finally:
        os.close(probe)
    data = blob(3 << 20)
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await store.fetch_or_join(digest)
    assert isinstance(follower, BlobFollower)
    async with writer:
        writer.announce(len(data))
        await writer.preallocate()
        st = os.stat(writer.fill.tmp_path)
        assert st.st_size == 0  # a follower reads no further than the writes
        if supported:
            assert st.st_blocks * 512 >= len(data)
        await writer.write(data[: 1 << 20])
        await writer.flush()
        assert os.stat(writer.fill.tmp_path).st_size == 1 << 20
        await writer.write(data[1 << 20 :])
        assert await writer.commit(len(data)) is not None
    assert await guard(follower.read_all()) == data
    assert await read(store, digest) == data


async def test_no_room_for_the_announced_length_passes_the_blob_through_before_a_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk cannot hold the blob: the fill is given up at once, as for a failed write
    (one WARNING, the cache paused), and its client gets the whole blob from the upstream."""

    def no_room(fd: int, nbytes: int) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fill, "preallocate", no_room)
    caplog.set_level(logging.INFO, logger="docxy")
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert (answer.status, answer.complete, answer.body == BLOB) == (200, True, True)
    assert upstream.ranges == [None, "bytes=0-"]  # the fill's GET, then the client's whole rest
    assert cached_blobs(tmp_path) == []
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "No space left on device" in warned[0].getMessage()


async def test_an_abort_during_the_call_closes_the_descriptor_only_once_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call runs in a worker thread; the fill aborted meanwhile (its client left) must not
    close the descriptor under it: by then its number could name another file."""
    started, go = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow(fd: int, nbytes: int) -> bool:
        started.set()
        go.wait(GUARD)
        seen.append(os.fstat(fd).st_size)  # raises EBADF if closed under the call
        return True

    monkeypatch.setattr(fill, "preallocate", slow)
    store = make_store(tmp_path)
    data = blob(1 << 20)
    writer = await as_writer(store, digest_of(data))
    writer.announce(len(data))
    calling = spawn("preallocate", writer.preallocate())
    try:
        assert await asyncio.to_thread(started.wait, GUARD)
        writer.abort("the client went away")
    finally:
        go.set()
    await guard(calling)
    assert seen == [0]
    assert await guard(wait_until(lambda: store.usage().freeing == 0))


async def wait_until(condition: Callable[[], bool]) -> bool:
    while not condition():
        await asyncio.sleep(0.01)
    return True
