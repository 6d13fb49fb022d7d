"""Manifests on the pull path (``docxy.pull.manifests``) when the cache cannot keep them."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from docxy.cache import manifests
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_scoped_blobs import AS_ANON, DOCKER_MANIFEST, Hub, mirror

TAG = "/v2/library/base/manifests/1"


def full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_cache_disk_serves_manifests_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for blobs, a cache that cannot write degrades to serving uncached: the manifest the
    mirror fetched (and verified) reaches the client, never a 500."""
    hub = Hub()
    expected = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        monkeypatch.setattr(manifests, "write_atomic", full_disk)
        head = await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=AS_ANON.items())
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(expected))
        for _ in range(2):  # nothing kept: the second pull fetches again
            response = await app.test_client().get(TAG, headers=AS_ANON)
            assert response.status_code == 200
            assert await response.get_data() == expected
            assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert hub.seen("GET", "manifests") == [TAG] * 2


async def test_a_tag_resolved_by_head_to_a_manifest_cached_for_another_repository_is_cached(
    tmp_path: Path,
) -> None:
    """containerd resolves a tag by HEAD (the mirror then notes the tag) before it GETs; when
    that digest is cached already, but for another repository, the tag's next GET must fetch
    it for this repository once and serve it from the cache after, not pass every GET
    through to the upstream (a counted pull each, and nothing to serve if it goes down)."""
    hub = Hub()
    same = hub.repos["library/base"].manifests["1"]
    hub.repos["library/app"].manifests["1"] = same  # one image under two names
    copy = "/v2/library/app/manifests/1"
    async with mirror(tmp_path, hub) as app:
        assert (await app.test_client().get(TAG, headers=AS_ANON)).status_code == 200
        head = await call_asgi(app, "HEAD", copy, host="mirror.test", headers=AS_ANON.items())
        assert head.status == 200
        for _ in range(3):
            response = await app.test_client().get(copy, headers=AS_ANON)
            assert response.status_code == 200
            assert await response.get_data() == same
        assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
        assert hub.seen("GET", "manifests") == [TAG, copy]  # fetched once for each name
        hub.down = True
        response = await app.test_client().get(copy, headers=AS_ANON)
        assert response.status_code == 200
