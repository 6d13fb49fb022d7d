"""``docxy cache gc`` beside a live mirror keeps the blobs of the manifests the mirror stores
after gc read its catalogue (review a4): else it evicted an older image with a layer the new one
shares, and with the upstream down the new image's pull failed half-way, at that layer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from docxy.cache import open_for_admin
from docxy.config import load_config
from docxy.http.app import create_app
from tests.unit.asgi import call_asgi
from tests.unit.fakes import FakeUpstream

OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
ACCEPT = [("Accept", f"{OCI_I}, {OCI_M}")]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(config: bytes, layers: list[bytes]) -> bytes:
    def desc(media: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media, "size": len(data), "digest": sha(data)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_M,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers],
        }
    ).encode()


@dataclass
class Registry:
    """An upstream holding ``tags`` → manifests and ``blobs``; ``down``: every request fails."""

    tags: dict[str, bytes] = field(default_factory=dict)  # "repo:tag" -> manifest
    blobs: dict[str, bytes] = field(default_factory=dict)
    down: bool = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("down", request=request)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        repo, kind, ref = path[4:].rsplit("/", 2)
        body = self.tags.get(f"{repo}:{ref}") if kind == "manifests" else self.blobs.get(ref)
        if body is None:
            return httpx.Response(404, json={"errors": [{"code": "UNKNOWN", "message": "x"}]})
        media = OCI_M if kind == "manifests" else "application/octet-stream"
        headers = {"Content-Type": media, "Docker-Content-Digest": sha(body)}
        return httpx.Response(200, headers=headers, content=body)


async def pull(app: object, repo: str, ref: str) -> str:
    """``whole``, or the first step that failed and its status."""
    got = await call_asgi(app, "GET", f"/v2/{repo}/manifests/{ref}", host="m.test", headers=ACCEPT)
    if got.status != 200:
        return f"manifest {got.status}"
    doc = json.loads(got.body)
    for desc in [doc["config"], *doc["layers"]]:
        path = f"/v2/{repo}/blobs/{desc['digest']}"
        blob = await call_asgi(app, "GET", path, host="m.test", headers=ACCEPT)
        if blob.status != 200:
            return f"blob {desc['digest']} {blob.status}"
    return "whole"


def two_images(tmp_path: Path) -> tuple[Registry, Any]:
    """An upstream with images a and b sharing a 2000-byte layer (a: 4010 bytes, b: 2010),
    and a mirror of it caching in ``tmp_path/cache``."""
    reg = Registry()
    shared, conf_a, conf_b, only_a = (os.urandom(n) for n in (2000, 10, 10, 2000))
    for blob in (shared, conf_a, conf_b, only_a):
        reg.blobs[sha(blob)] = blob
    reg.tags["team/a:1"] = manifest(conf_a, [shared, only_a])
    reg.tags["team/b:1"] = manifest(conf_b, [shared])
    config = load_config(
        {"upstream.registry": "https://registry.test", "cache.dir": str(tmp_path / "cache")},
        environ={},
    )
    return reg, create_app(config, probe=False, transport=httpx.MockTransport(FakeUpstream(reg)))


async def test_gc_keeps_the_layers_of_an_image_stored_after_it_read_its_catalogue(
    tmp_path: Path,
) -> None:
    reg, app = two_images(tmp_path)
    async with app.test_app():
        assert await pull(app, "team/a", "1") == "whole"
        admin = open_for_admin(tmp_path / "cache", max_size=3000, tag_ttl=300)
        await admin.manifests.loaded()  # gc's catalogue: image a only
        assert await pull(app, "team/b", "1") == "whole"  # b stored meanwhile, sharing a layer
        await admin.blobs.gc(evict=True)  # 4020 bytes down to 3000: a goes, not b's layer
        reg.down = True
        assert await pull(app, "team/b", "1") == "whole"
        assert await pull(app, "team/a", "1") == "manifest 502"  # evicted: fails at its start


async def test_gc_keeps_the_layers_of_an_image_stored_while_it_evicts(tmp_path: Path) -> None:
    """b is stored after gc planned (its plan: image a, with the shared layer), before it
    deletes a's blobs."""
    reg, app = two_images(tmp_path)
    async with app.test_app():
        assert await pull(app, "team/a", "1") == "whole"
        admin = open_for_admin(tmp_path / "cache", max_size=3000, tag_ttl=300)
        evict_images = admin.manifests.evict_images

        async def evict_then_mirror_stores_b(keys: Any) -> None:
            await evict_images(keys)  # a's manifest is gone; its blobs are next
            assert await pull(app, "team/b", "1") == "whole"

        admin.manifests.evict_images = evict_then_mirror_stores_b  # type: ignore[method-assign]
        await admin.blobs.gc(evict=True)
        reg.down = True
        assert await pull(app, "team/b", "1") == "whole"
        assert await pull(app, "team/a", "1") == "manifest 502"
