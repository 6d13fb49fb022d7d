"""A fill's temp file descriptor: one the pump's thread still writes through while the loop
discards the fill."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from docxy.cache import fill as fill_module
from docxy.core.digests import digest_of
from docxy.tasks import spawn
from tests.unit.test_cache_blobs import GUARD, as_writer, blob, guard, make_store
from tests.unit.test_cache_cap import Upstream, all_freed, served, watch_writes
from tests.unit.test_fill_hashing import Memory
from tests.unit.turns import until

MIB = 1 << 20


class WriteGate:
    """Holds the fill's first write to its temp file (the thread past its read, before its
    write) until :attr:`go` is set; tells which descriptor it was about to write through.
    The loop hears of it without a worker thread (the test's executor has only one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop = asyncio.get_running_loop()
        self.entered, self.wrote = asyncio.Event(), asyncio.Event()
        self.go = threading.Event()
        self.fd = -1
        self._write_all = fill_module.write_all
        monkeypatch.setattr(fill_module, "write_all", self.write_all)

    def write_all(self, fd: int, chunks: list[bytes] | list[memoryview]) -> None:
        if self.fd >= 0:
            self._write_all(fd, chunks)
            return
        self.fd = fd
        self.loop.call_soon_threadsafe(self.entered.set)
        self.go.wait(GUARD)
        try:
            self._write_all(fd, chunks)
        finally:
            self.loop.call_soon_threadsafe(self.wrote.set)


def open_files(tmp_dir: Path, suffix: str) -> list[int]:
    """Descriptors of this process open on files in ``tmp_dir`` whose name ends in ``suffix``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(f"{tmp_dir}/") and target.endswith(suffix):
            found.append(int(name))
    return found


async def settled(loop: asyncio.AbstractEventLoop) -> None:
    """Every close the loop handed to its default executor so far is done (it has one worker
    free: one more while a held write takes the other)."""
    await loop.run_in_executor(None, lambda: None)


@pytest.mark.parametrize(
    "how", ["pump, aborted by another task", "pump, cancelled twice", "write, aborted"]
)
async def test_a_discarded_fill_never_writes_into_a_file_opened_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    loop = asyncio.get_running_loop()
    held_writes = 0 if how.startswith("pump") else 1  # the write's job waits in a worker
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1 + held_writes))  # see settled()
    store = make_store(tmp_path / "cache")
    data = blob(64 * 1024)
    writer = await as_writer(store, digest_of(data))
    assert await writer.reserve(len(data))  # a known length: no more asking the loop
    writer.announce(len(data))
    gate = WriteGate(monkeypatch)

    async def feed() -> None:
        async with writer:
            if how.startswith("pump"):
                await writer.pump(Memory(data))
            else:
                await writer.write(data)

    task = spawn("feed", feed())
    await guard(gate.entered.wait())
    if how != "pump, cancelled twice":
        writer.abort("its client went away")
    else:  # the second cancel reaches the pump while it waits for its thread
        task.cancel()
        await asyncio.sleep(0)  # one turn: the task takes the first cancel
        task.cancel()
        await asyncio.wait([task])
    await settled(loop)
    victims: list[int] = []  # opened as another client would: the lowest free number first
    while not victims or victims[-1] < gate.fd:
        victims.append(os.open(tmp_path / f"victim-{len(victims)}", os.O_RDWR | os.O_CREAT))
    held = store.usage().freeing  # the removed temp file, which the thread may write yet
    try:
        gate.go.set()
        await guard(gate.wrote.wait())
        await asyncio.wait([task])
        for n in range(len(victims)):
            assert (tmp_path / f"victim-{n}").read_bytes() == b"", "a blob's bytes went astray"
        assert held == len(data)  # counted against the cap as large as it may grow
        assert store.usage().freeing > 0 or not open_files(store.tmp_dir, " (deleted)")
        freed = store._room_freed
        if store.usage().freeing:
            await guard(freed.wait())  # the thread is done: the writer's descriptor is closed
        await settled(loop)
        assert open_files(store.tmp_dir, "") == [] and os.listdir(store.tmp_dir) == []
        assert (store.usage().freeing, writer.fill.holders) == (0, 0)
    finally:
        for fd in victims:
            os.close(fd)


#: How long a stalled upstream read blocks before it times out (the upstream's read timeout),
#: far longer than the test waits for the room to be freed.
STALL = 3 * GUARD


class Stalled:
    """An upstream body that sends ``first`` and then stalls in its next read until it is
    interrupted (or its read times out after ``STALL`` seconds)."""

    def __init__(self, first: bytes) -> None:
        self.loop = asyncio.get_running_loop()
        self.first: bytes | None = first
        self.stalled = asyncio.Event()
        self.interrupted = threading.Event()

    def read(self, size: int) -> bytes:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        self.loop.call_soon_threadsafe(self.stalled.set)
        if self.interrupted.wait(STALL):
            raise OSError(errno.ECONNABORTED, "the upstream connection was shut")
        raise TimeoutError("the upstream stopped sending")

    def interrupt(self) -> None:
        self.interrupted.set()


async def test_an_abort_ends_a_pump_stalled_on_its_upstream_and_frees_its_room(
    tmp_path: Path,
) -> None:
    """A fill whose upstream stalls is aborted by another task (as ``fetch_or_join``'s callers
    may): its reading thread, blocked in the body's read, is interrupted and ends at once, so
    the removed temp file (counted at its reservation meanwhile) is freed then, not when the
    upstream read times out."""
    store = make_store(tmp_path)
    data = blob(256 * 1024)
    writer = await as_writer(store, digest_of(data))
    assert await writer.reserve(len(data))
    writer.announce(len(data))
    body = Stalled(data[: 64 * 1024])

    async def feed() -> None:
        async with writer:
            await writer.pump(body)

    task = spawn("feed", feed())
    try:
        await guard(body.stalled.wait())
        writer.abort("its client went away")
        assert store.usage().freeing == len(data)  # what its thread may still write
        await all_freed(store, GUARD)  # well before the read would time out
        assert body.interrupted.is_set()
        await guard(asyncio.wait([task]))
        assert isinstance(task.exception(), OSError)  # the pump saw its read cut
        assert (store.usage().freeing, writer.fill.holders) == (0, 0)
        assert open_files(store.tmp_dir, "") == [] and os.listdir(store.tmp_dir) == []
    finally:
        body.interrupt()  # the thread ends whatever happened
        await asyncio.wait([task], timeout=GUARD)


async def test_a_discarded_fills_thread_writing_yet_keeps_its_room_until_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill of 600 bytes is aborted while its thread is past its reservation, about to
    write: the removed temp file will still grow to 600 bytes. A fill of 600 more under a cap
    of 1000 waits for that thread to be done, so the disk never holds both (the removed file
    counts at its reservation, not at the size it had when it was removed)."""
    store = make_store(tmp_path, max_size=1000)
    watch = watch_writes(tmp_path, monkeypatch)
    first = blob(600, 1)
    writer = await as_writer(store, digest_of(first))
    assert await writer.reserve(len(first))
    writer.announce(len(first))
    gate = WriteGate(monkeypatch)

    async def feed() -> None:
        async with writer:
            await writer.pump(Memory(first))

    task = spawn("feed", feed())
    await guard(gate.entered.wait())
    writer.abort("its client went away")
    second = blob(600, 2)
    reading = spawn("read", served(await store.fill(digest_of(second), Upstream(second).fetch)))
    try:
        await until(lambda: reading.done() or bool(store._waiting))
    finally:
        gate.go.set()
    await guard(asyncio.wait([task]))
    assert await guard(reading) == second
    await guard(store.commits_done())
    assert watch.peak <= 1000, f"{watch.peak} bytes on disk, cap 1000"
    await all_freed(store)
    assert store.holds(digest_of(second))
