"""How ``docxy cache rm --blobs`` and ``docxy cache gc`` end when they cannot do it all: a blob
whose images the disk refuses to delete, a manifest gc may not evict, a Ctrl-C or a SIGTERM.
Each goes on where it can, and every ending says what was done (and what was not)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from docxy.cache import BlobEntry, DiskBlobStore
from docxy.cache import blobs as blobs_module
from docxy.cache import manifests as manifests_module
from docxy.cache.files import unlink_quietly
from tests.unit.test_cache_blobs import GUARD
from tests.unit.test_cachecli import Populated, _populate, run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


def refuse(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """The disk refuses to delete the manifest files named ``names`` (another owner's)."""
    unlink = unlink_quietly

    def refusing(path: Path) -> None:
        if path.name in names:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(manifests_module, "unlink_quietly", refusing)


def report_of(out: str) -> dict[str, str]:
    """gc's report: ``key: value`` lines."""
    return {key: value.strip() for key, value in (line.split(":", 1) for line in out.splitlines())}


def leftovers(cache: Populated) -> None:
    """A stray file and an old temp file: what gc removes before it verifies or evicts."""
    (cache.root / "blobs" / "stray.txt").write_text("not a blob")
    old = cache.root / "tmp" / "sha256-dead.123"
    old.write_bytes(b"half a fill")
    os.utime(old, (time.time() - 7200, time.time() - 7200))


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    """A SIGTERM the command does not handle raises here instead of ending the test run."""

    class Terminated(Exception):
        pass

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated("SIGTERM reached the test: the command did not handle it")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- 1. a blob whose images the disk keeps: the others go on ----------------------------------


def test_rm_blobs_goes_on_past_a_blob_whose_image_the_disk_keeps(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hello is an index of two platforms; the disk refuses to delete the amd64 platform's
    manifest. rm --blobs stopped at the first of its blobs (one line, exit 1): the arm64 blobs
    stayed, and nothing said what was removed and what was kept."""
    amd64, _arm64 = cache.children
    refuse(monkeypatch, amd64.hex)
    code, out, err = run(capsys, cache, "rm", "docker.io/library/hello:latest", "--blobs")
    assert code == 1
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err  # one refusal (met by both blobs), said once
    assert err.rstrip().endswith(f"{amd64.hex} Permission denied"), err
    assert not cache.blob_path("arm64-cfg").exists() and not cache.blob_path("arm64-l").exists()
    assert cache.blob_path("amd64-cfg").exists() and cache.blob_path("amd64-l").exists()
    lines = out.splitlines()
    for name in ("arm64-cfg", "arm64-l"):
        assert any(line.startswith(f"removed blob {cache.blobs[name]}") for line in lines), out
    for name in ("amd64-cfg", "amd64-l"):
        assert any(line.startswith(f"kept blob {cache.blobs[name]}") for line in lines), out
    assert any(line.startswith("freed ") for line in lines), out
    assert re.search(r"^not removed: 2 blobs .*\(the disk refused: see above\)$", out, re.M), out


def test_gc_verify_goes_on_past_a_corrupt_blob_whose_image_the_disk_keeps(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both platforms' layers are corrupt; the amd64 platform's manifest may not be deleted.
    gc --verify stopped there in one line: no report (the stray file it had removed, the
    other corrupt blob it had or had not removed), the rest not verified."""
    amd64, _arm64 = cache.children
    leftovers(cache)
    cache.blob_path("amd64-l").write_bytes(b"bit rot")
    cache.blob_path("arm64-l").write_bytes(b"bit rot")
    refuse(monkeypatch, amd64.hex)
    with caplog.at_level(logging.WARNING, logger="docxy.cache.blobs"):
        code, out, err = run(capsys, cache, "gc", "--verify")
    assert code == 1
    assert "Traceback" not in err
    report = report_of(out)
    assert report["temp files removed"] == "1"
    assert report["stray files removed"] == "1"
    assert report["corrupt blobs removed"] == "1"
    assert report["corrupt blobs kept"] == "1 (the disk refused: see above)"
    assert not cache.blob_path("arm64-l").exists()
    assert cache.blob_path("amd64-l").exists()  # its image needs it, and is still cached
    kept = [r for r in caplog.records if str(cache.blobs["amd64-l"]) in r.getMessage()]
    assert len(kept) == 1 and "Permission denied" in kept[0].getMessage(), caplog.text


# --- 2. interrupted: the report of what was done so far -------------------------------------


def test_gc_interrupted_by_ctrl_c_reports_what_it_did_and_exits_130(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while gc --verify re-hashes the second blob: the first was found corrupt and
    removed, the stray and temp files before it. gc said only "docxy: interrupted"."""
    leftovers(cache)
    calls: list[BlobEntry] = []

    def hashing(entry: BlobEntry, stop: threading.Event) -> bool:
        calls.append(entry)
        if len(calls) == 1:
            return False  # corrupt: removed
        os.kill(os.getpid(), signal.SIGINT)
        stop.wait(GUARD)  # set when gc is cancelled
        return True

    monkeypatch.setattr(blobs_module, "_hash_matches", hashing)
    code, out, err = run(capsys, cache, "gc", "--verify")
    assert code == 130
    assert "Traceback" not in err
    report = report_of(out)
    assert report["interrupted"].startswith("by SIGINT"), out
    assert report["temp files removed"] == "1"
    assert report["stray files removed"] == "1"
    assert report["corrupt blobs removed"] == "1"
    assert not calls[0].path.exists()
    assert len(calls) == 2  # the rest was not verified


@pytest.mark.usefixtures("sigterm_raises")
def test_gc_terminated_mid_eviction_reports_what_it_evicted_and_exits_143(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM (systemd stopping the unit, a container stop) while gc evicts: it ended with
    no word, and the blobs taken off their names before it were left in tmp/, not freed."""
    drop = DiskBlobStore._drop
    dropped: list[BlobEntry] = []

    def dropping(self: DiskBlobStore, entry: BlobEntry) -> Path | None:
        if not dropped:
            signal.raise_signal(signal.SIGTERM)  # handled here: the next await is cancelled
        dropped.append(entry)
        return drop(self, entry)

    monkeypatch.setattr(DiskBlobStore, "_drop", dropping)
    code, out, err = run(capsys, cache, "gc", "--set", "cache.max_size=1")
    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in err
    report = report_of(out)
    assert report["interrupted"].startswith("by SIGTERM"), out
    evicted = int(report["blobs evicted"])
    assert evicted == len(dropped) > 0
    assert not any(entry.path.exists() for entry in dropped)
    assert [p.name for p in (cache.root / "tmp").iterdir()] == []  # freed, not left in tmp/
    freed = int(report["freed"].split("(")[1].split()[0])
    assert freed == sum(entry.size for entry in dropped)


# --- 3. stopped at a manifest gc may not delete: the report all the same ----------------------


def test_gc_stopped_by_a_manifest_the_disk_keeps_reports_what_it_did(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eviction meets a manifest the disk refuses to delete and stops there (none of its
    blobs goes): gc said so in one line, and not that it had removed the stray and temp
    files before."""
    leftovers(cache)
    unlink = unlink_quietly

    def refusing(path: Path) -> None:  # every manifest's file is another owner's
        if "by-digest" in path.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        unlink(path)

    monkeypatch.setattr(manifests_module, "unlink_quietly", refusing)
    code, out, err = run(capsys, cache, "gc", "--set", "cache.max_size=1")
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"docxy cache gc: cannot change {cache.root}: "), err
    assert lines[0].endswith(" Permission denied"), err
    report = report_of(out)
    assert report["temp files removed"] == "1"
    assert report["stray files removed"] == "1"
    assert report["blobs evicted"].startswith("0"), out
    assert "stopped" in report, out
    assert all(cache.blob_path(name).exists() for name in cache.blobs)
