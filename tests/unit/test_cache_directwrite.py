"""A fill's whole-block writes past the page cache, the rest through it, and the read back.

Run on whatever file system holds the test's temp dir: where it has no direct writes (tmpfs),
the writer says so (``direct`` False) and writes through the page cache; the bytes in the file
must be the reads, in order, either way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from docxy.cache import directwrite, open_configured
from docxy.cache import fill as fill_module
from docxy.cache.directwrite import ALIGN, O_DIRECT, DirectWriter, memory_size, read_back
from docxy.cache.errors import FetchFailed, FillAborted
from docxy.cache.fill import Download, run_fill, write_all
from docxy.config import load_config
from docxy.core.digests import digest_of
from tests.e2e.waiting import eventually
from tests.unit.test_cache_blobs import GUARD, as_writer, guard, make_store
from tests.unit.test_fill_recent import Paced, pumped

BLOCKS = 16 * ALIGN


def takes_direct_writes(path: Path) -> bool:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
    except OSError:
        return False
    else:
        return bool(O_DIRECT)
    finally:
        os.close(fd)
        path.unlink()


def open_temp(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def test_whole_blocks_go_direct_and_the_tail_through_the_cache(tmp_path: Path) -> None:
    supported = takes_direct_writes(tmp_path / "probe")
    reads = [os.urandom(BLOCKS), os.urandom(BLOCKS), os.urandom(1000)]
    path = tmp_path / "blob"
    fd = open_temp(path)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    writer = DirectWriter(fd, 0, BLOCKS)
    try:
        assert writer.direct is supported
        for read in reads:
            writer.write(read, write_all)
        assert writer.written_directly == (2 * BLOCKS if supported else 0)
        assert not writer.direct  # the tail turned it off
    finally:
        writer.close()
    assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags  # the descriptor as it was found
    os.close(fd)
    assert path.read_bytes() == b"".join(reads)


def test_a_refused_direct_write_goes_on_through_the_cache_from_where_it_stopped(
    tmp_path: Path,
) -> None:
    """The file system takes half of a read directly, then refuses (EINVAL): the rest of that
    read, and every read after, are written through the page cache, none twice."""
    if not takes_direct_writes(tmp_path / "probe"):
        pytest.skip("this file system takes no direct writes: nothing to refuse")
    calls: list[bool] = []

    def refusing(fd: int, chunks: list[memoryview]) -> None:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
        calls.append(direct)
        if direct and len(calls) == 2:
            os.write(fd, chunks[0][: BLOCKS // 2])
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        write_all(fd, chunks)

    reads = [os.urandom(BLOCKS) for _ in range(3)]
    path = tmp_path / "blob"
    fd = open_temp(path)
    writer = DirectWriter(fd, 0, BLOCKS)
    try:
        for read in reads:
            writer.write(read, refusing)
    finally:
        writer.close()
        os.close(fd)
    assert calls == [True, True, False, False]
    assert writer.written_directly == BLOCKS
    assert path.read_bytes() == b"".join(reads)


def test_a_failing_disk_raises_as_a_write_would(tmp_path: Path) -> None:
    def full(fd: int, chunks: list[memoryview]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fd = open_temp(tmp_path / "blob")
    writer = DirectWriter(fd, 0, BLOCKS)
    try:
        with pytest.raises(OSError) as raised:
            writer.write(os.urandom(BLOCKS), full)
        assert raised.value.errno == errno.ENOSPC
    finally:
        writer.close()
        os.close(fd)


@pytest.mark.parametrize(("offset", "size"), [(100, BLOCKS), (0, BLOCKS + 1), (0, 0)])
def test_no_direct_writes_from_an_unaligned_start_or_buffer(
    tmp_path: Path, offset: int, size: int
) -> None:
    fd = open_temp(tmp_path / "blob")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    writer = DirectWriter(fd, offset, size)
    try:
        assert not writer.direct
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        writer.close()
        os.close(fd)


def test_a_committed_blob_is_read_back_once_if_memory_could_hold_it(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * directwrite.READ_BACK_CHUNK + 5))
    size = path.stat().st_size
    assert read_back(path, size, memory=size * directwrite.READ_BACK_SHARE) == size
    assert read_back(path, size, memory=size * directwrite.READ_BACK_SHARE - 1) == 0
    assert read_back(tmp_path / "evicted", size, memory=1 << 40) == 0


class FillStarts(directwrite.Running):
    """Fills that start once a read back has read ``after`` chunks (its busy checks); ``then``
    runs while the read back waits for them to end."""

    def __init__(self, after: int, then: Callable[[], object] = lambda: None) -> None:
        super().__init__()
        self._checks, self._after, self._then = 0, after, then
        self.waits = 0

    @property
    def busy(self) -> bool:
        self._checks += 1
        return self._checks == self._after

    def wait(self) -> None:
        self.waits += 1
        if self.waits > 1:  # the first is before the file is opened: nothing runs yet
            self._then()


class WatchedFills(directwrite.Running):
    """Fills that remember every thread that waited for them."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[threading.Thread] = []

    def wait(self) -> None:
        self.waited.append(threading.current_thread())
        super().wait()


def test_a_read_back_waits_for_the_fills_running_and_an_eviction_meanwhile_ends_it(
    tmp_path: Path,
) -> None:
    """Read back during the next miss (the next layer of the same pull), it made that one a
    third slower on the benchmark's VM; it now starts only once no fill runs."""
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * directwrite.READ_BACK_CHUNK))
    size, memory = path.stat().st_size, 1 << 40
    fills = WatchedFills()
    read: list[int] = []
    with fills.one():
        reading = threading.Thread(
            target=lambda: read.append(read_back(path, size, memory, fills)), daemon=True
        )
        reading.start()
        assert eventually(lambda: reading in fills.waited, GUARD)
        path.unlink()  # evicted while the fill runs: the read back has not opened it
    reading.join(GUARD)
    assert not reading.is_alive()
    assert read == [0]


def test_a_fill_that_starts_mid_read_back_has_it_let_go_of_the_file_and_go_on_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * directwrite.READ_BACK_CHUNK + 5))
    size, memory = path.stat().st_size, 1 << 40
    # The fill ends with the blob where it was: read on from where it stopped, to its end.
    assert read_back(path, size, memory, FillStarts(after=1)) == size
    # Evicted while the fill ran: the file was let go, so the read back ends there.
    evicted = FillStarts(after=2, then=path.unlink)
    assert read_back(path, size, memory, evicted) == 2 * directwrite.READ_BACK_CHUNK
    assert evicted.waits == 2


async def test_a_fill_counts_as_running_from_its_fetch_to_its_end(tmp_path: Path) -> None:
    store = make_store(tmp_path / "cache")
    data = os.urandom(BLOCKS)
    writer = await as_writer(store, digest_of(data))
    seen: list[bool] = []

    async def fetch() -> Download:
        seen.append(directwrite.FILLS.busy)
        raise FetchFailed("the upstream is down")

    assert not directwrite.FILLS.busy
    await guard(run_fill(writer, fetch))
    assert seen == [True]
    assert not directwrite.FILLS.busy


@pytest.mark.parametrize("direct_writes", [True, False])
async def test_a_fill_writes_whole_reads_directly_unless_told_not_to_and_reads_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, direct_writes: bool
) -> None:
    """``cache.direct_writes``: on, a pumped fill writes its whole-block reads past the page
    cache (where the file system can), its tail through it, and reads the committed blob back
    once; off, every write goes through the page cache and nothing is read back."""
    supported = takes_direct_writes(tmp_path / "probe")
    seen: list[bool] = []
    read_back: list[tuple[Path, int]] = []

    def recording(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
        seen.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT))
        write_all(fd, chunks)

    monkeypatch.setattr(fill_module, "write_all", recording)
    monkeypatch.setattr(
        fill_module, "read_back_later", lambda path, size: read_back.append((path, size))
    )
    reads = [os.urandom(BLOCKS) for _ in range(3)] + [b"the tail"]
    data = b"".join(reads)
    store = make_store(tmp_path / "cache", direct_writes=direct_writes)
    writer = await as_writer(store, digest_of(data))
    body = Paced(reads)
    body.let_go(len(reads) + 1)
    await guard(pumped(writer, body, len(data)))
    entry = store.lookup(digest_of(data))
    assert entry is not None and entry.path.read_bytes() == data
    direct = direct_writes and supported
    assert seen == [direct, direct, direct, False]
    assert read_back == ([(entry.path, len(data))] if direct else [])


@pytest.mark.parametrize(("setting", "expected"), [(None, True), ("false", False)])
async def test_the_setting_reaches_the_store(
    tmp_path: Path, setting: str | None, *, expected: bool
) -> None:
    environ = {"DOCXY_CACHE_DIR": str(tmp_path / "cache")}
    if setting is not None:
        environ["DOCXY_CACHE_DIRECT_WRITES"] = setting
    cache = open_configured(load_config(environ=environ))
    await cache.blobs.indexed()
    assert cache.blobs.direct_writes is expected


async def test_a_writing_thread_that_fails_otherwise_ends_the_fill_instead_of_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a disk error: the writing thread's failure reaches the pump, which raises, and lets
    every read it held go, so the reading thread does not wait for ever for a free one."""

    def broken(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
        raise ValueError("not a disk error")

    monkeypatch.setattr(fill_module, "write_all", broken)
    reads = [os.urandom(BLOCKS) for _ in range(3 * fill_module.PUMP_DEPTH)]
    data = b"".join(reads)
    store = make_store(tmp_path / "cache")
    writer = await as_writer(store, digest_of(data))
    body = Paced(reads)
    body.let_go(len(reads) + 1)
    with pytest.raises(FillAborted, match="not a disk error"):
        await guard(pumped(writer, body, len(data)))
    assert store.lookup(digest_of(data)) is None


def test_read_backs_are_read_in_turn_by_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done: list[tuple[Path, int, str]] = []
    all_read = threading.Event()

    def recording(path: Path, size: int, fills: directwrite.Running | None = None) -> int:
        assert fills is directwrite.FILLS  # it waits for the fills of this process
        done.append((path, size, threading.current_thread().name))
        if len(done) == 3:
            all_read.set()
        return size

    monkeypatch.setattr(directwrite, "read_back", recording)
    backs = directwrite.ReadBacks()
    for n in range(3):
        backs.add(tmp_path / f"blob{n}", n)
    assert all_read.wait(GUARD)
    assert [(path.name, size) for path, size, _ in done] == [(f"blob{n}", n) for n in range(3)]
    assert {thread for _, _, thread in done} == {"read back"}


def test_memory_is_the_lowest_cgroup_limit_when_that_is_lower(tmp_path: Path) -> None:
    """Read back was sized by the machine's memory alone: a container given 512 MiB on a
    machine of 24 GiB read back blobs of up to 3 GiB, each one its limit five times over.
    The process's own cgroup (a systemd unit's MemoryMax=) and those above it count too."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    root = tmp_path / "cgroup"
    unit = root / "system.slice" / "docxy.service"
    unit.mkdir(parents=True)
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("0::/system.slice/docxy.service\n")
    mib = 1024 * 1024

    def limits(unit_max: str, slice_max: str) -> int | None:
        (unit / "memory.max").write_text(unit_max + "\n")
        (root / "system.slice" / "memory.max").write_text(slice_max + "\n")
        return memory_size(root, self_cgroup)

    assert limits(str(512 * mib), "max") == 512 * mib  # the unit's own
    assert limits("max", str(768 * mib)) == 768 * mib  # the slice above it
    assert limits(str(512 * mib), str(256 * mib)) == 256 * mib  # the lowest
    assert limits(str(physical * 2), "max") == physical  # above the machine's: the machine's
    assert limits("max", "max") == physical
    self_cgroup.write_text("0::/\n")  # a container's own namespace: its root is the limit
    (root / "memory.max").write_text(f"{300 * mib}\n")
    assert memory_size(root, self_cgroup) == 300 * mib
    (tmp_path / "memory.max").write_text(f"{mib}\n")  # above the mount: not this process's
    assert memory_size(root, self_cgroup) == 300 * mib
    for outside in ("/..", "/../..", "/a/../.."):  # a cgroup outside the namespace
        self_cgroup.write_text(f"0::{outside}\n")
        assert memory_size(root, self_cgroup) == 300 * mib, outside
    assert memory_size(tmp_path / "none", tmp_path / "none") == physical  # no cgroup v2


def test_memory_reads_cgroup_v1_limits_too(tmp_path: Path) -> None:
    """On a cgroup v1 host (Ubuntu 20.04, Debian 10) the limit is memory.limit_in_bytes under
    the memory controller's own mount; "unlimited" there is a huge number, not "max"."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    unlimited = "9223372036854771712"
    mib = 1024 * 1024
    root = tmp_path / "cgroup"
    memory = root / "memory"
    container = memory / "docker" / "abc"
    container.mkdir(parents=True)
    (memory / "memory.limit_in_bytes").write_text(unlimited + "\n")
    (memory / "docker" / "memory.limit_in_bytes").write_text(unlimited + "\n")
    (container / "memory.limit_in_bytes").write_text(f"{256 * mib}\n")
    self_cgroup = tmp_path / "self-cgroup"
    # hybrid: the unified line is there too, with no memory.max under it
    self_cgroup.write_text("12:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n0::/docker/abc\n")

    assert memory_size(root, self_cgroup) == 256 * mib  # seen from the host's namespace

    self_cgroup.write_text("9:cpuacct,memory:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert memory_size(root, self_cgroup) == 256 * mib  # memory named with another controller

    (container / "memory.limit_in_bytes").write_text(unlimited + "\n")
    assert memory_size(root, self_cgroup) == physical  # no limit anywhere

    # inside the container: its own cgroup is the mount's root; /docker/abc is not there
    shutil.rmtree(memory / "docker")
    (memory / "memory.limit_in_bytes").write_text(f"{384 * mib}\n")
    assert memory_size(root, self_cgroup) == 384 * mib

    self_cgroup.write_text("9:blkio:/docker/abc\n")  # no memory controller: nothing read
    assert memory_size(root, self_cgroup) == physical


def test_read_backs_waiting_are_bounded_and_the_oldest_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue grew without end while its one thread was slower than the fills (a slow
    disk, a burst of small blobs); past its bound the oldest waiting is dropped, not the blob
    just committed (the likelier to be pulled next). A read back that raises is logged and
    does not end the thread."""
    release = threading.Event()
    started = threading.Event()
    done: list[str] = []

    def slow(path: Path, size: int, fills: directwrite.Running | None = None) -> int:
        started.set()
        assert release.wait(GUARD)
        done.append(path.name)
        if path.name == "third":
            raise OSError(errno.EIO, "Input/output error")
        return size

    monkeypatch.setattr(directwrite, "read_back", slow)
    backs = directwrite.ReadBacks(pending=2)
    backs.add(tmp_path / "reading", 1)
    assert started.wait(GUARD)  # the thread holds the first: two may wait behind it
    for name in ("dropped", "second", "third"):
        backs.add(tmp_path / name, 1)
    release.set()

    assert eventually(lambda: len(done) >= 3, GUARD)
    assert done == ["reading", "second", "third"]
    backs.add(tmp_path / "later", 1)  # the thread lived through the failed one
    assert eventually(lambda: len(done) >= 4, GUARD)
    assert done == ["reading", "second", "third", "later"]
    (failed,) = [r for r in caplog.records if r.name == directwrite.__name__]
    assert failed.getMessage() == "read back of third failed (1 so far)"
    assert failed.exc_info is not None and "Input/output error" in str(failed.exc_info[1])


def test_read_backs_wait_for_the_fills_before_taking_a_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread took the next blob, then waited for the fills: on a busy mirror it held that
    one while newer ones pushed older ones out of the queue. It waits before taking one."""
    fills = WatchedFills()  # another store's read-back thread may wait for it too
    monkeypatch.setattr(directwrite, "FILLS", fills)
    done: list[str] = []

    def read(path: Path, size: int, fills: directwrite.Running | None = None) -> int:
        done.append(path.name)
        return size

    monkeypatch.setattr(directwrite, "read_back", read)
    backs = directwrite.ReadBacks(pending=2)
    with fills.one():
        backs.add(tmp_path / "first", 1)
        # its thread waits for the fill, holding no blob
        assert eventually(lambda: backs._worker in fills.waited, GUARD)
        backs.add(tmp_path / "second", 1)
        backs.add(tmp_path / "third", 1)  # the oldest waiting goes
    assert eventually(lambda: len(done) >= 2, GUARD)
    assert done == ["second", "third"]


def test_read_backs_try_again_when_no_thread_could_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that could not be started (a container's pids limit) raised into the fill's
    commit and was taken for running: nothing was read back after. Now the next blob tries."""
    done = threading.Event()

    def read(path: Path, size: int, fills: directwrite.Running | None = None) -> int:
        done.set()
        return size

    monkeypatch.setattr(directwrite, "read_back", read)
    real_start = threading.Thread.start
    refusals = iter([True])

    def start(self: threading.Thread) -> None:
        if next(refusals, False):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    backs = directwrite.ReadBacks()
    backs.add(tmp_path / "first", 1)  # no thread: not raised, and not read back yet
    assert not done.is_set()
    backs.add(tmp_path / "second", 1)
    assert done.wait(GUARD)
