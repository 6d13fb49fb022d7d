"""BlobFile (docxy/cache/files.py): a descriptor read in worker threads is closed only once no
read of it runs (the shared tier's uploads and the cache's readers use it)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from docxy.cache.files import BlobFile, ClosedFile
from docxy.tasks import spawn

GUARD = 10.0  # seconds before a would-be hang becomes a test failure


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_a_close_during_a_read_waits_for_it_and_a_later_read_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    file = BlobFile.open(path)
    fd = file._fd
    started, release = threading.Event(), threading.Event()
    pread = os.pread

    def held(fd: int, length: int, offset: int) -> bytes:
        started.set()
        release.wait(GUARD)
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", held)
    reading = spawn("read", asyncio.to_thread(file.pread, 4, 2))
    assert await asyncio.to_thread(started.wait, GUARD)
    file.close()
    assert is_open(fd)  # the read runs: its descriptor stays
    file.close()  # idempotent
    release.set()
    assert await asyncio.wait_for(reading, GUARD) == b"2345"
    assert not is_open(fd)  # the read returned: closed
    with pytest.raises(ClosedFile):
        file.pread(4, 0)
    with pytest.raises(ClosedFile):
        file.size()


def test_a_close_with_no_read_running_closes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    file = BlobFile.open(path)
    assert file.size() == 3 and file.pread(2, 1) == b"bc"
    file.close()
    assert not is_open(file._fd)


async def test_a_release_put_off_by_a_read_runs_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    threads: list[int] = []

    def release(fd: int) -> None:
        threads.append(threading.get_ident())
        os.close(fd)

    file = BlobFile(os.open(path, os.O_RDONLY), release)
    started, go = threading.Event(), threading.Event()
    pread = os.pread

    def held(fd: int, length: int, offset: int) -> bytes:
        started.set()
        go.wait(GUARD)
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", held)
    reading = spawn("read", asyncio.to_thread(file.pread, 3, 0))
    assert await asyncio.to_thread(started.wait, GUARD)
    file.close()
    assert threads == []  # put off: the read runs
    go.set()
    assert await asyncio.wait_for(reading, GUARD) == b"abc"
    assert threads == [threading.get_ident()]  # once, on the loop (the store's state lives there)
