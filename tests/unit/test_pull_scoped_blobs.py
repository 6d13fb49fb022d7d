"""Repository-scoped blobs: a cached blob is served under a repository only where it is held.

The fake upstream scopes blobs to repositories as Distribution and Docker Hub do (a blob not
linked in a repository is a 404 there, a private repository is a 401 without the right token),
so each test asserts what a client of the mirror would see, and what the upstream was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.cache import AccessIndex, ManifestStore, RepoKey, parse_digest
from docxy.cache.pairings import BlobPairings
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.test_pull_blobs import basic, committed, mirror

HOST = "registry.test"  # of test_pull_blobs.REGISTRY, the upstream mirror() is given
AUTH = "https://auth.test/token"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCOUNT = ("bot", "s3cret")
MIRROR_TOKENS = ("Bearer anon", "Bearer account")  # what the hub's token service hands out


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_of(*blobs: bytes) -> bytes:
    config, *layers = blobs
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "c", "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": "l", "digest": digest_of(b), "size": len(b)} for b in layers],
    }
    return json.dumps(doc).encode()


CONFIG = b'{"architecture": "amd64"}'
BASE = b"base layer " * 50000  # shared by the images below
APP = b"app layer " * 40000
SECRET = b"the account's private layer " * 30000


@dataclass
class Repo:
    blobs: set[str]
    private: bool = False
    manifests: dict[str, bytes] = field(default_factory=dict)  # tag -> manifest


class Hub:
    """Token auth; blobs and manifests scoped to repositories; ``down`` refuses connections."""

    def __init__(self) -> None:
        public = manifest_of(CONFIG, BASE)
        self.contents = {digest_of(b): b for b in (CONFIG, BASE, APP, SECRET)}
        self.repos = {
            "library/base": Repo({digest_of(CONFIG), digest_of(BASE)}, manifests={"1": public}),
            "library/app": Repo({digest_of(CONFIG), digest_of(BASE), digest_of(APP)}),
            "library/other": Repo({digest_of(APP)}),
            "team/secret": Repo({digest_of(CONFIG), digest_of(SECRET)}, private=True),
            "team/mine": Repo({digest_of(CONFIG), digest_of(BASE)}, private=True),
        }
        self.repos["library/app"].manifests["1"] = manifest_of(CONFIG, BASE, APP)
        self.repos["library/other"].manifests["1"] = manifest_of(APP)
        self.client_token = "Bearer client-of-team-mine"
        self.down = False
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        if request.url.host == "auth.test":
            auth = request.headers.get("authorization")
            token = "account" if auth == basic(*ACCOUNT) else "anon"
            return json_reply(200, {"token": token})
        path = request.url.path
        if path == "/v2/":
            return self.challenge()
        name, _, rest = path.removeprefix("/v2/").rpartition("/")
        name, kind = name.rsplit("/", 1)
        repo = self.repos.get(name)
        auth = request.headers.get("authorization")
        readers = {"Bearer account", self.client_token} if repo and repo.private else None
        if repo is None or auth is None or (readers is not None and auth not in readers):
            return self.challenge()
        if kind == "manifests":
            content = repo.manifests.get(rest)
            if content is None:
                return json_reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            headers = {"Content-Type": DOCKER_MANIFEST, "Docker-Content-Digest": digest_of(content)}
            return fakes.reply(200, content, headers, length=True)
        if rest not in repo.blobs:
            return json_reply(404, {"errors": [{"code": "BLOB_UNKNOWN"}]})
        return fakes.reply(200, self.contents[rest], {}, length=True)

    @staticmethod
    def challenge() -> httpx.Response:
        headers = {"WWW-Authenticate": f'Bearer realm="{AUTH}",service="{HOST}"'}
        return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, headers)

    def seen(self, method: str, kind: str, *, mirror: bool = True) -> list[str]:
        """Paths of the registry requests of ``method`` for ``kind`` (blobs or manifests) the
        mirror made with its own token (``mirror``), or the others (passed through for clients,
        or checks made with their token)."""
        return [
            r.url.path
            for r in self.requests
            if r.method == method
            and r.url.host == HOST
            and f"/{kind}/" in r.url.path
            and (r.headers.get("authorization") in MIRROR_TOKENS) == mirror
        ]


def json_reply(status: int, doc: object, headers: dict[str, str] | None = None) -> httpx.Response:
    base = {"Content-Type": "application/json"} | (headers or {})
    return fakes.reply(status, json.dumps(doc).encode(), base, length=True)


def blob_url(repo: str, data: bytes) -> str:
    return f"/v2/{repo}/blobs/{digest_of(data)}"


ANON = "Bearer client-anon"  # what a client holds after the token dance for a public repository
AS_ANON = {"Authorization": ANON}


def anonymous_token(app: Quart) -> None:
    """Have the mirror know :data:`ANON` as its token endpoint knows the token it relayed for an
    anonymous pull (the token dance, not made here): no credential of the client's own, for
    which the registry's 404 to the mirror is the client's answer too (test_review_privrelay)."""
    mirror_state(app).client.anonymous_tokens.remember(ANON.removeprefix("Bearer "))


async def get(app: Quart, path: str, auth: str | None = ANON) -> tuple[int, bytes]:
    headers = {"Authorization": auth} if auth is not None else {}
    response = await app.test_client().get(path, headers=headers)
    return response.status_code, await response.get_data(as_text=False)


async def test_a_blob_cached_via_one_repository_is_not_served_under_another(
    tmp_path: Path,
) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        # library/base does not hold APP: the mirror asks, the upstream says no, nothing leaks.
        status, body = await get(app, blob_url("library/base", APP))
        assert status == 404
        assert APP not in body
        # ... not even its size, through a Range past the end.
        response = await app.test_client().get(
            blob_url("library/base", APP),
            headers={"Range": f"bytes={len(APP) + 10}-", "Authorization": ANON},
        )
        assert response.status_code != 416
        assert str(len(APP)) not in response.headers.get("Content-Range", "")
        head = await app.test_client().head(blob_url("library/base", APP), headers=AS_ANON)
        assert head.status_code == 404
    assert hub.seen("GET", "blobs") == ["/v2/library/app/blobs/" + digest_of(APP)]


async def test_a_repository_that_holds_the_blob_gets_it_from_cache_after_a_head(
    tmp_path: Path,
) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        for _ in range(2):  # confirmed once, then known
            assert await get(app, blob_url("library/other", APP)) == (200, APP)
    assert hub.seen("GET", "blobs") == ["/v2/library/app/blobs/" + digest_of(APP)]
    assert hub.seen("HEAD", "blobs") == ["/v2/library/other/blobs/" + digest_of(APP)]


async def test_a_manifest_served_for_a_repository_pairs_its_blobs_with_no_upstream_call(
    tmp_path: Path,
) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        for data in (CONFIG, BASE):
            assert await get(app, blob_url("library/app", data)) == (200, data)
        assert (await get(app, "/v2/library/base/manifests/1"))[0] == 200
        before = len(hub.requests)
        for data in (CONFIG, BASE):
            assert await get(app, blob_url("library/base", data)) == (200, data)
        assert hub.requests[before:] == []


async def test_pairings_from_manifests_survive_a_restart(tmp_path: Path) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/app", BASE)) == (200, BASE)
        assert (await get(app, "/v2/library/base/manifests/1"))[0] == 200
    hub.down = True  # a restart during an outage: what the manifests prove is still served
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/base", BASE)) == (200, BASE)
        assert (await get(app, blob_url("library/other", BASE)))[0] >= 500


async def test_the_accounts_private_blob_does_not_reach_anonymous_clients(
    tmp_path: Path,
) -> None:
    """With ``upstream.username``, the mirror reads the account's private repositories; what
    it caches from them must not come out under a public repository's name."""
    hub = Hub()
    account = {"upstream__username": ACCOUNT[0], "upstream__password": ACCOUNT[1]}
    async with mirror(tmp_path, hub, **account) as app:
        assert await get(app, blob_url("team/secret", SECRET)) == (200, SECRET)
        for method in ("get", "head"):
            call = getattr(app.test_client(), method)
            response = await call(blob_url("library/base", SECRET), headers=AS_ANON)
            assert response.status_code == 404
            assert SECRET not in await response.get_data()
    assert hub.seen("GET", "blobs") == ["/v2/team/secret/blobs/" + digest_of(SECRET)]


def naming(secret: dict[str, object]) -> bytes:
    """A public image's manifest that also names the private layer, where no registry checks
    it on push: a ``blobs`` list (no field of the cached types) or a layer with ``urls``."""
    doc = json.loads(manifest_of(CONFIG, BASE))
    descriptor = {"mediaType": "l", "digest": digest_of(SECRET), "size": len(SECRET)}
    if "urls" in secret:
        doc["layers"].append(descriptor | secret)
    else:
        doc["blobs"] = [descriptor]
    return json.dumps(doc).encode()


@pytest.mark.parametrize("secret", [{}, {"urls": ["https://cdn.example/layer"]}])
async def test_a_manifest_naming_a_blob_unchecked_does_not_unlock_it(
    tmp_path: Path, secret: dict[str, object]
) -> None:
    hub = Hub()
    hub.repos["evil/x"] = Repo(
        {digest_of(CONFIG), digest_of(BASE)}, manifests={"1": naming(secret)}
    )
    account = {"upstream__username": ACCOUNT[0], "upstream__password": ACCOUNT[1]}
    async with mirror(tmp_path, hub, **account) as app:
        assert await get(app, blob_url("team/secret", SECRET)) == (200, SECRET)  # cached
        assert (await get(app, "/v2/evil/x/manifests/1"))[0] == 200
        response = await app.test_client().get(blob_url("evil/x", SECRET), headers=AS_ANON)
        assert response.status_code == 404  # the upstream's answer: evil/x does not hold it
        assert SECRET not in await response.get_data()
        # the blobs its registry did check are paired as before: no upstream call for them
        before = len(hub.requests)
        assert await get(app, blob_url("evil/x", BASE)) == (200, BASE)
        assert hub.seen("GET", "blobs", mirror=True)[-1].endswith(digest_of(BASE))
        assert all(
            "/evil/x/blobs/" + digest_of(BASE) not in r.url.path
            for r in hub.requests[before:]
            if r.method == "HEAD"
        )


async def test_content_private_to_a_client_is_confirmed_with_its_own_token(
    tmp_path: Path,
) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/base", BASE)) == (200, BASE)  # public, cached
        # team/mine is private: the mirror's anonymous token is refused, the client's is not.
        mine = blob_url("team/mine", BASE)
        assert await get(app, mine, hub.client_token) == (200, BASE)
        status, body = await get(app, mine, None)
        assert status == 401 and BASE not in body
        status, body = await get(app, mine, "Bearer someone-else")
        assert status == 401 and BASE not in body
    assert hub.seen("GET", "blobs") == ["/v2/library/base/blobs/" + digest_of(BASE)]
    client_heads = [
        r for r in hub.requests if r.method == "HEAD" and r.headers.get("authorization")
    ]
    assert any(r.headers["authorization"] == hub.client_token for r in client_heads)


async def test_during_an_outage_only_known_pairings_are_served(tmp_path: Path) -> None:
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert (await get(app, "/v2/library/app/manifests/1"))[0] == 200
        assert await get(app, blob_url("library/app", BASE)) == (200, BASE)
        hub.down = True
        assert await get(app, blob_url("library/app", BASE)) == (200, BASE)  # stale-if-error
        status, body = await get(app, blob_url("library/base", BASE))  # unknown there
        assert status >= 500
        assert BASE not in body
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


async def test_a_client_joining_a_fill_for_another_repository_is_checked(
    tmp_path: Path,
) -> None:
    """Two clients ask at once, under a repository that holds the blob and one that does not:
    the second follows the first one's fill only if the upstream confirms its repository."""
    release = asyncio.Event()

    class Slow(fakes.Body):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            await release.wait()
            for chunk in self.chunks:
                yield chunk

    hub = Hub()
    plain = hub.__call__

    def slow_blob(request: httpx.Request) -> httpx.Response:
        answer = plain(request)
        if request.method == "GET" and answer.status_code == 200 and "/blobs/" in request.url.path:
            return fakes.reply(200, Slow(APP), {}, length=True)
        return answer

    async with mirror(tmp_path, slow_blob) as app:
        store = mirror_state(app).running.blobs.store
        assert store is not None
        client = app.test_client()
        first = spawn("first", client.get(blob_url("library/app", APP), headers=AS_ANON))
        while not hub.seen("GET", "blobs"):
            await asyncio.sleep(0)  # yield until the fill's GET went out
        second = spawn("second", client.get(blob_url("library/base", APP), headers=AS_ANON))
        while not store.followers_joined:
            await asyncio.sleep(0)  # yield until the second client joined the fill in flight
        release.set()
        refused = await second
        assert refused.status_code == 404
        assert APP not in await refused.get_data()
        answer = await first
        assert answer.status_code == 200 and await answer.get_data() == APP


def test_confirmed_pairings_are_bounded() -> None:
    pairings = BlobPairings(None, capacity=3)
    digest = parse_digest(digest_of(BASE))
    for n in range(10):
        pairings.confirm(RepoKey(HOST, f"r{n}"), digest, public=True)
    assert len(pairings) == 3
    assert pairings.visibility(RepoKey(HOST, "r0"), digest) is None
    assert pairings.visibility(RepoKey(HOST, "r9"), digest) is not None


async def test_the_manifest_store_knows_which_repositories_hold_a_blob(tmp_path: Path) -> None:
    access = AccessIndex(tmp_path / "access")
    store = ManifestStore.open(tmp_path / "manifests", access, tag_ttl=60)
    app, base = RepoKey(HOST, "library/app"), RepoKey(HOST, "library/base")
    put = await store.put(app, manifest_of(CONFIG, BASE, APP), DOCKER_MANIFEST, public=True)
    layer = parse_digest(digest_of(APP))
    assert store.blob_visibility(app, layer) is not None
    assert store.blob_visibility(base, layer) is None
    assert store.blob_visibility(RepoKey("elsewhere.test", "library/app"), layer) is None
    again = ManifestStore.open(tmp_path / "manifests", access, tag_ttl=60)
    assert again.blob_visibility(app, layer) is not None
    again.forget_images(
        [key for key in (i.key for i in again.images()) if key.digest == put.digest]
    )
    assert again.blob_visibility(app, layer) is None


@pytest.mark.parametrize("status", [429, 503])
async def test_an_upstream_in_trouble_confirms_nothing(tmp_path: Path, status: int) -> None:
    hub = Hub()
    plain = hub.__call__

    def troubled(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            hub.requests.append(request)
            return json_reply(status, {"errors": [{"code": "TOOMANYREQUESTS"}]})
        return plain(request)

    async with mirror(tmp_path, troubled) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        status_seen, body = await get(app, blob_url("library/other", APP))
        assert status_seen == status and APP not in body  # its status: retry later


async def test_a_cached_blob_on_a_cache_disk_gone_read_only_is_served_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel remounts a failing cache disk read-only (ext4 ``errors=remount-ro``): what
    is cached there is still served, the upstream down as well; before, every hit was a 500
    (the EROFS of noting the blob's last use escaped the lookup)."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        await committed(app)  # on the disk before it goes read-only
        fakes.utime_read_only(monkeypatch, tmp_path / "cache")
        hub.down = True
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
