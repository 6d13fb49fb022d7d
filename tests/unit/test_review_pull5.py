"""Review of the pull path's labels (docxy/pull/, docxy/http/responses.py): what ``Cache-Status``
tells a client that waited on another client's upstream GET (RFC 9211 ``collapsed``), and what
a client's manifest ``HEAD`` gets when the registry answers the mirror's own ``HEAD`` with its
word on the manifest (a ``400``, as a ``404``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from docxy.cli.warm import mirror_status
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.test_pull_blobs import DIGEST, mirror
from tests.unit.test_pull_manifest_misses import HeldHub
from tests.unit.test_pull_scoped_blobs import AS_ANON, Hub, anonymous_token
from tests.unit.test_review_manifest404 import NOPE, HeldNotFound, manifest_gets, manifest_heads
from tests.unit.test_review_privrelay import HidesPrivate
from tests.unit.test_review_pullpath import HeldMissing, NoSuchBlob
from tests.unit.turns import until

TAG = "/v2/library/base/manifests/1"


class HeldArrivals(HeldNotFound):
    """:class:`HeldNotFound`, counting the manifest GETs that arrived (before they are held)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/manifests/" in request.url.path:
            self.arrived += 1
        return await super().handle(request)


# --- 1. clients that waited on another's upstream GET are told they were collapsed ------------


async def test_a_client_waiting_on_anothers_manifest_get_is_told_collapsed(
    tmp_path: Path,
) -> None:
    """Two clients miss one manifest at once: the upstream (held on an event) sees one GET;
    the client that started it is ``fwd=miss``, the one that waited for it ``fwd=miss;
    collapsed`` (it cost no upstream request), as ``docxy warm`` reads it."""
    hub = HeldHub()
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)
        service = mirror_state(app).running.manifests
        client = app.test_client()
        first = spawn("first", client.get(TAG, headers=AS_ANON))
        await until(lambda: hub.arrived == 1)
        second = spawn("second", client.get(TAG, headers=AS_ANON))
        await until(lambda: service.fetches_joined == 1)
        hub.release.set()
        answers = [await first, await second]
    assert [a.status_code for a in answers] == [200, 200]
    assert hub.seen("GET", "manifests") == [TAG]
    said = [a.headers["Cache-Status"] for a in answers]
    assert said == ["Docxy; fwd=miss", "Docxy; fwd=miss; collapsed"]
    warmed = mirror_status(httpx.Response(200, headers=list(answers[1].headers.items())))
    assert warmed == {"fwd": "miss", "collapsed": ""}


@pytest.mark.parametrize("auth", [AS_ANON, {}], ids=["relayed-anonymous-token", "no-auth"])
async def test_clients_sharing_a_relayed_404_of_a_manifest_are_told_collapsed(
    tmp_path: Path, auth: dict[str, str]
) -> None:
    """Two clients ask a mistyped tag at once and share the mirror's one GET, answered 404: the
    one that waited for it cost the upstream nothing either, but was told ``fwd=miss;
    fwd-status=404`` as if its own request had gone upstream."""
    hub = HeldArrivals()
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)
        service = mirror_state(app).running.manifests
        client = app.test_client()
        first = spawn("first", client.get(NOPE, headers=auth))
        await until(lambda: hub.arrived == 1)
        second = spawn("second", client.get(NOPE, headers=auth))
        await until(lambda: service.fetches_joined == 1)
        hub.go.set()
        answers = [await first, await second]
    assert [a.status_code for a in answers] == [404, 404]
    assert manifest_gets(hub) == [NOPE]
    assert [a.headers["Cache-Status"] for a in answers] == [
        "Docxy; fwd=miss; fwd-status=404; detail=upstream-answer",
        "Docxy; fwd=miss; fwd-status=404; collapsed; detail=upstream-answer",
    ]


async def test_clients_sharing_a_relayed_404_of_a_blob_are_told_collapsed(tmp_path: Path) -> None:
    """As above for a blob: a second client of ``team/app`` joins the fill the first started,
    which the registry answers 404 BLOB_UNKNOWN; both get the 404 from that one GET, the
    joiner told it was collapsed."""
    upstream = HeldMissing()
    path = f"/v2/team/app/blobs/{DIGEST}"
    async with mirror(tmp_path, upstream) as app:  # type: ignore[arg-type]
        store = mirror_state(app).running.blobs.store
        assert store is not None
        client = app.test_client()
        first = spawn("first", client.get(path))
        await until(lambda: upstream.asked == ["team/app"])
        second = spawn("second", client.get(path))
        await until(lambda: store.followers_joined == 1)
        upstream.go.set()
        answers = [await first, await second]
    assert [a.status_code for a in answers] == [404, 404]
    assert upstream.asked == ["team/app"]
    assert [a.headers["Cache-Status"] for a in answers] == [
        "Docxy; fwd=miss; fwd-status=404; detail=upstream-answer",
        "Docxy; fwd=miss; fwd-status=404; collapsed; detail=upstream-answer",
    ]


# --- 3. a registry's 400 to the mirror's HEAD of a manifest ----------------------------------


class BadTagHead(Hub):
    """The hub, whose manifest HEADs and GETs of ``bad..tag`` it answers 400 TAG_INVALID."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/manifests/bad..tag" in request.url.path:
            self.requests.append(request)
            body = b'{"errors": [{"code": "TAG_INVALID", "message": "said by the registry"}]}'
            return fakes.reply(400, body, {"Content-Type": "application/json"}, length=True)
        return super().__call__(request)


BAD = "/v2/library/base/manifests/bad..tag"


@pytest.mark.parametrize("ref", ["no-such-tag", "sha256:" + "0" * 64])
async def test_a_head_the_registry_answers_400_is_relayed_once(tmp_path: Path, ref: str) -> None:
    """A client's HEAD of a manifest the registry answers 400: the mirror's own HEAD got that
    400 and the client's HEAD was then passed through, the same HEAD again, and its 400 said
    ``fwd=bypass``. A GET's 400 is relayed from the mirror's one request (``fwd-status``); so
    is a HEAD's now."""
    upstream = NoSuchBlob(400, "TAG_INVALID")  # every request but /v2/ answered so
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().head(f"/v2/team/app/manifests/{ref}")
    assert response.status_code == 400
    assert upstream.blob_gets == 1  # the mirror's HEAD only
    assert response.headers["Cache-Status"] == (
        "Docxy; fwd=miss; fwd-status=400; detail=upstream-answer"
    )


async def test_a_head_400_through_a_token_registry_costs_one_head(tmp_path: Path) -> None:
    """As above, through a registry with token auth, the client holding a token relayed for an
    anonymous pull: the mirror's HEAD is the only HEAD the registry sees."""
    hub = BadTagHead()
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)
        response = await app.test_client().head(BAD, headers=AS_ANON)
    assert response.status_code == 400
    assert manifest_heads(hub) == [BAD]
    assert response.headers["Cache-Status"] == (
        "Docxy; fwd=miss; fwd-status=400; detail=upstream-answer"
    )


async def test_a_credentialed_clients_head_400_still_passes_through(tmp_path: Path) -> None:
    """A client with credentials of its own: as for a 404, the registry's answer to the
    mirror's token is no answer to the client's, whose HEAD still goes upstream."""
    hub = BadTagHead()
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().head(BAD, headers={"Authorization": hub.client_token})
    assert response.status_code == 400
    assert manifest_heads(hub) == [BAD, BAD]
    assert response.headers["Cache-Status"] == "Docxy; fwd=bypass; detail=upstream-answer"


class RefusesHead(Hub):
    """The hub behind a front that refuses a manifest HEAD (400) it answers as a GET."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/manifests/" in request.url.path:
            self.requests.append(request)
            body = b'{"errors": [{"code": "UNSUPPORTED", "message": "no HEAD here"}]}'
            return fakes.reply(400, body, {"Content-Type": "application/json"}, length=True)
        return super().__call__(request)


async def test_a_get_after_a_head_400_is_unchanged(tmp_path: Path) -> None:
    """A client GET taking no index is looked up with the mirror's HEAD first; its 400 is not
    taken for the GET's answer (a front may refuse a HEAD it would answer as a GET): the GET
    goes upstream as before, and the client gets the manifest the registry's GET answers."""
    hub = RefusesHead()
    one_platform = {**AS_ANON, "Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)
        response = await app.test_client().get(TAG, headers=one_platform)
        body = await response.get_data(as_text=False)
    assert response.status_code == 200
    assert body == hub.repos["library/base"].manifests["1"]
    assert manifest_heads(hub) == [TAG]
    assert manifest_gets(hub) == [TAG]


# --- 2. clients with credentials of their own: each one's answer is its own ------------------


class HeldHidesPrivate(HidesPrivate):
    """:class:`HidesPrivate`, the mirror's own manifest GETs (neither client's token) held
    until :attr:`go` is set; :attr:`arrived` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.arrived = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        if request.method == "GET" and request.url.path == PRIVATE and auth not in CLIENTS:
            self.arrived += 1
            await self.go.wait()
        return self(request)


PRIVATE = "/v2/team/mine/manifests/1"
READER = "Bearer client-of-team-mine"  # Hub.client_token: may read team/mine
STRANGER = "Bearer someone-else"  # a token of its own, which may not
CLIENTS = (READER, STRANGER)


async def test_a_shared_404_is_not_the_answer_of_clients_with_their_own_credentials(
    tmp_path: Path,
) -> None:
    """Why the registry's 404 to the mirror's GET is relayed only to clients without
    credentials of their own, even when they waited for the same GET: a registry that hides a
    private repository answers each token as it may read. Two clients with their own tokens
    miss one manifest at once and share the mirror's GET (404: hidden from the mirror's
    token); the one whose token reads the repository gets the manifest, the other the
    registry's 404, each from its own request. Shared, both would have been told 404."""
    hub = HeldHidesPrivate()
    assert hub.client_token == READER
    manifest = hub.repos["team/mine"].manifests["1"]
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        service = mirror_state(app).running.manifests
        client = app.test_client()
        first = spawn("reader", client.get(PRIVATE, headers={"Authorization": READER}))
        await until(lambda: hub.arrived == 1)
        second = spawn("stranger", client.get(PRIVATE, headers={"Authorization": STRANGER}))
        await until(lambda: service.fetches_joined == 1)
        hub.go.set()
        reader, stranger = await first, await second
        body = await reader.get_data(as_text=False)
    assert (reader.status_code, body) == (200, manifest)
    assert stranger.status_code == 404
    gets = [auth for method, auth in hub.asked(PRIVATE) if method == "GET"]
    assert sorted(a for a in gets if a in CLIENTS) == sorted(CLIENTS)  # each its own request
    assert hub.arrived == 1  # the mirror's one GET, shared
    for answer in (reader, stranger):
        assert answer.headers["Cache-Status"] == "Docxy; fwd=bypass; detail=upstream-answer"
