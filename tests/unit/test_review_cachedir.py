"""Review of the cache directory: two mirrors on one ``cache.dir``, blob files whose length
changed behind the mirror's back, preallocated leftovers counted by what the disk holds, and
``docxy cache gc`` as root beside leftovers of an older root run. Each test failed before its
fix."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.cache import BlobWriter, DiskBlobStore, digest_of, open_cache
from docxy.cache.preallocate import preallocate
from tests.unavailable import skip_or_fail
from tests.unit.test_cachecli import Populated, _populate, run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

REPO = Path(__file__).resolve().parents[2]

#: A mirror in another process: its cache opened for serving, one fill in flight (its temp
#: file made), then it waits for its stdin to close.
MIRROR = """
import asyncio, sys
from pathlib import Path
from docxy.cache import digest_of, open_cache

async def main():
    cache = open_cache(Path(sys.argv[1]), max_size=1 << 20, tag_ttl=300)
    writer = await cache.blobs.fetch_or_join(digest_of(b"in flight"))
    print(writer.fill.tmp_path, flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


def _row(out: str, key: str) -> str:
    """The value of gc's report row ``key``."""
    values = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(key)]
    assert len(values) == 1, out
    return values[0]


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


# --- 1. one serving mirror per cache directory ------------------------------------------------


def test_a_second_mirror_on_the_same_cache_dir_refuses_and_leaves_the_first_ones_fills(
    tmp_path: Path,
) -> None:
    """A mirror started twice on one ``cache.dir`` (or two replicas on one volume): the second
    started all the same, and its start-up sweep deleted the first one's fill in flight."""
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-c", MIRROR, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert first.stdout is not None
        temp = Path(first.stdout.readline().strip())  # bounded: the child ends or prints
        assert temp.is_file(), "the first mirror's fill did not start"
        refused: Exception | None = None
        try:
            open_cache(root, max_size=1 << 20, tag_ttl=300)
        except Exception as exc:
            refused = exc
        assert temp.is_file(), "the second mirror's start deleted the first one's fill"
        assert refused is not None, "the second mirror started on a cache dir in use"
        assert str(root) in str(refused)
        assert f"pid {first.pid}" in str(refused)
    finally:
        first.kill()
        first.communicate(timeout=10)


def test_gc_beside_a_mirror_leaves_an_old_temp_file_a_process_holds(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """A fill of a large blob from a slow upstream runs for over an hour: gc beside the mirror
    deleted its temp file under it (the commit then failed, the blob fetched again)."""
    temp = cache.root / "tmp" / "sha256-slow.0123456789ab"
    temp.write_bytes(b"x" * 100)
    old = time.time() - 7200
    os.utime(temp, (old, old))
    held = os.open(temp, os.O_RDONLY)  # as the live mirror's writer holds it
    try:
        code, out, err = run(capsys, cache, "gc")
    finally:
        os.close(held)
    assert code == 0, err
    assert temp.is_file(), out
    assert _row(out, "temp files removed") == "0"


# --- 2. a blob file whose length changed behind the mirror's back ------------------------------


@pytest.mark.parametrize("change", ["truncated", "extended"])
def test_a_blob_file_of_another_length_is_a_miss_not_a_short_body(
    tmp_path: Path, change: str
) -> None:
    """The file of a cached blob cut short (or grown) by hand or by a disk fault: it was served
    with the length the index had, a cut after the bytes left (or a body that does not hash).
    Now the open finds the file's length changed: the blob is dropped, a miss."""

    async def scenario() -> None:
        content = b"layer " * 1000
        digest = digest_of(content)
        store = DiskBlobStore.open(tmp_path / "c", 1 << 20)
        writer = await store.fetch_or_join(digest)
        assert isinstance(writer, BlobWriter)
        async with writer:
            await writer.write(content)
            assert await writer.commit(len(content)) is not None
        path = store.path_of(digest)
        if change == "truncated":
            os.truncate(path, len(content) // 2)
        else:
            with open(path, "ab") as f:
                f.write(b"more")
        assert store.open_read(digest) is None  # a miss: fetched again
        assert not path.exists()
        assert store.lookup(digest) is None
        for _ in range(50):  # its deletion runs in a worker thread
            if not any(store.tmp_dir.iterdir()):
                break
            await asyncio.sleep(0.02)
        assert list(store.tmp_dir.iterdir()) == []

    asyncio.run(scenario())


# --- 3. leftovers counted by the blocks they hold ---------------------------------------------


def _preallocated(path: Path, blocks: int, written: bytes) -> int:
    """A fill's temp file cut by a crash: ``blocks`` bytes found up front, ``written`` in;
    the bytes the disk holds for it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if not preallocate(fd, blocks):
            skip_or_fail(f"{path.parent} has no fallocate: no preallocated file to count")
        os.write(fd, written)
    finally:
        os.close(fd)
    held = os.stat(path).st_blocks * 512
    assert held >= blocks > len(written)
    return held


def test_gc_counts_a_preallocated_leftover_by_the_blocks_it_held(tmp_path: Path) -> None:
    """A fill of a 4 MiB blob cut by a crash after 10 bytes held 4 MiB of disk: gc said it
    freed 10 bytes."""
    store = DiskBlobStore.open(tmp_path / "c", 1 << 30)
    leftover = store.tmp_dir / "sha256-cut.0123456789ab"
    held = _preallocated(leftover, 4 << 20, b"0123456789")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    report = asyncio.run(store.gc(evict=False))
    assert report.removed_tmp == 1
    assert report.freed_bytes == held


def test_a_preallocated_leftover_kept_at_start_counts_its_blocks_against_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leftover the disk would not delete at start counts against ``max_size`` until a start
    deletes it: by its apparent size, 10 bytes of the 4 MiB it holds."""
    root = tmp_path / "c"
    (root / "tmp").mkdir(parents=True)
    held = _preallocated(root / "tmp" / "sha256-cut.0123456789ab", 4 << 20, b"0123456789")

    def refused(path: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("docxy.cache.blobs._unlink", refused)
    store = DiskBlobStore.open(root, 1 << 30)
    assert store.usage().freeing == held


# --- 4. gc as root beside leftovers of an older root run --------------------------------------


@pytest.fixture
def reachable_cache() -> Iterator[Populated]:
    """A cache any user may reach (pytest's own directories are root's, mode 0700)."""
    top = Path(tempfile.mkdtemp(prefix="docxy-cachedir-"))
    try:
        os.chmod(top, 0o711)
        yield asyncio.run(_populate(top / "cache"))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_gc_as_root_does_the_rest_and_names_what_it_could_not_remove(
    capsys: pytest.CaptureFixture[str], reachable_cache: Populated
) -> None:
    """Run as root, gc acts as the cache's owner; a ``tmp/`` an older root run left root's
    refused it: gc stopped there, before the stray files, and said only that the disk refused.
    Now it does the rest, names the paths, and the one command that hands them over."""
    cache = reachable_cache
    tmp = cache.root / "tmp"
    leftover = tmp / "sha256-root.0123456789ab"
    leftover.write_bytes(b"left by root")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    stray = cache.root / "blobs" / "sha256" / "stray-file"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not a blob")
    if os.getuid() == 0:
        for top, dirs, files in os.walk(cache.root):
            for name in (top, *(os.path.join(top, each) for each in dirs + files)):
                os.chown(name, 4242, 4242)
        os.chown(tmp, 0, 0)  # the older root run's
        os.chown(leftover, 0, 0)
        os.chmod(tmp, 0o755)
        owner = "4242:4242"
    else:
        os.chmod(tmp, 0o555)
        owner = f"{os.getuid()}:{os.getgid()}"
    try:
        code, out, err = run(capsys, cache, "gc")
        if os.getuid() != 0 and os.access(tmp, os.W_OK):
            skip_or_fail("a directory of mode 0555 is writable here: no refusal to show")
    finally:
        os.chmod(tmp, 0o755)
    assert code == 1, err
    assert not stray.exists(), out + err  # the rest was done
    assert _row(out, "stray files removed") == "1"
    assert leftover.exists()
    assert str(leftover) in err
    assert f"chown -R {owner} {cache.root}" in err
