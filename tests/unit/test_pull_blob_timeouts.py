"""A blob miss whose fetch got nothing in time: answered at once when the registry itself was
silent (the client's own request would wait as long), passed through when a host it redirected
to was (a CDN: the next node may answer)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.unit import fakes
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import BASE, HOST, Hub, blob_url, get

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
