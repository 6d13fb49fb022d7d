"""Faults of the blob cache a review left (``docxy.cache.fill``, ``docxy cache gc``): each test
makes the fault happen on purpose (an EIO from a failing disk, a delete the disk refuses) and
shows what a client of the mirror, or its operator, would see."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FillAborted
from docxy.cache.files import BlobFile
from docxy.cache.fill import BlobFollower, BlobWriter, Download
from docxy.core.digests import Digest, digest_of
from tests.unit import fakes
from tests.unit.test_cache_blobs import as_follower, as_writer, guard, make_store
from tests.unit.test_cachecli import _populate, run
from tests.unit.test_cachecli_endings import report_of

SIZE = 300_000
PIECE = 100_000


async def _no_close() -> None:
    pass


class Upstream:
    """A follower's ``rest``: ``data`` from an offset on, in pieces; ``asked`` records each
    offset it was asked from."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int] = []

    async def __call__(self, offset: int, size: int | None) -> Download:
        self.asked.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(offset, len(self.data), 70_000):
                yield self.data[start : start + 70_000]

        return Download(len(self.data) - offset, chunks(), _no_close)


class FailingReads:
    """``BlobFile.pread`` on a failing disk: EIO for a read from ``offset`` on (a bad sector
    there), or for every read once ``dead`` is set (the whole disk failed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, offset: int, *, dead: bool = False) -> None:
        self.offset, self.dead, self.failed = offset, dead, 0
        real = BlobFile.pread

        def pread(file: BlobFile, length: int, offset: int) -> bytes:
            if self.dead or offset >= self.offset:
                self.failed += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(file, length, offset)

        monkeypatch.setattr(BlobFile, "pread", pread)


async def _midway(
    store: DiskBlobStore, data: bytes, upstream: Upstream
) -> tuple[BlobWriter, BlobFollower, AsyncIterator[bytes], bytes]:
    """A fill with a follower (its ``rest``: ``upstream``) that has taken the first piece but
    its last byte (held back until the whole is verified)."""
    digest = digest_of(data)
    writer = await as_writer(store, digest)
    follower = await as_follower(store, digest)
    follower.rest = upstream
    writer.announce(len(data))
    await writer.write(data[:PIECE])
    chunks = aiter(follower)
    first = await guard(anext(chunks))
    assert first == data[: PIECE - 1]
    return writer, follower, chunks, first


def _warnings(caplog: pytest.LogCaptureFixture, digest: Digest) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and str(digest) in r.getMessage()
    ]


async def test_a_follower_whose_temp_file_read_fails_gets_the_rest_from_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The follower's read of the fill's temp file fails (EIO: a bad sector past what it
    read): its client was cut (the read's OSError, a StreamCut since d3eccde), though the cache
    passes a blob through when the disk fails, and a follower of a fill the cache gave up gets
    the rest from the upstream. Now it does so here too: the rest asked from the byte it got
    to, the whole verified against the digest (the bytes it had re-hashed from the temp file,
    which reads there), one WARNING; the fill, whose writes work, goes on and is cached."""
    caplog.set_level(logging.INFO, logger="docxy")
    store, data = make_store(tmp_path), os.urandom(SIZE)
    digest, upstream = digest_of(data), Upstream(data)
    writer, follower, chunks, first = await _midway(store, data, upstream)
    FailingReads(monkeypatch, len(first))
    await writer.write(data[PIECE : 2 * PIECE])  # more in the temp file, unreadable there
    rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == data
    assert upstream.asked == [len(first)] and follower.handover.at == len(first)
    [said] = _warnings(caplog, digest)
    assert f"byte {len(first)}" in said and "from the upstream" in said, said
    await writer.write(data[2 * PIECE :])
    entry = await guard(writer.commit(len(data)))
    assert entry is not None and entry.path.read_bytes() == data  # the fill went on


async def test_a_follower_on_a_dead_disk_verifies_the_rest_with_the_upstreams_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every read of the temp file fails now, the re-read of the bytes the client had too:
    those cannot be hashed from the disk, so the upstream is asked from byte 0 and its first
    bytes are hashed, not sent again. The client gets the whole blob, verified; one WARNING."""
    caplog.set_level(logging.INFO, logger="docxy")
    store, data = make_store(tmp_path), os.urandom(SIZE)
    digest, upstream = digest_of(data), Upstream(data)
    writer, follower, chunks, first = await _midway(store, data, upstream)
    reads = FailingReads(monkeypatch, len(first), dead=True)
    await writer.write(data[PIECE : 2 * PIECE])
    rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == data
    assert reads.failed == 2  # its read, then the re-read to hash what it had
    assert upstream.asked == [0] and follower.handover.at == len(first)
    [said] = _warnings(caplog, digest)
    assert "from byte 0" in said, said
    writer.abort("test over")


@pytest.mark.parametrize("dead", [False, True], ids=["bad-sector", "dead-disk"])
async def test_a_rest_after_a_failed_temp_file_read_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead: bool
) -> None:
    """The upstream's rest is not the blob's (a byte flipped): the client is cut before the
    last byte, never handed a whole wrong blob."""
    store, data = make_store(tmp_path), os.urandom(SIZE)
    wrong = bytearray(data)
    wrong[SIZE // 2] ^= 0xFF
    writer, _follower, chunks, first = await _midway(store, data, Upstream(bytes(wrong)))
    FailingReads(monkeypatch, len(first), dead=dead)
    await writer.write(data[PIECE : 2 * PIECE])
    got = [first]
    with pytest.raises(FillAborted, match="hashes to"):
        async for chunk in chunks:
            got.append(chunk)
    assert len(b"".join(got)) == SIZE - 1
    writer.abort("test over")


async def test_a_follower_of_a_given_up_fill_whose_kept_bytes_cannot_be_read_gets_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fill is given up (its next write fails) and its follower reads the kept bytes from
    the temp file: that read fails (EIO). It raised the OSError (the client cut); now the rest
    comes from the upstream from the byte the follower got to, verified."""
    caplog.set_level(logging.INFO, logger="docxy")
    store, data = make_store(tmp_path), os.urandom(SIZE)
    digest, upstream = digest_of(data), Upstream(data)
    writer, follower, chunks, first = await _midway(store, data, upstream)
    FailingReads(monkeypatch, len(first))
    monkeypatch.setattr(fill_module, "write_all", fakes.DiskFullAfter(0, errno.EIO))
    await writer.write(data[PIECE : 2 * PIECE])  # fails: the fill keeps its first PIECE
    assert writer.fill.kept == PIECE
    rest = [chunk async for chunk in chunks]
    assert first + b"".join(rest) == data
    assert upstream.asked == [len(first)] and follower.handover.at == len(first)
    assert any(f"byte {len(first)}" in said for said in _warnings(caplog, digest)), caplog.text
    writer.abort("test over")


# --- docxy cache gc: a temp file the disk refuses to delete -------------------------------------


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EIO], ids=errno.errorcode.get)
def test_gc_counts_the_temp_files_it_removed_before_the_disk_refused_one(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    """Three old temp files (a dead mirror's fills); the disk refuses to delete the third
    (another owner's file, a failing disk). gc's report said "temp files removed: 0" and freed
    nothing although two were gone: the count was only set once every temp file was removed.
    Now it counts what went; the file the disk refused is named, with why, and (since
    test_review_cachedir) gc does the rest, then exits 1: for a file of another owner, it says
    the one chown that hands it over."""
    cache = asyncio.run(_populate(tmp_path / "cache"))
    old = time.time() - 7200
    held = 0
    for n in range(3):
        path = cache.root / "tmp" / f"sha256-dead{n}.123"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (old, old))
        held += path.stat().st_blocks * 512 if n < 2 else 0
    unlink = os.unlink
    tried: list[Path] = []

    def refusing(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == cache.root / "tmp":
            tried.append(Path(path))
            if len(tried) == 3:
                raise OSError(code, os.strerror(code), str(path))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refusing)
    exit_code, out, err = run(capsys, cache, "gc")
    assert exit_code == 1
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines[0] == f"docxy cache gc: cannot remove {tried[2]}: {os.strerror(code)}", err
    owners = code in (errno.EACCES, errno.EPERM)
    assert len(lines) == (2 if owners else 1), err
    assert ("chown -R" in err) == owners, err
    assert [path.exists() for path in tried] == [False, False, True]
    report = report_of(out)
    assert report["temp files removed"] == "2"
    assert report["freed"].endswith(f"({held} bytes)"), out
    assert report["not removed"] == "1 (the disk refused: see above; the rest done)", out
    assert "stopped" not in report, out
