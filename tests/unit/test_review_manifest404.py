"""Review of a manifest miss the registry says no to (docxy/pull/manifests.py, outcome.py,
docxy/http/routes.py): how many upstream requests a mistyped tag costs, and what the client
is told, ``Cache-Status`` included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from docxy.cli.warm import mirror_status
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import TAG, pulled_then_stale
from tests.unit.test_pull_scoped_blobs import AS_ANON, Hub, anonymous_token
from tests.unit.test_review_pullpath import MISSING, NoSuchBlob
from tests.unit.turns import until

NOPE = "/v2/library/base/manifests/no-such-tag"


def manifest_gets(hub: Hub) -> list[str]:
    """Paths of every manifest GET the hub was sent (the mirror's and passed-through ones)."""
    return [r.url.path for r in hub.requests if r.method == "GET" and "/manifests/" in r.url.path]


# --- 1. a manifest GET the registry answers with its word on it ---------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "MANIFEST_UNKNOWN"), (404, "NAME_UNKNOWN"), (400, "TAG_INVALID")],
)
@pytest.mark.parametrize("ref", ["no-such-tag", MISSING])
async def test_the_registrys_word_on_a_manifest_is_relayed_once(
    tmp_path: Path, status: int, code: str, ref: str
) -> None:
    """A pull of a mistyped tag (or a digest the registry lacks): the mirror's GET is answered
    404 MANIFEST_UNKNOWN (or NAME_UNKNOWN, or a 400), and the client's GET was then passed
    through, the same GET again: two upstream GETs, each counted on Docker Hub's pull limit.
    The client gets the registry's answer from the mirror's one GET."""
    upstream = NoSuchBlob(status, code)  # every request but /v2/ answered so
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get(f"/v2/team/app/manifests/{ref}")
        body = await response.get_data(as_text=False)
    assert response.status_code == status
    assert json.loads(body)["errors"][0] == {"code": code, "message": "said by the registry"}
    assert upstream.blob_gets == 1


async def test_a_mistyped_tag_through_a_token_registry_costs_one_get(tmp_path: Path) -> None:
    """As above, through a registry with token auth (the client holding its own token): the
    mirror's GET, with its token, is the only manifest GET the registry sees."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        response = await app.test_client().get(NOPE, headers=AS_ANON)
        body = await response.get_data(as_text=False)
    assert response.status_code == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert manifest_gets(hub) == [NOPE]


async def test_a_private_repositorys_401_still_passes_through(tmp_path: Path) -> None:
    """A 401 to the mirror's token is no word on the manifest: the client's own token may read
    it. Its GET is still passed through, and gets the manifest."""
    hub = Hub()
    mine = "/v2/team/mine/manifests/1"
    hub.repos["team/mine"].manifests["1"] = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().get(mine, headers={"Authorization": hub.client_token})
        body = await response.get_data(as_text=False)
    assert (response.status_code, body) == (200, hub.repos["team/mine"].manifests["1"])
    assert manifest_gets(hub) == [mine, mine, mine]  # the mirror's, its fresh token's, the client's


class RedirectsToCdn:
    """An open registry that redirects each manifest GET to a CDN, which answers 404 (a
    CDN's own rule, say): not the registry's word. ``gets`` counts the registry's GETs."""

    def __init__(self) -> None:
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        if request.url.host == "cdn.test":
            return fakes.reply(404, b"<html>not here</html>", length=True)
        self.gets += 1
        return fakes.reply(307, headers={"Location": "https://cdn.test/signed"}, length=True)


async def test_a_cdns_404_is_not_the_registrys_word(tmp_path: Path) -> None:
    """A 404 from where the registry redirected the mirror's GET says nothing of the manifest:
    the client's GET is still passed through, as before."""
    upstream = RedirectsToCdn()
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get("/v2/team/app/manifests/1")
    assert response.status_code == 404
    assert upstream.gets == 2


class HeadSaysFound(Hub):
    """The hub, whose manifest HEADs all say 200 without a digest (a front that caches HEAD
    answers): a stale tag's revalidation goes on to the mirror's GET."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/manifests/" in request.url.path:
            self.requests.append(request)
            return fakes.reply(200)
        return super().__call__(request)


async def test_a_stale_tags_404_is_relayed_not_served_stale(tmp_path: Path) -> None:
    """A cached tag past its TTL, deleted upstream: the mirror's GET is answered 404. The
    client gets that 404 (not the stale manifest: a 404 is no outage), the tag is forgotten,
    and the registry is not sent the client's GET besides."""
    hub = HeadSaysFound()
    manifest = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        store, _ = await pulled_then_stale(app, manifest)
        del hub.repos["library/base"].manifests["1"]
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.status_code == 404
        assert store.list_tags() == []
    assert manifest_gets(hub) == [TAG, TAG]  # the first pull's, and this one's (the mirror's)


# --- 2. what Cache-Status says of a relayed answer --------------------------------------------


@pytest.mark.parametrize("kind", ["manifests", "blobs"])
@pytest.mark.parametrize("status", [404, 400])
async def test_a_relayed_answer_says_so_in_cache_status(
    tmp_path: Path, kind: str, status: int
) -> None:
    """Every answer of the mirror's carries its ``Cache-Status`` member; one relayed from the
    mirror's own GET (the registry's 404 or 400) carried none. It says it went upstream on a
    miss and what the upstream answered (RFC 9211 ``fwd-status``)."""
    upstream = NoSuchBlob(status, "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN")
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get(f"/v2/team/app/{kind}/{MISSING}")
        assert mirror_state(app).cache is not None
    assert response.status_code == status
    assert response.headers.getlist("Cache-Status") == [
        f"Docxy; fwd=miss; fwd-status={status}; detail=upstream-answer"
    ]
    said = mirror_status(httpx.Response(status, headers=list(response.headers.items())))
    assert said == {"fwd": "miss", "fwd-status": str(status), "detail": "upstream-answer"}


# --- 1b. a manifest HEAD of the mirror's the registry answers 404 -------------------------------


def manifest_heads(hub: Hub) -> list[str]:
    """Paths of every manifest HEAD the hub was sent."""
    return [r.url.path for r in hub.requests if r.method == "HEAD" and "/manifests/" in r.url.path]


async def test_a_head_of_a_mistyped_tag_costs_one_upstream_head(tmp_path: Path) -> None:
    """containerd resolves a tag by HEAD: for a mistyped one the mirror's own HEAD got 404 and
    the client's HEAD was passed through, the same HEAD again. It gets that 404 at once."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        response = await app.test_client().head(NOPE, headers=AS_ANON)
    assert response.status_code == 404
    assert manifest_heads(hub) == [NOPE]
    assert response.headers["Cache-Status"] == (
        "Docxy; fwd=miss; fwd-status=404; detail=upstream-answer"
    )


ONE_PLATFORM = {**AS_ANON, "Accept": "application/vnd.docker.distribution.manifest.v2+json"}


async def test_a_mistyped_tag_for_a_client_taking_no_index_costs_no_get(tmp_path: Path) -> None:
    """A client that takes no index is looked up with the mirror's free HEAD first; its 404
    passed the client's GET through, a counted GET that could only say 404 too. The client
    gets the 404 (MANIFEST_UNKNOWN) without any GET."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        response = await app.test_client().get(NOPE, headers=ONE_PLATFORM)
        body = await response.get_data(as_text=False)
    assert response.status_code == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert (manifest_heads(hub), manifest_gets(hub)) == ([NOPE], [])


async def test_a_stale_tag_deleted_upstream_costs_no_get(tmp_path: Path) -> None:
    """A cached tag past its TTL is revalidated with a free HEAD; deleted upstream, that HEAD's
    404 forgets it, and the client's GET was passed through besides (counted). It gets the
    404 at once."""
    hub = Hub()
    manifest = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        store, _ = await pulled_then_stale(app, manifest)
        del hub.repos["library/base"].manifests["1"]
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.status_code == 404
        assert store.list_tags() == []
    assert manifest_gets(hub) == [TAG]  # the first pull's only


# --- 3. a negative cache: what one would save -----------------------------------------------------


class HeldNotFound(Hub):
    """The hub, its manifest GETs held until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/manifests/" in request.url.path:
            await self.go.wait()
        return Hub.__call__(self, request)


async def test_clients_missing_one_mistyped_tag_at_once_share_its_one_get(tmp_path: Path) -> None:
    """Clients asking a mistyped tag at once (a fleet, a CI matrix) share the mirror's one GET,
    and each gets its 404: a negative cache would only save the GETs of retries after it."""
    hub = HeldNotFound()
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        client = app.test_client()
        asked = [spawn(f"client {n}", client.get(NOPE, headers=AS_ANON)) for n in range(3)]
        await until(lambda: mirror_state(app).running.manifests.fetches_joined == 2)
        hub.go.set()
        answers = [await answer for answer in asked]
    assert [answer.status_code for answer in answers] == [404, 404, 404]
    assert manifest_gets(hub) == [NOPE]
