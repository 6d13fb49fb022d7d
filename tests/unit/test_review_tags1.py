"""A cached tag past ``cache.tag_ttl`` whose revalidation ``HEAD`` the registry refuses (a
``405``, a ``400``: HEAD not supported there) is revalidated with the mirror's own ``GET``, as
for a ``HEAD`` that names no digest: stored, the tag moved, not passed through for good. A
``404`` to that ``HEAD`` still says the tag is gone."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.config import load_config
from docxy.http.app import create_app
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import FakeUpstream

OCI_M = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = [("Accept", OCI_M)]
REPO = "team/app"
PATH = f"/v2/{REPO}/manifests/latest"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(layers: list[bytes]) -> bytes:
    config = b"{}"
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_M,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": len(config),
                "digest": _sha(config),
            },
            "layers": [
                {"mediaType": "application/octet-stream", "size": len(x), "digest": _sha(x)}
                for x in layers
            ],
        }
    ).encode()


class Registry:
    """One repository's tags; a manifest ``HEAD`` answered ``head_status`` when set."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.manifests: dict[str, bytes] = {}
        self.head_status: int | None = None
        self.down = False
        self.log: list[tuple[str, str]] = []

    def add(self, tag: str, body: bytes) -> str:
        digest = _sha(body)
        self.manifests[digest] = body
        self.tags[tag] = digest
        return digest

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        self.log.append((request.method, path))
        if self.down:
            raise httpx.ConnectError("down", request=request)
        if request.method == "HEAD" and self.head_status is not None:
            error = {"errors": [{"code": "UNSUPPORTED", "message": "no HEAD here"}]}
            return httpx.Response(self.head_status, json=error)
        ref = path.rsplit("/", 1)[-1]
        digest = self.tags.get(ref, ref)
        body = self.manifests.get(digest)
        if body is None:
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
            return httpx.Response(404, json=error)
        headers = {
            "Content-Type": OCI_M,
            "Content-Length": str(len(body)),
            "Docker-Content-Digest": digest,
        }
        return httpx.Response(
            200, headers=headers, content=b"" if request.method == "HEAD" else body
        )


def _app(tmp_path: Path, registry: Registry) -> Any:
    config = load_config(
        {
            "upstream.registry": "https://registry.test",
            "cache.dir": str(tmp_path / "cache"),
            "cache.tag_ttl": "1",
        },
        environ={},
    )
    transport = httpx.MockTransport(FakeUpstream(registry))
    return create_app(config, probe=False, transport=transport)


async def _pull(app: Any, method: str = "GET") -> AsgiAnswer:
    return await call_asgi(app, method, PATH, host="mirror.test", headers=ACCEPT)


def _gets(registry: Registry) -> int:
    return sum(1 for method, path in registry.log if method == "GET" and path == PATH)


@pytest.mark.parametrize("status", [405, 400])
async def test_a_refused_head_revalidates_a_stale_tag_with_the_mirrors_get(
    tmp_path: Path, status: int
) -> None:
    registry = Registry()
    old = registry.add("latest", _manifest([b"one"]))
    app = _app(tmp_path, registry)
    async with app.test_app():
        first = await _pull(app)
        assert first.status == 200
        assert first.headers.get("docker-content-digest") == old
        registry.head_status = status
        new = registry.add("latest", _manifest([b"one", b"two"]))
        await asyncio.sleep(1.1)  # past cache.tag_ttl
        registry.log.clear()
        moved = await _pull(app)
        assert moved.status == 200
        assert moved.headers.get("docker-content-digest") == new
        assert "bypass" not in (moved.headers.get("cache-status") or "")
        assert _gets(registry) == 1  # the mirror's own GET, stored
        registry.log.clear()
        again = await _pull(app)  # within the ttl again: a hit, nothing upstream
        assert again.status == 200
        assert again.headers.get("docker-content-digest") == new
        assert registry.log == []
        await asyncio.sleep(1.1)
        registry.down = True  # an outage serves the tag the clients last got
        stale = await _pull(app)
        assert stale.status == 200
        assert stale.headers.get("docker-content-digest") == new


async def test_a_404_to_the_revalidation_head_still_says_the_tag_is_gone(
    tmp_path: Path,
) -> None:
    registry = Registry()
    registry.add("latest", _manifest([b"one"]))
    app = _app(tmp_path, registry)
    async with app.test_app():
        assert (await _pull(app)).status == 200
        del registry.tags["latest"]
        await asyncio.sleep(1.1)
        registry.log.clear()
        gone = await _pull(app)
        assert gone.status == 404
        assert b"MANIFEST_UNKNOWN" in gone.body
        assert registry.log == [("HEAD", PATH)]  # no GET after the registry's 404
        registry.down = True  # forgotten: an outage does not bring it back
        after = await _pull(app)
        assert after.status != 200
