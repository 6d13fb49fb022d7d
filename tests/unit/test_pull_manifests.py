"""Manifests on the pull path (``docxy.pull.manifests``) when the cache cannot keep them."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.cache import manifests, parse_digest
from docxy.http.middleware import AccessLog, Guard
from docxy.http.state import mirror_state
from tests.unit import fakes
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import REGISTRY, basic, mirror
from tests.unit.test_pull_scoped_blobs import (
    AS_ANON,
    AUTH,
    DOCKER_MANIFEST,
    HOST,
    MIRROR_TOKENS,
    Hub,
    digest_of,
    get,
    json_reply,
)

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
    that digest is cached already, but for another repository, the mirror's HEAD (made in this
    one) says this repository holds it too: the tag's GETs are served from the cache, with no
    GET upstream (before: one counted GET for this name; earlier still, every GET passed
    through, and nothing to serve once the upstream went down)."""
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
        assert hub.seen("GET", "manifests") == [TAG]  # the other name cost a HEAD only
        assert hub.seen("HEAD", "manifests") == [copy]
        hub.down = True
        response = await app.test_client().get(copy, headers=AS_ANON)
        assert response.status_code == 200


@pytest.mark.parametrize("stale", [False, True])
async def test_a_tag_noted_before_its_manifest_was_cached_for_another_repository_costs_a_head(
    tmp_path: Path, stale: bool
) -> None:
    """A tag noted from a HEAD while its manifest was not cached yet, the manifest cached since
    for another repository only (one image under two names): the tag's next pull, fresh or
    stale, confirms it with a free HEAD in this repository, then serves it from the cache and
    records it there, so the pulls after are hits. Before, it cost a counted GET."""
    hub = Hub()
    same = hub.repos["library/base"].manifests["1"]
    digest = digest_of(same)
    hub.repos["library/base"].manifests[digest] = same
    hub.repos["library/app"].manifests["new"] = same
    tag, other = "/v2/library/app/manifests/new", f"/v2/library/base/manifests/{digest}"
    async with mirror(tmp_path, hub) as app:
        answer = await call_asgi(app, "HEAD", tag, host="mirror.test", headers=AS_ANON.items())
        assert (answer.status, answer.headers["Docker-Content-Digest"]) == (200, digest)
        assert await get(app, other) == (200, same)  # cached for library/base only
        if stale:
            cache = mirror_state(app).cache
            assert cache is not None
            cache.manifests.tag_ttl = 0  # the noted tag is revalidated at its next pull
        for _ in range(2):
            assert await get(app, tag) == (200, same)
    assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("GET", "manifests") == [other]  # the tag cost no GET
    heads = 3 if stale else 2  # the client's, the confirming one (and one per stale pull)
    assert hub.seen("HEAD", "manifests") == [tag] * heads


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_manifest_cached_for_another_repository_costs_a_head_there_not_a_get(
    tmp_path: Path, method: str
) -> None:
    """A pull by digest of a manifest cached for another repository of the same upstream (one
    image under two names) is confirmed there by a free upstream HEAD, then served from the
    cache, and recorded: the pulls after are hits. Before, the mirror fetched it again with a
    GET, a counted pull on Docker Hub."""
    hub = Hub()
    same = hub.repos["library/base"].manifests["1"]
    digest = digest_of(same)
    for name in ("library/base", "library/app"):
        hub.repos[name].manifests[digest] = same
    first, copy = f"/v2/library/base/manifests/{digest}", f"/v2/library/app/manifests/{digest}"
    async with mirror(tmp_path, hub) as app:
        assert await get(app, first) == (200, same)
        answer = await call_asgi(app, method, copy, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 200
        assert answer.headers["Content-Length"] == str(len(same))
        assert answer.headers["Docker-Content-Digest"] == digest
        assert answer.body == (same if method == "GET" else b"")
        for _ in range(2):
            assert await get(app, copy) == (200, same)
    assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("GET", "manifests") == [first]
    assert hub.seen("HEAD", "manifests") == [copy]  # once: a hit from then on


async def test_a_manifest_cached_for_one_repository_is_not_served_under_another_unconfirmed(
    tmp_path: Path,
) -> None:
    """The HEAD is the access check: a private repository holding the same manifest (the
    mirror's token is refused there), or one that does not hold it, gets no byte of it from
    the cache; the client sees the upstream's own answer, and with the upstream down, an
    error. A client allowed into the private repository gets it (checked with its own token),
    and that confirms nothing for the others."""
    hub = Hub()
    same = hub.repos["library/base"].manifests["1"]
    digest = digest_of(same)
    for name in ("library/base", "team/mine"):
        hub.repos[name].manifests[digest] = same
    mine, other = f"/v2/team/mine/manifests/{digest}", f"/v2/library/other/manifests/{digest}"
    async with mirror(tmp_path, hub) as app:
        assert await get(app, f"/v2/library/base/manifests/{digest}") == (200, same)
        assert (await get(app, mine))[0] == 401
        assert (await get(app, other))[0] == 404
        assert await get(app, mine, hub.client_token) == (200, same)  # hers, checked with her token
        assert (await get(app, mine))[0] == 401
        hub.down = True
        for path in (mine, other):
            assert (await get(app, path))[0] == 502


async def test_a_cached_manifest_a_client_reads_in_a_private_repository_is_served_to_it_only(
    tmp_path: Path,
) -> None:
    """A manifest cached for a public repository, asked by digest in a private one holding it
    too (the mirror's token is refused there): a free HEAD with the client's own credentials
    confirms it, and that client gets it from the cache, as a blob (``docxy.pull.blobs``).
    Nothing is recorded: each such pull asks again, another client sees the upstream's own
    answer, and with the upstream down, the client gets an error. Before, the client's GET
    was passed through (a counted pull on its own account)."""
    hub = Hub()
    same = hub.repos["library/base"].manifests["1"]
    digest = digest_of(same)
    for name in ("library/base", "team/mine"):
        hub.repos[name].manifests[digest] = same
    mine = f"/v2/team/mine/manifests/{digest}"
    async with mirror(tmp_path, hub) as app:
        assert await get(app, f"/v2/library/base/manifests/{digest}") == (200, same)
        for _ in range(2):
            assert await get(app, mine, hub.client_token) == (200, same)
        assert (await get(app, mine))[0] == 401  # anonymous: nothing was shared
        hub.down = True
        assert (await get(app, mine, hub.client_token))[0] == 502
    assert hub.seen("GET", "manifests") == [f"/v2/library/base/manifests/{digest}"]
    theirs = [
        (r.method, r.url.path)
        for r in hub.requests
        if r.headers.get("authorization") == hub.client_token
    ]
    assert theirs == [("HEAD", mine)] * 2  # a check each time, never a GET of hers
    assert hub.seen("GET", "manifests", mirror=False) == [mine]  # anon's, passed through: 401


class Stalling(fakes.Body):
    """A body whose headers came, then nothing: the read timeout fires mid-body."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.chunks[0][:10]
        raise httpx.ReadTimeout("the upstream stopped sending")


class StallingHub(Hub):
    """The hub, whose manifest bodies stall once ``stall`` is set."""

    stall = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if self.stall and request.method == "GET" and "/manifests/" in request.url.path:
            body = answer.stream
            assert isinstance(body, fakes.Body)
            return httpx.Response(200, headers=answer.headers, stream=Stalling(*body.chunks))
        return answer


async def test_a_stale_tag_is_served_when_the_upstream_stalls_in_the_manifest_body(
    tmp_path: Path,
) -> None:
    """Stale-if-error covers an upstream that times out, also once its headers are in: the
    tag moved upstream, the new manifest's body stalls, the cached one is served (before: a
    500, the httpx timeout escaping as an internal error)."""
    hub = StallingHub()
    old = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        assert await (await app.test_client().get(TAG, headers=AS_ANON)).get_data() == old
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0  # from now on, every cached tag is revalidated
        moved = json.dumps({**json.loads(old), "annotations": {"v": "2"}}).encode()
        hub.repos["library/base"].manifests["1"] = moved
        hub.stall = True
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.status_code == 200
        assert await response.get_data() == old


class TroubledHub(Hub):
    """The hub, whose manifest requests get ``status`` once it is set (a CDN front's page)."""

    status: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.status is not None and "/manifests/" in request.url.path:
            html = {"Content-Type": "text/html"}
            return httpx.Response(self.status, headers=html, content=b"<html>origin down</html>")
        return super().__call__(request)


@pytest.mark.parametrize("status", [500, 503, 520, 521, 522, 523, 524, 530, 501])
async def test_a_stale_tag_is_served_while_the_upstream_answers_any_5xx(
    tmp_path: Path, status: int
) -> None:
    """A CDN front (Cloudflare) answers 520-524 or 530 while it cannot reach the registry: the
    cached tag is served, as for a 503, and /health says degraded (on 00eccfd the client got
    the 522 page while /health already counted it as trouble)."""
    hub = TroubledHub()
    old = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        assert await (await app.test_client().get(TAG, headers=AS_ANON)).get_data() == old
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0  # from now on, every cached tag is revalidated
        hub.status = status
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.status_code == 200
        assert await response.get_data() == old
        health = await (await app.test_client().get("/health")).get_json()
    assert health["status"] == "degraded"
    assert health["upstream"]["last_error_message"] == f"the upstream answered {status}"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_tag_the_upstream_deleted_is_forgotten_not_served_stale(
    tmp_path: Path, method: str
) -> None:
    """Once the upstream answers the mirror's own request for a tag with 404 (the tag was
    deleted, say for a bad image), the mirror forgets the tag: a later outage must not bring
    the deleted tag back as a stale answer, nor keep asking about it after every TTL."""
    hub = Hub()
    old = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        assert await (await app.test_client().get(TAG, headers=AS_ANON)).get_data() == old
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0  # from now on, every cached tag is revalidated
        del hub.repos["library/base"].manifests["1"]
        answer = await call_asgi(app, method, TAG, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 404  # the upstream's answer, relayed
        assert cache.manifests.list_tags() == []
        hub.down = True
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.status_code == 502
        assert await response.get_data() != old


def read_only_disk(*args: object, **kwargs: object) -> bool:
    raise OSError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_deleted_tag_the_disk_cannot_forget_still_gets_the_upstreams_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """A cache disk gone read-only refuses to drop a tag record as it refuses to write one:
    the client's pull still gets the upstream's 404 (a warning says the tag stays), never a
    500 for a disk the pull did not need."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert (await app.test_client().get(TAG, headers=AS_ANON)).status_code == 200
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0  # revalidated at the next pull
        del hub.repos["library/base"].manifests["1"]
        monkeypatch.setattr(manifests, "_unlink_existed", read_only_disk)
        answer = await call_asgi(app, method, TAG, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 404  # the upstream's answer, relayed
    assert "cannot forget tag library/base:1, gone upstream (404)" in caplog.text


async def test_a_manifest_the_disk_refused_says_it_was_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served all the same, a manifest the cache could not keep said ``fwd=miss`` like one it
    kept: ``docxy warm`` counted the image as warmed. Now ``stored=?0`` says it was not, and
    the next GET, fetched again, says so again; once the disk takes it, it is a hit."""
    monkeypatch.setattr(manifests, "write_atomic", read_only_disk)
    async with mirror(tmp_path, Hub()) as app:
        client = app.test_client()
        unkept = "Docxy; fwd=miss; stored=?0; detail=cache-unwritable"
        for _ in range(2):
            response = await client.get(TAG, headers=AS_ANON)
            assert response.status_code == 200
            assert response.headers.getlist("Cache-Status") == [unkept]
        monkeypatch.undo()
        assert (await client.get(TAG, headers=AS_ANON)).headers["Cache-Status"] == (
            "Docxy; fwd=miss"
        )
        assert (await client.get(TAG, headers=AS_ANON)).headers["Cache-Status"] == "Docxy; hit"


async def test_a_manifest_the_disk_refused_is_logged_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its header said ``stored=?0`` but its access log line a plain ``cache=miss``, like a
    manifest the cache kept: the operator reading the log had no sign the cache was refusing.
    Now the line names the reason, as a blob passed through for it does."""
    caplog.set_level(logging.INFO, logger="docxy")
    monkeypatch.setattr(manifests, "write_atomic", read_only_disk)
    async with mirror(tmp_path, Hub()) as app:
        logged = AccessLog(Guard(app, None))
        refused = await call_asgi(logged, "GET", TAG, host="mirror.test", headers=AS_ANON.items())
        assert refused.status == 200
        monkeypatch.undo()
        kept = await call_asgi(logged, "GET", TAG, host="mirror.test", headers=AS_ANON.items())
        assert kept.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(lines) == 2, lines
    assert " cache=miss reason=cache-unwritable " in lines[0], lines
    assert " cache=miss upstream=" in lines[1], lines


class HeadWithout(Hub):
    """The hub, answering a manifest HEAD without one header: ``docker-content-digest`` (the
    spec's SHOULD: some registries leave it out; containerd falls back to a GET for them) or
    ``content-length`` (a front that drops it from HEAD answers, or sends them chunked)."""

    def __init__(self, header: str) -> None:
        super().__init__()
        self.header = header

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if request.method == "HEAD" and "/manifests/" in request.url.path:
            headers = [(k, v) for k, v in answer.headers.items() if k != self.header]
            return httpx.Response(answer.status_code, headers=headers, stream=answer.stream)
        return answer


async def pulled_then_stale(app: Quart, manifest: bytes) -> tuple[manifests.ManifestStore, float]:
    """Pull ``TAG`` once (cached), then make every cached tag stale (revalidated at each pull):
    the manifest store, and when that tag was fetched."""
    assert await (await app.test_client().get(TAG, headers=AS_ANON)).get_data() == manifest
    cache = mirror_state(app).cache
    assert cache is not None
    [first] = cache.manifests.list_tags()
    cache.manifests.tag_ttl = 0
    return cache.manifests, first.fetched_at


async def test_a_tag_revalidated_against_a_head_without_a_digest_is_fetched_and_cached(
    tmp_path: Path,
) -> None:
    """An upstream whose HEAD names no digest cannot confirm a cached tag that way: the mirror
    fetches the manifest itself (the GET the client would have sent) and caches the tag again,
    rather than passing every pull of it through, uncached, once its TTL is over."""
    hub = HeadWithout("docker-content-digest")
    manifest = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        store, before = await pulled_then_stale(app, manifest)
        for _ in range(2):
            response = await app.test_client().get(TAG, headers=AS_ANON)
            assert await response.get_data() == manifest
        [again] = store.list_tags()
        assert again.fetched_at > before  # the tag is current again
    assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("GET", "manifests") == [TAG] * 3  # the mirror's own GETs, one a pull


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_tag_revalidated_against_a_head_with_a_digest_but_no_length_costs_no_get(
    tmp_path: Path, method: str
) -> None:
    """A HEAD naming the digest confirms a cached tag whether or not it also names the length
    (the cached manifest has it): the mirror serves the tag revalidated, without a GET of its
    own (a counted pull on Docker Hub) each time its TTL is over."""
    hub = HeadWithout("content-length")
    manifest = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        store, before = await pulled_then_stale(app, manifest)
        for _ in range(2):
            answer = await call_asgi(app, method, TAG, host="mirror.test", headers=AS_ANON.items())
            assert answer.status == 200
            assert answer.headers["Content-Length"] == str(len(manifest))
            assert answer.headers["Docker-Content-Digest"] == digest_of(manifest)
        [again] = store.list_tags()
        assert again.fetched_at > before  # confirmed: the tag is current again
    assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("GET", "manifests") == [TAG]  # the first pull's GET only
    assert hub.seen("HEAD", "manifests") == [TAG] * 2


@pytest.mark.parametrize("name", ["library/base", "library/app"])
async def test_a_head_of_an_uncached_tag_without_a_length_is_answered_from_the_cache(
    tmp_path: Path, name: str
) -> None:
    """An upstream HEAD naming the digest but no length cannot answer a client's HEAD by
    itself; when that digest is cached (for this repository, or for another: the HEAD, made in
    this one, says it holds it too), the cache has the length and type. The client's HEAD of a
    tag not cached yet is answered so, and the GET after it is a hit. Before, it was passed
    through: the client got the upstream's answer without its length, with its own token."""
    hub = HeadWithout("content-length")
    manifest = hub.repos["library/base"].manifests["1"]
    hub.repos[name].manifests["new"] = manifest  # the same image under a tag not cached yet
    tag = f"/v2/{name}/manifests/new"
    async with mirror(tmp_path, hub) as app:
        assert await get(app, TAG) == (200, manifest)
        answer = await call_asgi(app, "HEAD", tag, host="mirror.test", headers=AS_ANON.items())
        assert (answer.status, answer.body) == (200, b"")
        assert answer.headers["Content-Length"] == str(len(manifest))
        assert answer.headers["Docker-Content-Digest"] == digest_of(manifest)
        assert answer.headers["Content-Type"] == DOCKER_MANIFEST
        assert await get(app, tag) == (200, manifest)
    assert hub.seen("HEAD", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("GET", "manifests", mirror=False) == []
    assert hub.seen("GET", "manifests") == [TAG]  # the tag's GET was a hit
    assert hub.seen("HEAD", "manifests") == [tag]


class BasicRegistry:
    """A registry with Basic auth and no token service (``docxy.upstream`` sends the mirror's
    ``upstream.username``/``password``): a client of the mirror holds no login for it, so a
    request passed through to it is a 401."""

    login = basic("bot", "s3cret")

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}  # tag or digest -> manifest
        self.requests: list[httpx.Request] = []
        self.down = False  # every request answered 503

    def tag(self, tag: str, content: bytes) -> str:
        digest = digest_of(content)
        self.manifests[tag] = self.manifests[digest] = content
        return digest

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            return fakes.reply(503, b"{}", length=True)
        if request.headers.get("authorization") != self.login:
            return fakes.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="lab"'}, length=True)
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        content = self.manifests.get(request.url.path.rpartition("/")[2])
        if content is None:
            return fakes.reply(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}', length=True)
        headers = {
            "Content-Type": DOCKER_MANIFEST,
            "Docker-Content-Digest": digest_of(content),
            "Content-Length": str(len(content)),
        }
        return fakes.reply(200, b"" if request.method == "HEAD" else content, headers)


BASIC_LOGIN = {"upstream__username": "bot", "upstream__password": "s3cret"}


def two_versions() -> tuple[BasicRegistry, bytes, bytes]:
    """A Basic-auth registry whose tag ``1`` names version 1 of a manifest; and version 2."""
    registry = BasicRegistry()
    old = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "v": 1}).encode()
    new = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "v": 2}).encode()
    registry.tag("1", old)
    return registry, old, new


async def test_a_head_of_a_tag_that_moved_is_answered_by_the_mirror_not_passed_through(
    tmp_path: Path,
) -> None:
    """containerd resolves a tag by HEAD. When the cached tag has moved upstream, the mirror's
    own HEAD already knows the new digest: it answers with it (the client then GETs that digest
    through the mirror). Passed through instead, the HEAD went upstream with the client's
    credentials, which for an upstream the mirror reaches with a login of its own (Basic, no
    token service) is a 401 at every try: the new image could never be resolved."""
    registry, old, new = two_versions()
    tag = "/v2/team/tool/manifests/1"
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:

        async def resolve() -> tuple[int, str | None]:
            answer = await call_asgi(app, "HEAD", tag, host="mirror.test")
            return answer.status, answer.headers.get("Docker-Content-Digest")

        async def fetch(digest: str) -> bytes:
            response = await app.test_client().get(f"/v2/team/tool/manifests/{digest}")
            assert response.status_code == 200
            return await response.get_data(as_text=False)

        assert await resolve() == (200, digest_of(old))
        assert await fetch(digest_of(old)) == old
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0  # the cached tag is revalidated at each resolve
        moved = registry.tag("1", new)
        assert await resolve() == (200, moved)
        assert await fetch(moved) == new
        assert await resolve() == (200, moved)
        assert [t.digest for t in cache.manifests.list_tags()] == [parse_digest(moved)]
    asked = [r for r in registry.requests if "/manifests/" in r.url.path]
    assert all(r.headers.get("authorization") == BasicRegistry.login for r in asked)


async def pulled_then_moved(
    app: Quart, registry: BasicRegistry, old: bytes, new: bytes
) -> tuple[manifests.ManifestStore, str]:
    """Tag ``1`` pulled as containerd does (HEAD, GET by digest) at ``old``, then moved to
    ``new`` upstream and resolved again by a HEAD (its TTL run out): the cache's manifest
    store and the new digest, not fetched yet."""
    assert (await call_asgi(app, "HEAD", TAG_1, host="mirror.test")).status == 200
    got = await app.test_client().get(f"/v2/team/tool/manifests/{digest_of(old)}")
    assert got.status_code == 200
    cache = mirror_state(app).cache
    assert cache is not None
    cache.manifests.tag_ttl = 0
    moved = registry.tag("1", new)
    head = await call_asgi(app, "HEAD", TAG_1, host="mirror.test")
    assert head.headers["Docker-Content-Digest"] == moved
    return cache.manifests, moved


TAG_1 = "/v2/team/tool/manifests/1"


async def test_a_tag_found_moved_by_a_head_names_the_new_manifest_once_it_is_fetched(
    tmp_path: Path,
) -> None:
    """containerd: HEAD of the tag (moved upstream), then GET of the new digest, now cached.
    The tag kept naming the old manifest until the next resolve: an outage in between served
    the old image stale, though the mirror held the new one and had served it."""
    registry, old, new = two_versions()
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:
        store, moved = await pulled_then_moved(app, registry, old, new)
        tags = [t.digest for t in store.list_tags()]
        assert tags == [parse_digest(digest_of(old))]  # an outage now still finds the old one
        got = await app.test_client().get(f"/v2/team/tool/manifests/{moved}")
        assert got.status_code == 200
        assert [t.digest for t in store.list_tags()] == [parse_digest(moved)]


async def test_two_tags_found_moved_to_one_manifest_both_name_it_once_it_is_fetched(
    tmp_path: Path,
) -> None:
    """``latest`` and ``1`` move upstream to one new image, and each is resolved by a HEAD
    before the GET by digest: only the last HEADed followed it (the record of moves was kept
    per digest), and an outage then served the other's old image stale."""
    registry, old, new = two_versions()
    latest = "/v2/team/tool/manifests/latest"
    registry.tag("latest", old)
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:
        assert (await call_asgi(app, "HEAD", latest, host="mirror.test")).status == 200
        store, moved = await pulled_then_moved(app, registry, old, new)
        assert registry.tag("latest", new) == moved
        head = await call_asgi(app, "HEAD", latest, host="mirror.test")
        assert head.headers["Docker-Content-Digest"] == moved
        got = await app.test_client().get(f"/v2/team/tool/manifests/{moved}")
        assert got.status_code == 200
        named = {t.tag: str(t.digest) for t in store.list_tags()}
    assert named == {"1": moved, "latest": moved}


async def test_a_late_get_of_a_digest_a_head_found_does_not_move_the_tag_back(
    tmp_path: Path,
) -> None:
    """Client A resolves the moved tag (v2) and is slow; the tag moves on (v3) and client B's
    GET by tag records it; A's GET of v2 then moved the tag back to v2, as fresh."""
    registry, old, v2 = two_versions()
    v3 = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "v": 3}).encode()
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:
        client = app.test_client()
        store, moved = await pulled_then_moved(app, registry, old, v2)
        latest = registry.tag("1", v3)
        assert (await client.get(TAG_1)).status_code == 200
        assert (await client.get(f"/v2/team/tool/manifests/{moved}")).status_code == 200
        assert [t.digest for t in store.list_tags()] == [parse_digest(latest)]


def refusing_manifest_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest store's manifest writes fail as on a full disk; its tag records do not."""

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifests.ManifestStore, "_write_manifest", full)


async def test_a_moved_tag_keeps_its_cached_record_while_the_new_manifest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GET of the new digest, found by a HEAD, moved the tag to it although the disk had
    refused that manifest: the tag then named nothing cached, and an outage had no image to
    serve stale. Now the tag moves once the new manifest is kept."""
    registry, old, new = two_versions()
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:
        store, moved = await pulled_then_moved(app, registry, old, new)
        refusing_manifest_writes(monkeypatch)
        got = await app.test_client().get(f"/v2/team/tool/manifests/{moved}")
        assert got.status_code == 200
        assert got.headers["Cache-Status"].endswith("stored=?0; detail=cache-unwritable")
        assert [t.digest for t in store.list_tags()] == [parse_digest(digest_of(old))]
        monkeypatch.undo()
        assert (await app.test_client().get(f"/v2/team/tool/manifests/{moved}")).status_code == 200
        assert [t.digest for t in store.list_tags()] == [parse_digest(moved)]


async def test_a_tag_fetched_again_but_refused_by_the_disk_is_still_served_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale tag's GET found it moved and fetched the new manifest, which the disk refused:
    the tag was pointed at it all the same, so an outage then answered 503 where the old image
    was still cached. The tag now keeps its record."""
    registry, old, new = two_versions()
    async with mirror(tmp_path, registry, **BASIC_LOGIN) as app:
        client = app.test_client()
        assert await (await client.get(TAG_1)).get_data() == old
        cache = mirror_state(app).cache
        assert cache is not None
        cache.manifests.tag_ttl = 0
        registry.tag("1", new)
        refusing_manifest_writes(monkeypatch)
        got = await client.get(TAG_1)
        assert await got.get_data() == new
        assert got.headers["Cache-Status"].endswith("stored=?0; detail=cache-unwritable")
        registry.down = True
        stale = await client.get(TAG_1)
        assert stale.status_code == 200
        assert await stale.get_data() == old


async def test_a_head_by_digest_not_cached_is_answered_by_the_mirror(tmp_path: Path) -> None:
    """containerd resolves a digest-pinned image with a HEAD by digest: when the cache does not
    hold that manifest yet, the mirror's own HEAD answers (the client holds no login for a
    Basic-auth upstream: passed through, it was a 401 and the pull failed)."""
    registry = BasicRegistry()
    content = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    digest = registry.tag("1", content)
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, registry, **settings) as app:
        path = f"/v2/team/tool/manifests/{digest}"
        answer = await call_asgi(app, "HEAD", path, host="mirror.test")
        assert (answer.status, answer.body) == (200, b"")
        assert answer.headers["Docker-Content-Digest"] == digest
        assert answer.headers["Content-Length"] == str(len(content))
        assert answer.headers["Content-Type"] == DOCKER_MANIFEST
    asked = [r for r in registry.requests if "/manifests/" in r.url.path]
    assert [r.headers.get("authorization") for r in asked] == [BasicRegistry.login]


async def test_a_cached_manifest_by_digest_the_client_does_not_accept_costs_one_get(
    tmp_path: Path,
) -> None:
    """A client whose Accept leaves out a cached manifest's type is passed through (it gets
    the upstream's own answer), as for a tag: one upstream GET, its own. The mirror fetching
    the same immutable manifest again first made it two counted pulls."""
    hub = Hub()
    manifest = hub.repos["library/base"].manifests["1"]
    digest = digest_of(manifest)
    hub.repos["library/base"].manifests[digest] = manifest
    path = f"/v2/library/base/manifests/{digest}"
    async with mirror(tmp_path, hub) as app:
        assert (await app.test_client().get(path, headers=AS_ANON)).status_code == 200
        asked = len(hub.requests)
        narrow = AS_ANON | {"Accept": "application/vnd.oci.image.index.v1+json"}
        response = await app.test_client().get(path, headers=narrow)
        assert response.status_code == 200  # the hub answers whatever the Accept
        gets = [r for r in hub.requests[asked:] if r.method == "GET"]
    assert [r.headers.get("authorization") for r in gets] == [AS_ANON["Authorization"]]


async def test_a_basic_auth_upstream_is_reached_with_the_mirrors_login_when_passing_through(
    tmp_path: Path,
) -> None:
    """An upstream without a token service takes only the Basic login the mirror is configured
    with; its clients hold none (the mirror hands them a token that grants nothing upstream). A
    request passed through (the cache off, a blob larger than the cache, a Range on a miss...)
    goes with the mirror's login, else it is a 401 whatever the client does. A client's own
    Basic login (``docker login`` to one of the upstream's host names) still goes as sent."""
    registry = BasicRegistry()
    content = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    registry.tag("1", content)
    settings = {
        "upstream__username": "bot",
        "upstream__password": "s3cret",
        "cache__enabled": "false",
    }
    async with mirror(tmp_path, registry, **settings) as app:
        for auth in ({}, {"Authorization": "Bearer docxy-offline"}):
            response = await app.test_client().get("/v2/team/tool/manifests/1", headers=auth)
            assert response.status_code == 200
            assert await response.get_data(as_text=False) == content
        own = {"Authorization": basic("alice", "pw")}
        response = await app.test_client().get("/v2/team/tool/manifests/1", headers=own)
        assert response.status_code == 401  # hers, as sent: the registry does not know alice
    asked = [r.headers.get("authorization") for r in registry.requests if r.url.path != "/v2/"]
    assert asked == [BasicRegistry.login, BasicRegistry.login, basic("alice", "pw")]


async def test_a_private_repositorys_manifests_pass_through_without_asking_again(
    tmp_path: Path,
) -> None:
    """A repository the mirror's token may not read: its first manifest GET tries that token
    (a GET, a fresh token, the GET again), then passes through with the client's. Each later
    one did all that again (four requests upstream for each GET or HEAD, labelled
    ``upstream-answer``); for a while now it passes straight through, labelled ``private``,
    as the repository's blobs do."""
    hub = Hub()
    hub.repos["team/mine"].manifests["1"] = hub.repos["library/base"].manifests["1"]
    mine = "/v2/team/mine/manifests/1"
    client = {"Authorization": hub.client_token}
    async with mirror(tmp_path, hub) as app:
        for method in ("GET", "GET", "HEAD", "GET"):
            answer = await call_asgi(app, method, mine, host="mirror.test", headers=client.items())
            assert answer.status == 200
            assert answer.headers.getlist("Cache-Status")[-1].endswith("detail=private")
    mirrors = [*hub.seen("GET", "manifests"), *hub.seen("HEAD", "manifests")]
    assert mirrors == [mine, mine]  # the first GET and its retry with a fresh token
    assert hub.seen("GET", "manifests", mirror=False) == [mine] * 3


async def test_a_refusal_from_where_the_registry_redirected_makes_nothing_private(
    tmp_path: Path,
) -> None:
    """A 403 from where the registry sent the mirror's manifest GET (a CDN's signed URL that
    expired) says nothing of the mirror's token, as for blobs: it made the repository private
    for a minute (its manifests passed through, uncached, labelled ``private``)."""
    hub = Hub()
    path = "/v2/library/base/manifests/1"
    redirected: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            return json_reply(403, {"errors": [{"code": "DENIED"}]})
        ours = request.headers.get("authorization") in MIRROR_TOKENS
        if request.url.path == path and ours and not redirected:
            redirected.append(path)
            return httpx.Response(307, headers={"Location": "https://cdn.test/signed"})
        return hub(request)

    async with mirror(tmp_path, upstream) as app:
        for _ in range(2):
            answer = await call_asgi(app, "GET", path, host="mirror.test", headers=AS_ANON.items())
            assert answer.status == 200
    assert redirected == [path]
    assert not answer.headers.getlist("Cache-Status")[-1].endswith("detail=private")
    assert hub.seen("GET", "manifests") == [path]  # the second, with the mirror's token


async def test_a_manifest_nested_too_deep_for_json_is_no_server_error(tmp_path: Path) -> None:
    """A manifest of 100,000 ``[`` from the upstream: json.loads raised RecursionError (no
    ValueError) in the cache's descriptor reading, past every handler: a 500 and a traceback."""
    hub = Hub()
    deep = b"[" * 100_000
    hub.repos["library/base"].manifests["deep"] = deep
    async with mirror(tmp_path, hub) as app:
        answer = await call_asgi(
            app, "GET", "/v2/library/base/manifests/deep", host="mirror.test",
            headers=AS_ANON.items(),
        )  # fmt: skip
    assert answer.status == 200 and answer.body == deep


class SilentHub(Hub):
    """The hub, whose registry (``registry``) or token service (``tokens``) sends nothing in
    time: the read timeout fires before any answer. ``realm`` moves the token service (to the
    registry's own host, as ghcr.io has it)."""

    def __init__(self, *, registry: bool = False, tokens: bool = False, realm: str = AUTH) -> None:
        super().__init__()
        self.silent_registry, self.silent_tokens, self.realm = registry, tokens, realm

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = str(request.url.copy_with(query=None)) == self.realm
        silent = self.silent_tokens if token else self.silent_registry
        if silent and (token or "/manifests/" in request.url.path):
            self.requests.append(request)
            raise httpx.ReadTimeout("nothing came", request=request)
        if token:
            request = httpx.Request(request.method, request.url.copy_with(host="auth.test"))
        answer = super().__call__(request)
        if "WWW-Authenticate" in answer.headers:  # the hub's challenge, to this realm
            answer.headers["WWW-Authenticate"] = f'Bearer realm="{self.realm}",service="{HOST}"'
        return answer

    def asked(self, part: str) -> list[tuple[str, str | None]]:
        """Method and ``Authorization`` of each request whose URL has ``part``."""
        found = [r for r in self.requests if part in str(r.url)]
        return [(r.method, r.headers.get("authorization")) for r in found]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_registry_silent_to_the_mirrors_fetch_is_not_asked_again_for_the_client(
    tmp_path: Path, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A miss whose fetch got nothing in time was passed through, to wait as long again
    (120 s with the default read timeout). Now the client gets the 504 at once: one request
    upstream, the mirror's, and the access log says why (no Cache-Status: the mirror's own
    error)."""
    caplog.set_level(logging.INFO, logger="docxy.access")
    hub = SilentHub(registry=True)
    async with mirror(tmp_path, hub) as app:
        logged = AccessLog(Guard(app, None))
        answer = await call_asgi(logged, method, TAG, host="mirror.test", headers=AS_ANON.items())
    assert answer.status == 504
    assert "Cache-Status" not in answer.headers
    if method == "GET":
        error = json.loads(answer.body)["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert error["message"].startswith("the upstream registry did not answer in time")
    assert hub.asked("/manifests/") == [(method, "Bearer anon")]
    said = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(said) == 1 and " 504 " in said[0], said
    assert " cache=uncached reason=upstream-failed " in said[0], said


async def test_a_silent_token_service_still_lets_the_client_ask_with_its_own_token(
    tmp_path: Path,
) -> None:
    """The mirror could get no token: the registry itself may answer the client's own."""
    hub = SilentHub(tokens=True)
    async with mirror(tmp_path, hub) as app:
        assert await get(app, TAG) == (200, hub.repos["library/base"].manifests["1"])
    assert hub.seen("GET", "manifests", mirror=False) == [TAG]  # the client's, passed through


async def test_a_silent_token_service_is_not_asked_again_for_a_client_without_a_token(
    tmp_path: Path,
) -> None:
    """Sent on without a credential of its own, the client's request would have the token
    service asked again (for the mirror, or for it): the 504 comes at once."""
    hub = SilentHub(tokens=True)
    async with mirror(tmp_path, hub) as app:
        status, _ = await get(app, TAG, auth=None)
    assert status == 504
    assert hub.asked(AUTH) == [("GET", None)]  # the mirror's one token request
    assert hub.asked("/manifests/") == []


async def test_a_silent_token_service_on_the_registrys_host_is_the_registry_silent(
    tmp_path: Path,
) -> None:
    """ghcr.io's tokens come from ghcr.io/token: that host sending nothing is the registry's
    silence, and the client's own request would wait on it as long."""
    hub = SilentHub(tokens=True, realm=f"{REGISTRY}/token")
    async with mirror(tmp_path, hub) as app:
        assert (await get(app, TAG))[0] == 504
    assert hub.asked("/manifests/") == []  # nothing passed through
