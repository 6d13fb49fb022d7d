"""How ``docxy cache rm --blobs`` and ``docxy cache gc`` end when they cannot do it all: a blob
whose images the disk refuses to delete, a manifest gc may not evict, a Ctrl-C or a SIGTERM.
Each goes on where it can, and every ending says what was done (and what was not)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
from pathlib import Path

import pytest

from docxy.cache import manifests as manifests_module
from docxy.cache.files import unlink_quietly
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
