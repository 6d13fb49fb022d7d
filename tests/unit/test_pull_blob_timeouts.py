"""A blob miss whose fetch got nothing in time: answered at once when the registry itself was
silent (the client's own request would wait as long), passed through when a host it redirected
to was (a CDN: the next node may answer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.asgi import call_asgi
from tests.unit.test_multi_routes import PUBLIC, SHARED, SHARED_DIGEST, registries
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import BASE, HOST, Hub, blob_url, get
from tests.unit.turns import until

CDN = "cdn.test"
PATH = blob_url("library/base", BASE)


class SilentBlobs(Hub):
    """The hub, whose blob GETs get nothing in time (``silent``), or are redirected to a CDN
    whose first GET gets nothing in time (``cdn``)."""

    def __init__(self, *, silent: bool = False, cdn: bool = False) -> None:
        super().__init__()
        self.silent, self.cdn, self.cdn_asked = silent, cdn, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == CDN:
            self.requests.append(request)
            self.cdn_asked += 1
            if self.cdn_asked == 1:
                raise httpx.ReadTimeout("nothing came", request=request)
            return fakes.reply(200, BASE, {}, length=True)
        blob = request.url.host == HOST and "/blobs/" in request.url.path
        if blob and self.silent:
            self.requests.append(request)
            raise httpx.ReadTimeout("nothing came", request=request)
        answer = super().__call__(request)
        if blob and self.cdn and answer.status_code == 200:
            return httpx.Response(307, headers={"Location": f"https://{CDN}/blob"})
        return answer

    def blob_gets(self) -> list[tuple[str, str | None]]:
        gets = [r for r in self.requests if r.method == "GET" and "/blob" in r.url.path]
        return [(r.url.host, r.headers.get("authorization")) for r in gets]


async def test_a_registry_silent_to_the_fill_is_not_asked_again_for_the_client(
    tmp_path: Path,
) -> None:
    hub = SilentBlobs(silent=True)
    async with mirror(tmp_path, hub) as app:
        status, body = await get(app, PATH)
    assert status == 504
    assert json.loads(body)["errors"][0]["message"].startswith(
        "the upstream registry did not answer in time"
    )
    assert hub.blob_gets() == [(HOST, "Bearer anon")]  # the mirror's fill, nothing more


async def test_a_cdn_silent_to_the_fill_lets_the_client_ask_again(tmp_path: Path) -> None:
    hub = SilentBlobs(cdn=True)
    async with mirror(tmp_path, hub) as app:
        assert await get(app, PATH) == (200, BASE)
    hosts = [host for host, _ in hub.blob_gets()]
    assert hosts == [HOST, CDN, HOST, CDN]  # the fill's hops, then the client's, passed through


async def test_a_client_of_another_upstream_is_not_answered_with_the_fills_silence(
    tmp_path: Path,
) -> None:
    """One blob store serves every upstream: a Docker Hub client joined the fill a ghcr.io
    client started, and ghcr.io then sent nothing in time. The ghcr.io client gets the 504
    at once; the Docker Hub client's request goes to Docker Hub (before, it got ghcr.io's
    504, and Docker Hub was never asked)."""
    release = asyncio.Event()
    asked: list[str] = []

    async def upstreams(request: httpx.Request) -> httpx.Response:
        blob = request.method == "GET" and "/blobs/" in request.url.path
        if blob:
            asked.append(request.url.host)
        mirrors = request.headers.get("authorization", "").startswith("Bearer token-of-")
        if blob and request.url.host == "ghcr.example" and mirrors:
            await release.wait()
            raise httpx.ReadTimeout("nothing came", request=request)
        return registries(request)

    overrides = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.dir": str(tmp_path / "cache"),
        "upstreams": "ghcr.test=https://ghcr.example",
    }
    config = load_config(overrides, environ={})
    app = create_app(config, probe=False, transport=httpx.MockTransport(upstreams))
    ghcr = f"/v2/ghcr.test/owner/img/blobs/{SHARED_DIGEST}"
    hub = f"/v2/owner/img/blobs/{SHARED_DIGEST}"
    async with app.test_app():
        cache = mirror_state(app).cache
        assert cache is not None
        blobs = cache.blobs
        # Its own, from Hub by the mirror's token endpoint: with several upstreams, a token
        # the mirror never relayed is not told to be Hub's (docxy.upstream.issuers).
        path = "/auth/token?scope=repository:owner/img:pull"
        said = await call_asgi(app, "GET", path, host="mirror.example.com")
        token = [("Authorization", f"Bearer {json.loads(said.body)['token']}")]
        first = spawn("ghcr client", call_asgi(app, "GET", ghcr, host="mirror.example.com"))
        await until(lambda: asked == ["ghcr.example"])
        second = spawn(
            "hub client", call_asgi(app, "GET", hub, host="mirror.example.com", headers=token)
        )
        await until(lambda: blobs.followers_joined == 1)
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [a.status for a in answers] == [504, 200]
    assert answers[1].body == SHARED
    assert asked == ["ghcr.example", "hub.example"]
