"""Opening the cache at start (docxy.http.app.open_store): what it tells the user."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import load_config
from docxy.http.app import open_store


@pytest.mark.parametrize(("written", "warned"), [("20", True), ("512K", True), ("1M", False)])
def test_a_cache_size_of_a_few_bytes_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, written: str, warned: bool
) -> None:
    """``cache.max_size = 20`` is 20 bytes (a unit left off, most likely): the cache then keeps
    nothing, silently, unless the start says so."""
    config = load_config(
        {"upstream.registry": "http://127.0.0.1:5000", "cache.dir": str(tmp_path)},
        environ={"DOCXY_CACHE_MAX_SIZE": written},
    )
    with caplog.at_level("WARNING", logger="docxy"):
        cache = open_store(config)
    assert cache.blobs.max_size == config.cache.max_size
    said = [r.getMessage() for r in caplog.records if "cache.max_size" in r.getMessage()]
    assert bool(said) is warned
    if warned:
        assert said[0].startswith(f"cache.max_size is {config.cache.max_size} bytes (")
        assert "DOCXY_CACHE_MAX_SIZE" in said[0]
