"""Review of the mirror's own manifest HEADs (docxy/pull/manifests.py): a fleet revalidating a
tag whose ``cache.tag_ttl`` just ran out, or resolving a tag the cache does not hold by HEAD,
sends one upstream HEAD, not one per client, as its GETs share one upstream GET. A HEAD passed
through with a client's own credentials is never shared: its answer depends on who asks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from quart import Quart

from docxy.http.state import mirror_state
from docxy.pull.manifests import ManifestService
from docxy.tasks import spawn
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import pulled_then_stale
from tests.unit.test_pull_scoped_blobs import (
    AS_ANON,
    MIRROR_TOKENS,
    Hub,
    anonymous_token,
    digest_of,
)
from tests.unit.test_review_privrelay import HidesPrivate
from tests.unit.turns import until

TAG = "/v2/library/base/manifests/1"
PRIVATE = "/v2/team/mine/manifests/1"
READER = "Bearer client-of-team-mine"  # Hub.client_token: may read team/mine
STRANGER = "Bearer someone-else"  # a token of its own, which may not
CREDS = (READER, STRANGER)
CLIENTS = 20
GUARD = 30.0  # seconds a held request waits before it fails (never reached when it works)


def mirror_heads(requests: list[httpx.Request]) -> list[str]:
    """Paths of the manifest HEADs the mirror sent with its own token."""
    return [
        r.url.path
        for r in requests
        if r.method == "HEAD"
        and "/manifests/" in r.url.path
        and r.headers.get("authorization") in MIRROR_TOKENS
    ]


class HeldHeads(Hub):
    """The hub, the mirror's own manifest HEADs held until :attr:`release` is set;
    :attr:`arrived` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.arrived = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        if request.method == "HEAD" and "/manifests/" in request.url.path and auth in MIRROR_TOKENS:
            self.arrived += 1
            await asyncio.wait_for(self.release.wait(), GUARD)
        return self(request)


def service_of(app: Quart) -> ManifestService:
    return mirror_state(app).running.manifests


async def all_in(hub: HeldHeads, app: Quart) -> None:
    """Every client is in: each sent its own HEAD upstream, or waits for the one in flight."""
    service = service_of(app)
    await until(
        lambda: (
            hub.arrived == CLIENTS
            or (hub.arrived == 1 and getattr(service, "heads_joined", 0) == CLIENTS - 1)
        )
    )


async def fleet_heads(tmp_path: Path, hub: HeldHeads) -> list[AsgiAnswer]:
    """CLIENTS anonymous HEADs of TAG at once, the mirror's upstream HEAD held until all are in."""
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)

        async def head() -> AsgiAnswer:
            return await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=AS_ANON.items())

        heads = [spawn(f"head {n}", head()) for n in range(CLIENTS)]
        await all_in(hub, app)
        hub.release.set()
        return await asyncio.wait_for(asyncio.gather(*heads), GUARD)


async def test_concurrent_heads_of_a_tag_not_cached_cost_one_upstream_head(
    tmp_path: Path,
) -> None:
    """containerd resolves a tag by HEAD: a fleet rolling out a tag the cache does not hold
    sent one upstream HEAD per client (20 for 20), each made with the mirror's own token, so
    each answer was the same. Now one, its answer given to all."""
    hub = HeldHeads()
    manifest = hub.repos["library/base"].manifests["1"]
    answers = await fleet_heads(tmp_path, hub)
    for answer in answers:
        assert answer.status == 200
        assert answer.headers["Docker-Content-Digest"] == digest_of(manifest)
        assert answer.headers["Content-Length"] == str(len(manifest))
    assert mirror_heads(hub.requests) == [TAG]  # one upstream HEAD for the fleet
    assert hub.seen("HEAD", "manifests", mirror=False) == []  # nothing passed through


async def test_concurrent_gets_of_a_stale_tag_cost_one_upstream_head(tmp_path: Path) -> None:
    """A tag whose TTL ran out is revalidated with a free upstream HEAD: 20 clients pulling it
    at once sent 20 HEADs. Now one, and each is served the cached manifest, revalidated."""
    hub = HeldHeads()
    manifest = hub.repos["library/base"].manifests["1"]
    hub.release.set()  # the first pull's (none expected: a GET)
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)
        await pulled_then_stale(app, manifest)
        hub.release.clear()
        hub.arrived = 0
        before = len(hub.requests)

        async def pull() -> tuple[int, bytes]:
            response = await app.test_client().get(TAG, headers=AS_ANON)
            return response.status_code, await response.get_data(as_text=False)

        pulls = [spawn(f"pull {n}", pull()) for n in range(CLIENTS)]
        await all_in(hub, app)
        hub.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*pulls), GUARD)
    assert answers == [(200, manifest)] * CLIENTS
    later = hub.requests[before:]
    assert mirror_heads(later) == [TAG]  # one revalidation for the fleet
    assert [r.url.path for r in later if r.method == "GET" and "/manifests/" in r.url.path] == []


class HeldClientHeads(HidesPrivate):
    """:class:`HidesPrivate` (the mirror's token told ``404`` for ``team/mine``, a reader's
    token served), each manifest HEAD made with a client's own token held until both clients'
    have arrived (:attr:`go`); :attr:`theirs` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.theirs = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        if request.method == "HEAD" and request.url.path == PRIVATE and auth in CREDS:
            self.theirs += 1
            await asyncio.wait_for(self.go.wait(), GUARD)
        return self(request)


async def test_heads_passed_through_with_client_credentials_are_not_shared(
    tmp_path: Path,
) -> None:
    """Two clients with tokens of their own HEAD one manifest at once, in a repository the
    registry hides from the mirror's token (a 404): each HEAD passes through with its own
    token, both at once, and each client gets the registry's answer to it: the reader 200,
    the stranger 404. Shared, one would have been told what the other may read."""
    hub = HeldClientHeads()
    assert hub.client_token == READER
    manifest = hub.repos["team/mine"].manifests["1"]
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]

        async def head(auth: str) -> AsgiAnswer:
            headers = [("Authorization", auth)]
            return await call_asgi(app, "HEAD", PRIVATE, host="mirror.test", headers=headers)

        reader = spawn("reader", head(READER))
        stranger = spawn("stranger", head(STRANGER))
        await until(lambda: hub.theirs == 2)  # both in flight upstream at once, each its own
        hub.go.set()
        read, refused = await asyncio.wait_for(asyncio.gather(reader, stranger), GUARD)
    assert read.status == 200
    assert read.headers["Docker-Content-Digest"] == digest_of(manifest)
    assert refused.status == 404
    theirs = [auth for method, auth in hub.asked(PRIVATE) if method == "HEAD" and auth in CREDS]
    assert sorted(str(auth) for auth in theirs) == sorted(CREDS)  # each its own HEAD
