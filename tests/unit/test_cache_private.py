"""The cache directory the mirror makes is its user's alone: what the mirror's upstream login
may read (private repositories included) is not for other local users to list or read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from docxy.cache import open_cache
from docxy.cache.files import make_private


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_cache_dir_the_mirror_makes_is_for_its_user_alone(tmp_path: Path) -> None:
    root = tmp_path / "home" / ".cache" / "docxy"  # its parents missing too, as on a new user
    old = os.umask(0o022)  # the usual umask, which gave 0755
    try:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
    finally:
        os.umask(old)
    assert mode_of(root) == 0o700
    assert mode_of(root.parent) == 0o755  # parents as mkdir -p makes them: not the cache's
    assert (root / "blobs").is_dir()  # and the cache works in it


async def test_a_cache_dir_that_exists_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o750)  # its owner chose (a group that backs it up)
    cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
    await cache.manifests.loaded()
    assert mode_of(root) == 0o750


def test_a_dir_that_cannot_be_made_is_left_to_the_start_to_report(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    make_private(blocker / "cache")  # raises nothing: the cache's own start says what is wrong
    assert not (blocker / "cache").exists()
