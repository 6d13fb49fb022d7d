"""Review faults in the upstream/pull path (docxy.pull, docxy.upstream), each shown failing first:
a confirming HEAD in trouble, a ``/v2/`` re-probe in trouble, concurrent 401s, and a direct
fill's bad redirect."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.tasks import spawn
from docxy.upstream import direct
from docxy.upstream.client import Upstream, UpstreamClient, upstream_ssl_context
from docxy.upstream.direct import DirectSettings
from docxy.upstream.tokens import MirrorTokens
from lab.clients.background import Background
from lab.ports import on_own_port
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import APP, Hub, blob_url, get, json_reply
from tests.unit.test_upstream_tokens import CHALLENGE, UPSTREAM
from tests.unit.turns import until

BLOB_PATH = "/v2/library/redis/blobs/sha256:" + "a" * 64

# --- 1. a confirming HEAD answered 429/5xx ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(429, "TOOMANYREQUESTS"), (503, "UNAVAILABLE")], ids=["429", "503"]
)
async def test_a_confirming_head_in_trouble_tells_the_client_when_to_retry(
    tmp_path: Path, status: int, code: str
) -> None:
    """A blob cached under one repository is asked for under another: the mirror confirms the
    pairing with an upstream HEAD, which the upstream answers 429 (or 503) with a Retry-After.
    The client got a 502 without it, which tells it nothing of when to try again; it gets
    the upstream's status and Retry-After, in the registry's JSON error format, as a relayed
    answer, ``/v2/`` and the token endpoint pass them on. Nothing cached leaks."""
    hub = Hub()

    def troubled(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            hub.requests.append(request)
            return json_reply(status, {"errors": [{"code": code}]}, {"Retry-After": "120"})
        return hub(request)

    async with mirror(tmp_path, troubled) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        response = await app.test_client().get(
            blob_url("library/other", APP), headers={"Authorization": "Bearer client-anon"}
        )
        body = await response.get_data(as_text=False)
    assert (response.status_code, response.headers.get("Retry-After")) == (status, "120")
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == code
    assert APP not in body


# --- 2. the /v2/ re-probe in trouble while a token is held --------------------------------------


class Flaky:
    """A token registry whose ``/v2/`` answers ``ping`` (401 with its challenge, or trouble);
    its token service counts what it issued; blobs are served to any token it issued, or to
    anyone (``open``)."""

    def __init__(self) -> None:
        self.open = False
        self.ping = 401
        self.issued = 0
        self.pings = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            self.issued += 1
            return httpx.Response(200, json={"token": f"t{self.issued}", "expires_in": 3600})
        if request.url.path == "/v2/":
            self.pings += 1
            return httpx.Response(self.ping, headers={"WWW-Authenticate": CHALLENGE})
        if self.open or request.headers.get("authorization", "").startswith("Bearer t"):
            return httpx.Response(200, content=b"blob")
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})


@pytest.mark.parametrize("trouble", [429, 500, 503])
async def test_a_reprobe_in_trouble_does_not_fail_a_pull_with_a_held_token(
    monkeypatch: pytest.MonkeyPatch, trouble: int
) -> None:
    """Past ``REALM_TTL`` the mirror's request asks ``/v2/`` again first; a 5xx (or 429) there
    failed the request though the mirror held a token that the upstream still takes. A 5xx
    says nothing of the upstream's auth: the challenge last seen stands, the token is used.
    Without a token held nothing is known to go on with: that still fails, as does the health
    probe's own look (its trouble is told)."""
    monkeypatch.setattr("docxy.upstream.client.REALM_TTL", 0.0)  # every request re-probes
    registry = Flaky()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        client = UpstreamClient(http)
        tokens = MirrorTokens(client)
        answer = await tokens.send(UPSTREAM, "GET", "library/redis", BLOB_PATH)
        assert answer.status_code == 200
        registry.ping = trouble
        pings = registry.pings
        answer = await tokens.send(UPSTREAM, "GET", "library/redis", BLOB_PATH)
        assert answer.status_code == 200
        assert answer.request.headers["authorization"] == "Bearer t1"
        assert registry.pings == pings + 1  # asked: a probe that succeeds ends the trouble
        assert registry.issued == 1
        with pytest.raises(UpstreamUnavailable):  # no token for this one: nothing to go on
            await tokens.send(UPSTREAM, "GET", "library/nginx", BLOB_PATH)
        with pytest.raises(UpstreamUnavailable):  # the health probe hears of the trouble
            await client.challenge(UPSTREAM, refresh=True)


async def test_a_reprobe_in_trouble_does_not_fail_a_pull_from_an_open_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for an upstream without token auth (its ``/v2/`` answered 200): its requests
    need nothing from the probe, and went on failing while ``/v2/`` was in trouble."""
    monkeypatch.setattr("docxy.upstream.client.REALM_TTL", 0.0)
    registry = Flaky()
    registry.ping = 200
    registry.open = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert (await tokens.send(UPSTREAM, "GET", "library/redis", BLOB_PATH)).status_code == 200
        registry.ping = 503
        answer = await tokens.send(UPSTREAM, "GET", "library/redis", BLOB_PATH)
        assert answer.status_code == 200 and "authorization" not in answer.request.headers
    assert registry.issued == 0


# --- 3. concurrent 401s to one stale token ------------------------------------------------------


class Expired:
    """A token registry that no longer takes ``t1`` (it expired early): the first two requests
    with it are held until both are in, then answered 401, the second only once
    ``second_go`` is set. Its token service issues ``t1``, ``t2``, ... each once ``hold`` is
    set."""

    def __init__(self) -> None:
        self.issued = 0
        self.stale = 0
        self.seen: list[str | None] = []
        self.both_in = asyncio.Event()
        self.second_go = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            self.issued += 1
            issued = self.issued
            await self.hold.wait()
            return httpx.Response(200, json={"token": f"t{issued}", "expires_in": 3600})
        auth = request.headers.get("authorization")
        if request.url.path != "/v2/":
            self.seen.append(auth)
        if request.url.path != "/v2/" and auth == "Bearer t1":
            self.stale += 1
            turn = self.stale
            if turn == 2:
                self.both_in.set()
            await self.both_in.wait()
            if turn == 2:
                await self.second_go.wait()
        elif request.url.path != "/v2/" and auth is not None and auth.startswith("Bearer t"):
            return httpx.Response(200, content=b"blob")
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})


@pytest.mark.parametrize("second", ["after the new token", "while it is fetched"])
async def test_concurrent_401s_to_one_stale_token_fetch_one_new_token(second: str) -> None:
    """Two requests sent with the same token get 401 at once (it expired early upstream). Each
    dropped the token the mirror held, whatever it was by then: the second dropped the fresh
    one the first had just fetched (a third token request), or, coming while the first was
    fetching it, found none held and took the 401 for the upstream's answer (which the pull
    services take for a repository private to the mirror). A 401 drops only the token it was
    sent with: both go on with one new token."""
    registry = Expired()
    async with httpx.AsyncClient(transport=httpx.MockTransport(registry)) as http:
        tokens = MirrorTokens(UpstreamClient(http))
        assert await tokens.headers(UPSTREAM, "library/redis") == [("Authorization", "Bearer t1")]
        if second == "while it is fetched":
            registry.hold.clear()  # the first's new token is not in yet
        sends = [
            spawn(f"send {n}", tokens.send(UPSTREAM, "GET", "library/redis", BLOB_PATH))
            for n in range(2)
        ]
        if second == "after the new token":
            await until(lambda: "Bearer t2" in registry.seen)  # the first retried with it
        else:
            await until(lambda: registry.issued == 2)  # the first is fetching t2
        registry.second_go.set()
        if second == "while it is fetched":
            await until(lambda: tokens.followers_joined == 1 or any(s.done() for s in sends))
            registry.hold.set()
        answers = await asyncio.gather(*sends)
    assert [a.status_code for a in answers] == [200, 200]
    assert registry.issued == 2  # t1, then one fresh token for both


# --- 4. a direct fill's bad redirect ------------------------------------------------------------


class Redirecting(BaseHTTPRequestHandler):
    """``/none``: a redirect without a Location; ``/ftp``: to a non-HTTP URL; ``/loop``: to
    itself, for ever."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(307)
        if self.path == "/ftp":
            self.send_header("Location", "ftp://files.invalid/blob")
        elif self.path == "/loop":
            self.send_header("Location", "/loop")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    """A loopback server on 127.0.0.74, on a free port below 10000; its base URL."""
    server = on_own_port(lambda port: ThreadingHTTPServer(("127.0.0.74", port), Redirecting))
    server.daemon_threads = True
    with Background(server) as served:
        yield served.url


@pytest.mark.parametrize("path", ["/none", "/ftp", "/loop"])
async def test_a_direct_fills_bad_redirect_is_an_answer_as_on_httpx(
    redirecting: str, path: str
) -> None:
    """The registry answers a fill's blob GET with a redirect that leads nowhere (no Location,
    a non-HTTP one, a loop). On httpx's path that is an answer from the upstream (reachable,
    healthy, no failure counted); the direct path counted it as the upstream unreachable in
    /health (``docxy_upstream_errors_total{kind="unreachable"}``). Both say the same now, and
    both tell the answers' listeners (the metrics) of the redirects."""
    upstream = Upstream(redirecting)
    url = upstream.url(path)
    healths = []
    answered: Counter[int] = Counter()
    for path_kind in ("httpx", "direct"):
        settings = DirectSettings(upstream_ssl_context(), 5.0, 5.0)
        async with httpx.AsyncClient() as http:
            client = UpstreamClient(http, settings)
            client.direct_listeners.append(lambda _url, status, _asked: answered.update([status]))
            with pytest.raises(UpstreamUnavailable):
                if path_kind == "httpx":
                    await client.send(upstream, "GET", url, [("Authorization", "Bearer t")])
                else:
                    await direct.open_get(client, upstream, url, [("Authorization", "Bearer t")])
            settings.idle.close()
            health = client.health_of(upstream)
            healths.append((health.reachable, health.healthy, dict(health.failures)))
    assert healths[1] == healths[0] == (True, True, {})
    assert answered[307] >= 1
