"""The upstream client: redirects, failure mapping, health bookkeeping, realm discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from docxy import __version__
from docxy.config import UpstreamConfig, load_config
from docxy.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from docxy.upstream import outage
from docxy.upstream.client import (
    MAX_REDIRECTS,
    USER_AGENT,
    Upstream,
    UpstreamClient,
    UpstreamHealth,
    make_http_client,
    read_small,
    same_origin,
)
from lab.bed.httpserver import LoopbackServer, QuietHandler
from tests.unit.fakes import FakeUpstream, Handler, reply
from tests.unit.test_routes import hub, mirror

REGISTRY = "https://registry.example"
HUB = Upstream(REGISTRY)


def upstream_config(**settings: object) -> UpstreamConfig:
    overrides = {f"upstream.{key}": value for key, value in settings.items()}
    return load_config(overrides, environ={}).upstream


def client_for(handler: Handler) -> tuple[UpstreamClient, FakeUpstream]:
    fake = FakeUpstream(handler)
    http = make_http_client(upstream_config(), httpx.MockTransport(fake))
    return UpstreamClient(http), fake


def redirect(status: int, location: str) -> httpx.Response:
    return httpx.Response(status, headers={"Location": location})


# --- Upstream value ---------------------------------------------------------------------------


def test_upstream_from_config() -> None:
    config = upstream_config(
        registry="https://r.example:5000/",
        auth_realm="https://auth.example/token",
        library_prefix="false",
        username="bob",
        password="hunter2-secret",
    )
    upstream = Upstream.from_config(config)
    assert upstream.registry == "https://r.example:5000"
    assert upstream.auth_realm == "https://auth.example/token"
    assert upstream.library_prefix is False
    assert upstream.credentials == ("bob", "hunter2-secret")
    assert upstream.host == "r.example:5000"
    assert upstream.url("/v2/") == "https://r.example:5000/v2/"
    assert "hunter2-secret" not in repr(upstream)


def test_upstream_defaults() -> None:
    upstream = Upstream.from_config(upstream_config())
    assert upstream == Upstream("https://registry-1.docker.io")
    assert upstream.host == "registry-1.docker.io"
    assert upstream.credentials is None


def test_an_upstream_host_has_no_default_port() -> None:
    """The host keys the cache, tokens and health: ``https://ghcr.io:443`` is ``ghcr.io``."""
    assert Upstream("https://GHCR.io:443").host == Upstream("https://ghcr.io").host == "ghcr.io"
    assert Upstream("http://10.0.0.5:5000").host == "10.0.0.5:5000"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://r.example/v2/x", "https://r.example/storage/y?sig=1", True),
        ("https://r.example/a", "https://R.EXAMPLE/b", True),
        ("https://r.example:5000/a", "https://r.example:5000/b", True),
        ("https://r.example/a", "https://r.example:443/b", True),  # the default port, written
        ("http://r.example/a", "http://r.example:80/b", True),
        ("https://r.example/a", "http://r.example/a", False),
        ("https://r.example/a", "https://cdn.example/a", False),
        ("https://r.example/a", "https://r.example:8443/a", False),
        ("https://r.example/a", "https://sub.r.example/a", False),
        ("https://r.example/a", "https://r.example.evil/a", False),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same


# --- UpstreamHealth ---------------------------------------------------------------------------


def test_health_unknown_until_tried() -> None:
    health = UpstreamHealth()
    assert health.reachable is None
    assert health.as_dict()["reachable"] is None


def test_health_failed_then_ok() -> None:
    health = UpstreamHealth()
    health.failed("ConnectError talking to r.example")
    assert health.reachable is False
    report = health.as_dict()
    assert report["last_error_message"] == "ConnectError talking to r.example"
    assert isinstance(report["last_error"], str) and report["last_error"].endswith("Z")
    assert report["last_ok"] is None
    health.ok()
    assert health.reachable is True
    assert health.as_dict()["last_ok"] is not None


@pytest.mark.parametrize("status", [501, 505, 522, 524])
async def test_every_5xx_is_upstream_trouble_on_health_not_a_success(status: int) -> None:
    """A 5xx (a CDN front's 522 "origin unreachable", a 501), with no cache to serve stale
    from, still says the upstream fails: /health is degraded with it as the last error, and it is no
    success (the README's and the metric's 'not a 429 or 5xx'). It counted as server_error in
    docxy_upstream_errors_total, yet moved last_ok on and left /health 'ok'."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return reply(status, b"<html>origin down</html>", {"Content-Type": "text/html"})
        return hub(request)

    async with mirror(upstream) as m:
        assert (await m.client.get("/v2/redis/manifests/latest")).status_code == status
        report = await (await m.client.get("/health")).get_json()
    assert report["status"] == "degraded"
    assert report["upstream"]["last_error_message"] == f"the upstream answered {status}"
    assert report["upstream"]["last_ok"] is None
    assert report["upstream"]["reachable"] is True  # it answered: docxy_upstream_up stays 1


# --- the shared httpx client ------------------------------------------------------------------


async def test_http_client_settings() -> None:
    config = upstream_config(connect_timeout="3", read_timeout="45")
    async with make_http_client(config) as http:
        assert http.timeout == httpx.Timeout(connect=3.0, read=45.0, write=45.0, pool=3.0)
        assert http.follow_redirects is False
        assert http.headers["User-Agent"] == USER_AGENT == f"docxy/{__version__}"


async def test_the_client_reads_a_big_body_in_large_chunks() -> None:
    """More than httpcore's 64 KiB per read: the cold path's cost is per read (#12)."""
    import asyncio

    body = bytes(4 * 1024 * 1024)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, make_http_client(upstream_config()) as http:
        async with http.stream("GET", f"http://127.0.0.1:{port}/blob") as response:
            sizes = [len(chunk) async for chunk in response.aiter_raw()]
    assert sum(sizes) == len(body)
    assert max(sizes) > 64 * 1024


async def test_requests_carry_the_user_agent() -> None:
    client, fake = client_for(lambda request: httpx.Response(200))
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/", [("Accept", "a"), ("Accept", "b")])
    await response.aclose()
    await client.http.aclose()
    [sent] = fake.requests
    assert sent.headers["user-agent"] == USER_AGENT
    assert sent.headers.get_list("accept") == ["a", "b"]


async def test_no_cookie_set_for_one_request_is_sent_with_the_next() -> None:
    """The one client carries every client's pass-through and the mirror's own requests: a
    cookie an upstream sets for one of them (a session after a login with someone's
    credentials) must not ride along on anyone else's request."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Basic alice":
            return httpx.Response(200, headers={"Set-Cookie": "sid=alice-session; Path=/"})
        return httpx.Response(200)

    client, fake = client_for(handler)
    for authorization in ([("Authorization", "Basic alice")], []):
        response = await client.send(HUB, "GET", f"{REGISTRY}/v2/team/x/manifests/1", authorization)
        await response.aclose()
    await client.http.aclose()
    _alice, other = fake.requests
    assert "cookie" not in other.headers


# --- send: redirects ------------------------------------------------------------------------


async def test_response_is_returned_unread_for_streaming() -> None:
    client, fake = client_for(lambda request: httpx.Response(200, content=b"payload"))
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [])
    assert not fake.bodies[0].closed
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"payload"
    await response.aclose()
    assert fake.bodies[0].closed
    await client.http.aclose()


async def test_cross_origin_redirect_drops_authorization_keeps_range() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            return httpx.Response(200, content=b"blob")
        return redirect(307, "https://cdn.example/b?sig=1")

    client, fake = client_for(handler)
    headers = [("Authorization", "Bearer t"), ("Range", "bytes=5-"), ("Accept", "*/*")]
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", headers)
    await response.aclose()
    await client.http.aclose()
    first, second = fake.requests
    assert first.headers["authorization"] == "Bearer t"
    assert str(second.url) == "https://cdn.example/b?sig=1"
    assert "authorization" not in second.headers
    assert second.headers["range"] == "bytes=5-"
    assert second.headers["accept"] == "*/*"
    assert fake.bodies[0].closed  # the redirect response was released


async def test_authorization_stays_off_after_returning_to_the_first_host() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            return redirect(302, f"{REGISTRY}/back")
        if request.url.path == "/back":
            return httpx.Response(200)
        return redirect(307, "https://cdn.example/b")

    client, fake = client_for(handler)
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [("Authorization", "t")])
    await response.aclose()
    await client.http.aclose()
    assert [("authorization" in r.headers) for r in fake.requests] == [True, False, False]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_is_followed(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/final":
            return httpx.Response(200)
        return redirect(status, "/final")

    client, fake = client_for(handler)
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [])
    await response.aclose()
    await client.http.aclose()
    assert response.status_code == 200
    assert [str(r.url) for r in fake.requests] == [
        f"{REGISTRY}/v2/x/blobs/d",
        f"{REGISTRY}/final",
    ]


async def test_head_stays_head_across_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/final":
            return httpx.Response(200)
        return redirect(303, "/final")

    client, fake = client_for(handler)
    response = await client.send(HUB, "HEAD", f"{REGISTRY}/v2/x/blobs/d", [])
    await response.aclose()
    await client.http.aclose()
    assert [r.method for r in fake.requests] == ["HEAD", "HEAD"]


async def test_params_go_to_the_first_hop_only() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth2.example":
            return httpx.Response(200)
        return redirect(302, "https://auth2.example/token?from=redirect")

    client, fake = client_for(handler)
    params = httpx.QueryParams([("scope", "repository:library/redis:pull"), ("service", "s")])
    response = await client.send(HUB, "GET", "https://auth.example/token", [], params=params)
    await response.aclose()
    await client.http.aclose()
    first, second = fake.requests
    assert first.url.params.get_list("scope") == ["repository:library/redis:pull"]
    assert str(second.url) == "https://auth2.example/token?from=redirect"


@pytest.mark.parametrize(
    ("status", "location", "hops"),
    [
        (
            307,
            "/token2",
            [("POST", b"grant_type=refresh_token"), ("POST", b"grant_type=refresh_token")],
        ),
        (
            308,
            "/token2",
            [("POST", b"grant_type=refresh_token"), ("POST", b"grant_type=refresh_token")],
        ),
        (
            307,
            "https://auth2.example/moved",
            [("POST", b"grant_type=refresh_token"), ("POST", b"")],
        ),
        (302, "/token2", [("POST", b"grant_type=refresh_token"), ("GET", b"")]),
        (301, "/token2", [("POST", b"grant_type=refresh_token"), ("GET", b"")]),
        (303, "/token2", [("POST", b"grant_type=refresh_token"), ("GET", b"")]),
    ],
)
async def test_a_posted_form_follows_a_307_or_308_on_its_origin_only(
    status: int, location: str, hops: list[tuple[str, bytes]]
) -> None:
    """A token service that moved its endpoint (307/308) gets the form again, as RFC 9110
    wants: the method and body are kept, on the same origin only (a password or a refresh
    token does not go to another host); a 301/302/303 makes it a GET, without the form."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return redirect(status, location)
        return httpx.Response(200)

    client, fake = client_for(handler)
    form = b"grant_type=refresh_token"
    response = await client.send(HUB, "POST", "https://auth.example/token", [], content=form)
    await response.aclose()
    await client.http.aclose()
    assert [(r.method, r.content) for r in fake.requests] == hops


async def test_redirect_limit() -> None:
    client, fake = client_for(lambda request: redirect(307, f"/hop{len(fake.requests)}"))
    with pytest.raises(UpstreamUnavailable, match=f"more than {MAX_REDIRECTS}"):
        await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [])
    await client.http.aclose()
    assert len(fake.requests) == MAX_REDIRECTS + 1
    assert all(body.closed for body in fake.bodies)


@pytest.mark.parametrize(
    ("location", "words"),
    [
        (None, "without a Location"),
        ("", "without a Location"),
        ("ftp://cdn.example/blob", "non-HTTP"),
        ("file:///etc/passwd", "non-HTTP"),
        ("https://cdn.example:99999/blob", "malformed"),
    ],
)
async def test_unusable_redirects(location: str | None, words: str) -> None:
    headers = {} if location is None else {"Location": location}
    client, fake = client_for(lambda request: httpx.Response(307, headers=headers))
    with pytest.raises(UpstreamUnavailable, match=words) as info:
        await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [])
    await client.http.aclose()
    assert info.value.status == 502
    assert len(fake.requests) == 1


# --- send: failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error", "status"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable, 502),
        (httpx.ReadError("reset"), UpstreamUnavailable, 502),
        (httpx.RemoteProtocolError("garbage"), UpstreamUnavailable, 502),
        (httpx.UnsupportedProtocol("gopher"), UpstreamUnavailable, 502),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504),
    ],
)
async def test_transport_failures_become_registry_errors(
    exc: Exception, error: type[UpstreamError], status: int
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = client_for(handler)
    with pytest.raises(error) as info:
        await client.send(HUB, "GET", f"{REGISTRY}/v2/", [])
    await client.http.aclose()
    assert info.value.status == status
    assert info.value.__cause__ is exc
    assert "registry.example" in str(info.value)
    health = client.health_of(HUB)
    assert health.reachable is False
    assert health.last_error_message is not None
    assert type(exc).__name__ in health.last_error_message or "timeout" in health.last_error_message


async def test_failure_names_the_host_that_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            raise httpx.ConnectError("refused")
        return redirect(307, "https://cdn.example/b")

    client, _ = client_for(handler)
    with pytest.raises(UpstreamUnavailable, match="cdn.example"):
        await client.send(HUB, "GET", f"{REGISTRY}/v2/x/blobs/d", [])
    await client.http.aclose()


async def test_recovers_without_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    # At once, not after docxy.upstream.outage's hold (its own tests: test_review_downfast)
    monkeypatch.setattr(outage, "FIRST_HOLD", 0.0)
    down = True

    def handler(request: httpx.Request) -> httpx.Response:
        if down:
            raise httpx.ConnectError("refused")
        return httpx.Response(200)

    client, _ = client_for(handler)
    with pytest.raises(UpstreamUnavailable):
        await client.send(HUB, "GET", f"{REGISTRY}/v2/", [])
    assert client.health_of(HUB).reachable is False
    down = False
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/", [])
    await response.aclose()
    await client.http.aclose()
    assert response.status_code == 200
    assert client.health_of(HUB).reachable is True


async def test_upstream_error_status_is_reachable_but_not_healthy() -> None:
    client, _ = client_for(lambda request: httpx.Response(503))
    response = await client.send(HUB, "GET", f"{REGISTRY}/v2/", [])
    await response.aclose()
    await client.http.aclose()
    assert response.status_code == 503
    assert client.health_of(HUB).reachable is True
    assert client.health_of(HUB).healthy is False


class Slow(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_bytes(200, b"x" * 100_000, "application/octet-stream")


async def test_every_connection_in_use_is_the_mirrors_limit_not_the_upstream_failing() -> None:
    """A request that found every pooled connection busy (a crowd of pass-through streams)
    waited, then was an upstream timeout: a 504, and the upstream marked unreachable in
    /health and the metrics, though it had answered every request it got."""
    server = LoopbackServer(Slow)
    server.start()
    timeout = httpx.Timeout(5.0, pool=0.2)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=timeout)
    upstream = Upstream(server.url)
    client = UpstreamClient(http)
    try:
        busy = await client.send(upstream, "GET", f"{server.url}/v2/a/blobs/x", [])  # unread
        with pytest.raises(UpstreamError) as info:
            await client.send(upstream, "GET", f"{server.url}/v2/b/blobs/y", [])
        await busy.aclose()
    finally:
        await http.aclose()
        server.stop()
    assert info.value.status == 503
    assert "connections to the upstream are in use" in info.value.message
    assert "PoolTimeout: no free connection within 0.2s" in info.value.message
    health = client.health_of(upstream)
    assert health.reachable is True and health.failures["timeout"] == 0
    assert health.last_error_message is None


# --- realm discovery ---------------------------------------------------------------------------


def challenging(header: str | None, status: int = 401) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {} if header is None else {"WWW-Authenticate": header}
        return httpx.Response(status, headers=headers)

    return handler


async def test_configured_realm_asks_nobody() -> None:
    client, fake = client_for(challenging('Bearer realm="https://other.example/token"'))
    realm = await client.auth_realm(Upstream(REGISTRY, auth_realm="https://auth.example/token"))
    await client.http.aclose()
    assert realm == "https://auth.example/token"
    assert fake.requests == []


async def test_realm_discovered_once_and_refreshed_on_demand() -> None:
    client, fake = client_for(
        challenging('Bearer realm="https://auth.example/token",service="registry.example"')
    )
    assert await client.auth_realm(HUB) == "https://auth.example/token"
    assert await client.auth_realm(HUB) == "https://auth.example/token"
    assert [str(r.url) for r in fake.requests] == [f"{REGISTRY}/v2/"]
    challenge = await client.challenge(HUB, refresh=True)
    await client.http.aclose()
    assert challenge is not None and challenge.service == "registry.example"
    assert len(fake.requests) == 2
    assert all(body.closed for body in fake.bodies)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 200),
        (None, 401),
        ('Basic realm="Registry Realm"', 401),
        ('Bearer service="no-realm"', 401),
        ('Bearer realm="https://auth.example/token"', 200),  # not a challenge without 401
        ("garbage ===", 401),
    ],
)
async def test_no_token_auth_discovered(header: str | None, status: int) -> None:
    client, _ = client_for(challenging(header, status))
    assert await client.auth_realm(HUB) is None
    await client.http.aclose()


async def test_discovery_failure_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    # At once, not after docxy.upstream.outage's hold (its own tests: test_review_downfast)
    monkeypatch.setattr(outage, "FIRST_HOLD", 0.0)
    down = True

    def handler(request: httpx.Request) -> httpx.Response:
        if down:
            raise httpx.ConnectError("refused")
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})

    client, _ = client_for(handler)
    with pytest.raises(UpstreamUnavailable):
        await client.auth_realm(HUB)
    down = False
    assert await client.auth_realm(HUB) == "https://a/t"
    await client.http.aclose()


async def test_a_clients_own_rate_limit_is_not_the_mirrors() -> None:
    """A 429 to a client's credentials is its account's limit: the upstream answered, and the
    mirror's own standing (healthy, its ratelimit headers) is what its own requests say."""
    mirror_limited = False

    def handler(request: httpx.Request) -> httpx.Response:
        client_asked = request.headers.get("authorization") == "Bearer client-token"
        if client_asked or mirror_limited:
            return httpx.Response(429, headers={"ratelimit-remaining": "0;w=21600"})
        return httpx.Response(200, headers={"ratelimit-remaining": "90;w=21600"})

    client, _ = client_for(handler)
    health = client.health_of(HUB)

    async def ask(authorization: str | None, mirror_credentials: bool = False) -> int:
        headers = [] if authorization is None else [("Authorization", authorization)]
        answer = await client.send(
            HUB,
            "GET",
            f"{REGISTRY}/v2/x/manifests/1",
            headers,
            mirror_credentials=mirror_credentials,
        )
        await answer.aclose()
        return answer.status_code

    assert await ask("Bearer mirror-token", mirror_credentials=True) == 200
    assert await ask("Bearer client-token") == 429
    assert (health.reachable, health.healthy, health.ratelimit_remaining) == (
        True,
        True,
        "90;w=21600",
    )
    mirror_limited = True
    assert await ask("Bearer mirror-token", mirror_credentials=True) == 429
    assert health.healthy is False and health.ratelimit_remaining == "0;w=21600"
    mirror_limited = False
    assert await ask("Bearer client-of-another-account") == 200
    assert health.healthy is False  # a client's success does not lift the mirror's own limit
    assert await ask(None) == 200  # anonymous: the mirror's own address asked
    assert health.healthy is True
    await client.http.aclose()


async def test_an_upstream_whose_v2_answers_as_no_registry_is_unhealthy_until_it_does() -> None:
    """A wrong upstream.registry (a web site, a path that holds no registry) answers /v2/ with
    404: /health said 'ok', the upstream reachable, while every pull failed, since a 404 is an
    answer (the log's 'in trouble' line was the only word of it). The pulls' own 404s do not
    make it healthy again; a /v2/ that answers as a registry does."""
    registry = False

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/" and registry:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})
        return httpx.Response(404, text="<html>Not Found</html>")

    client, _ = client_for(handler)
    health = client.health_of(HUB)
    with pytest.raises(UpstreamUnavailable, match="answered 404 on /v2/"):
        await client.challenge(HUB, refresh=True)  # docxy.http.health.probe_upstream's
    assert health.healthy is False
    assert health.as_dict()["last_error_message"] == "the upstream answered 404 on /v2/"
    answer = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/manifests/1", [])
    await answer.aclose()
    assert answer.status_code == 404 and health.reachable is True
    assert health.healthy is False

    registry = True
    await client.challenge(HUB, refresh=True)
    assert health.healthy is True
    await client.http.aclose()


async def test_the_minute_probe_does_not_end_the_mirrors_rate_limit() -> None:
    """`/v2/` answers 401 whatever the pull limit: only a pull that gets through ends it."""
    limited = True

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})
        return httpx.Response(429 if limited else 200)

    client, _ = client_for(handler)
    health = client.health_of(HUB)

    async def pull() -> int:
        answer = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/manifests/1", [])
        await answer.aclose()
        return answer.status_code

    assert await pull() == 429
    await client.challenge(HUB, refresh=True)  # docxy.http.health.probe_upstream's
    assert health.healthy is False and health.reachable is True
    limited = False
    assert await pull() == 200
    assert health.healthy is True
    await client.http.aclose()


async def test_a_5xx_to_a_pull_does_not_end_the_mirrors_rate_limit() -> None:
    """Only a pull that gets through, or the 429's Retry-After, ends the limit. A 503 to a
    pull meanwhile (the registry's own trouble, not a word about the limit) ended it, and the
    minute probe's next answer then made /health 'ok' while every pull still got 429."""
    pulls = [429, 503, 429]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})
        return httpx.Response(pulls.pop(0), headers={"Retry-After": "3600"})

    client, _ = client_for(handler)
    health = client.health_of(HUB)

    async def pull() -> int:
        answer = await client.send(HUB, "GET", f"{REGISTRY}/v2/x/manifests/1", [])
        await answer.aclose()
        return answer.status_code

    assert [await pull(), await pull()] == [429, 503]
    await client.challenge(HUB, refresh=True)  # docxy.http.health.probe_upstream's
    assert (health.limited, health.healthy) == (True, False)
    assert health.as_dict()["rate_limited_until"] is not None
    assert await pull() == 429  # as the upstream said: the limit stood
    await client.http.aclose()


class Stalled(httpx.AsyncByteStream):
    """A body whose first read runs out of time, as httpx raises it (with its request)."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise httpx.ReadTimeout("", request=self.request)
        yield b""  # pragma: no cover - makes this an async generator


async def test_a_small_body_that_stalls_says_after_how_long() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalled(request))

    http = make_http_client(upstream_config(read_timeout=9), httpx.MockTransport(handler))
    client = UpstreamClient(http)
    try:
        answer = await client.send(HUB, "GET", HUB.url("/v2/"), [])
        with pytest.raises(UpstreamTimeout) as stalled:
            await read_small(answer)
    finally:
        await http.aclose()
    said = "GET registry.example ReadTimeout: nothing received within 9s"
    assert str(stalled.value) == f"the upstream registry stopped sending in time ({said})"
