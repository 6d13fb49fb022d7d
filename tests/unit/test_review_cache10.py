"""Review s3 of the leftover clean-up (test_review_cache8): one record folder ``docxy cache
gc`` could not list stopped the whole gc, its blob part never run; gc removed the records of a
manifest it found uncached however young, so a live mirror's put that cached it meanwhile lost
its record; and a record renamed into a folder while the eviction deleted it (a put or a
confirm racing it) made the eviction fail and the manifest be kept as undeletable."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from docxy.cache.visibility import _missing_ok
from tests.unit.test_cachecli import _populate
from tests.unit.test_review_cache8 import _age, _gc, _paths


def test_a_record_folder_gc_cannot_list_stops_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    _, _, access = _paths(pop, "alpine")
    stray = pop.root / "tmp" / "sha256-stray.partial"
    stray.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stray, (old, old))
    listing = Path.iterdir

    def refused(self: Path):  # type: ignore[no-untyped-def]
        if self == access:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    _gc(pop.root)
    out = capsys.readouterr().out
    assert not stray.exists(), out  # the blob part ran
    assert "stopped" not in out


def test_gc_leaves_a_young_record_of_a_manifest_it_finds_uncached(tmp_path: Path) -> None:
    """A live mirror's put writes the manifest's file, then its record: gc, beside it, saw
    no file and took the record it listed after."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop, "busybox")
    os.unlink(manifest)  # as gc saw it, just before the put's file landed
    young = list(access.iterdir())
    assert _gc(pop.root) == 0
    assert all(path.exists() for path in young)
    _age(*young)
    assert _gc(pop.root) == 0
    assert not access.exists()  # an hour old: a leftover


def test_a_record_renamed_in_while_its_folder_is_deleted_is_no_failure(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    busy = OSError(errno.ENOTEMPTY, "Directory not empty")
    _missing_ok(os.rmdir, str(folder), (OSError, busy, None))  # no raise
    refused = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(PermissionError) as raised:
        _missing_ok(os.rmdir, str(folder), (PermissionError, refused, None))
    assert raised.value.filename == str(folder)
