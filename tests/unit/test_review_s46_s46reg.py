"""Review s46 (s46reg): faults of the session's changes (1624707..s46)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from docxy.config import load_config
from docxy.http.app import open_store


async def test_the_cache_dir_docxy_serve_makes_is_for_its_user_alone(tmp_path: Path) -> None:
    """README (threat model): the mirror makes a `cache.dir` that does not exist yet for its
    own user alone (0700). `docxy serve` opens the cache through open_store, which makes the
    directory first (mkdir -p, 0755 under umask 022): make_private then finds it there and
    leaves it readable by every local user."""
    root = tmp_path / "home" / ".cache" / "docxy"
    config = load_config({"upstream.registry": "http://127.0.174.1:15901", "cache.dir": str(root)})
    old = os.umask(0o022)
    try:
        cache = open_store(config)
        await cache.manifests.loaded()
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
