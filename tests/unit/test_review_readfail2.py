"""While the blob index read at start stays failed (review s45 r6), a blob miss (a fill:
reserve awaits indexed()) and /health are still answered: /health was a 500 (usage() and
index_complete raised the read's error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache import Cache
from docxy.cache.blobs import DiskBlobStore
from docxy.config import load_config
from docxy.http.app import create_app
from tests.unit.test_cache_blobs import guard
from tests.unit.test_cache_eviction import layer
from tests.unit.test_cache_images import Registry
from tests.unit.test_cache_images import pull as pull_through
from tests.unit.test_review_readfail import FailsOnce, short_pause  # noqa: F401

pytestmark = pytest.mark.asyncio


def _app(tmp_path: Path, registry: Registry) -> Any:
    overrides = {
        "upstream.registry": "https://registry.test",
        "server.public_url": "https://mirror.test",
        "cache.dir": str(tmp_path / "cache"),
    }
    config = load_config(overrides, environ={})
    return create_app(config, probe=False, transport=httpx.MockTransport(registry))


async def test_miss_pull_while_index_read_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    registry.add("team/a", [layer("cfg", 1024), layer("l", 4096)])
    registry.add("team/b", [layer("cfgb", 1024), layer("lb", 4096)])
    app = _app(tmp_path, registry)
    async with app.test_app():
        assert await pull_through(app.test_client(), "team/a") == [200, 200, 200]
        await guard(app.extensions["docxy"].cache.blobs.commits_done())
    FailsOnce(monkeypatch, DiskBlobStore, "_walk")
    app = _app(tmp_path, registry)
    async with app.test_app():
        client = app.test_client()
        cache: Cache = app.extensions["docxy"].cache
        with pytest.raises(OSError):
            await guard(cache.blobs.indexed())
        # team/b never cached: its blobs are fills, which reserve room (awaits indexed())
        assert await pull_through(client, "team/b") == [200, 200, 200]


async def test_health_while_index_read_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    registry.add("team/a", [layer("cfg", 1024), layer("l", 4096)])
    FailsOnce(monkeypatch, DiskBlobStore, "_walk")
    app = _app(tmp_path, registry)
    async with app.test_app():
        client = app.test_client()
        cache: Cache = app.extensions["docxy"].cache
        with pytest.raises(OSError):
            await guard(cache.blobs.indexed())
        r = await client.get("/health")
        assert r.status_code == 200, (r.status_code, await r.get_data())
