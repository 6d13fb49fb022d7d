"""The serving start's removal of leftover manifest records (review s3's note on 87a957c): a
cache whose record files another owner made (a root run's, before the CLI acted as the cache's
owner) or on a disk refusing deletes logged one WARNING per leftover at every start, hundreds of
lines for a large cache, with nothing saying what to do about them."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from docxy.cache import open_cache
from docxy.cache.visibility import AccessIndex
from tests.unit.test_cachecli import _populate
from tests.unit.test_review_cache8 import _paths

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def _restart(root: Path, metas: list[Path]) -> None:
    async def restart() -> None:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        for _ in range(100):  # the delete runs in a worker thread; bounded
            await asyncio.sleep(0.02)
            if all(not meta.exists() for meta in metas):
                break

    asyncio.run(restart())


def test_leftovers_the_disk_refuses_to_delete_are_said_once_with_what_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    metas = []
    for name in ("busybox", "alpine"):
        manifest, meta, _ = _paths(pop, name)
        os.unlink(manifest)  # deletes cut short: the .json and records are left
        metas.append(meta)

    def refused(self: AccessIndex, upstream: str, digest: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(AccessIndex, "forget_digest", refused)
    with caplog.at_level(logging.INFO, logger="docxy.cache"):
        _restart(pop.root, [])
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]
    text = said[0].getMessage()
    assert "2 manifests" in text and "EPERM" in text
    assert "docxy cache gc" in text, text
    assert all(meta.exists() for meta in metas)  # kept: nothing removed wrongly


def test_leftovers_removed_are_still_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A guard, passing before the mend too."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop, "busybox")
    os.unlink(manifest)
    with caplog.at_level(logging.INFO, logger="docxy.cache"):
        _restart(pop.root, [meta])
    assert not meta.exists() and not access.exists()
    assert [r.getMessage() for r in caplog.records if "records of" in r.getMessage()] == [
        "cache: deleted the records of 1 manifests not cached"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
