"""The mirror's routes against an ``httpx.MockTransport`` upstream.

The mock shows what a real registry cannot be made to do on demand (refused connections,
timeouts, endless redirects, odd challenges); each test checks what went upstream and what the
client got back.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from quart import Quart
from quart import typing as quart_typing
from werkzeug.datastructures import Headers

from docxy import __version__
from docxy.config import load_config
from docxy.core.digests import digest_of
from docxy.http.app import create_app
from docxy.upstream import client as client_module
from docxy.upstream import outage
from docxy.upstream.client import MAX_REDIRECTS
from docxy.upstream.encoding import ACCEPTED
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.fakes import Body, FakeUpstream, Handler, reply

PUBLIC = "https://mirror.example.com"
MIRROR_REALM = f"{PUBLIC}/auth/token"
REGISTRY = "https://registry.example"
AUTH = "https://auth.example/token"
CDN = "https://cdn.example"
SERVICE = "registry.example"
DIGEST = "sha256:" + "d" * 64
BLOB = "sha256:" + "b" * 64
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST = b'{"schemaVersion": 2, "mediaType": "' + MANIFEST_TYPE.encode() + b'"}'
BASIC = "Basic " + base64.b64encode(b"bob:hunter2").decode()
HUB_CHALLENGE = f'Bearer realm="{AUTH}",service="{SERVICE}"'


def registry_error(status: int, code: str) -> httpx.Response:
    body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
    return reply(status, body, {"Content-Type": "application/json"})


def hub(request: httpx.Request) -> httpx.Response:
    """A small Docker-Hub-like upstream: token auth, manifests, blobs served from a CDN host."""
    url = request.url
    if url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if url.host == "cdn.example":
        return reply(200, b"blob-bytes", {"Content-Type": "application/octet-stream"})
    if url.path == "/v2/":
        return reply(401, b"{}", {"WWW-Authenticate": HUB_CHALLENGE})
    if "/manifests/" in url.path:
        headers = {
            "Content-Type": MANIFEST_TYPE,
            "Content-Length": str(len(MANIFEST)),
            "Docker-Content-Digest": DIGEST,
            "ETag": f'"{DIGEST}"',
        }
        return reply(200, b"" if request.method == "HEAD" else MANIFEST, headers)
    if "/blobs/" in url.path:
        return reply(307, headers={"Location": f"{CDN}/blobs/{BLOB}?sig=abc"})
    return registry_error(404, "NOT_FOUND")


RawResponse = AsgiAnswer


@dataclass
class Mirror:
    app: Quart
    client: quart_typing.TestClientProtocol
    upstream: FakeUpstream

    async def raw(
        self,
        method: str,
        raw_path: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        body_seen: asyncio.Event | None = None,
    ) -> RawResponse:
        """Call the app as hypercorn does (see tests/asgi.py)."""
        return await call_asgi(
            self.app,
            method,
            raw_path,
            host="mirror.example.com",
            headers=headers,
            body_seen=body_seen,
        )


@asynccontextmanager
async def mirror(
    handler: Handler = hub,
    settings: dict[str, object] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Mirror]:
    """A mirror over ``handler`` (recorded by a FakeUpstream), or over ``transport`` as it is
    (an async handler's: a slow token service)."""
    overrides: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": REGISTRY,
        "upstream.auth_realm": AUTH,
        "cache.enabled": "false",
    }
    overrides.update(settings or {})
    config = load_config(overrides, environ={})
    upstream = FakeUpstream(handler)
    app = create_app(config, probe=False, transport=transport or httpx.MockTransport(upstream))
    async with app.test_app() as test_app:
        yield Mirror(app, test_app.test_client(), upstream)


async def error_code(response: Any) -> str:
    body = await response.get_json()
    assert response.headers["Content-Type"] == "application/json"
    [error] = body["errors"]
    assert isinstance(error["message"], str) and error["message"]
    return str(error["code"])


def fail_with(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# --- /v2/ -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
        {"Host": "evil.example:8443", "X-Forwarded-Host": "evil.example", "Forwarded": "host=x"},
    ],
)
async def test_v2_challenge_points_at_the_public_url(headers: dict[str, str]) -> None:
    async with mirror() as m:
        response = await m.client.get("/v2/", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{MIRROR_REALM}",service="{SERVICE}"'
    )
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await error_code(response) == "UNAUTHORIZED"
    assert m.upstream.urls == [f"{REGISTRY}/v2/"]
    assert m.upstream.requests[0].headers["host"] == "registry.example"


async def test_v2_without_slash_and_with_ns() -> None:
    async with mirror() as m:
        response = await m.client.get("/v2?ns=docker.io")
    assert response.status_code == 401
    assert MIRROR_REALM in response.headers["WWW-Authenticate"]
    assert m.upstream.urls == [f"{REGISTRY}/v2/"]


async def test_v2_open_upstream_answers_200() -> None:
    async with mirror(lambda request: reply(200, b"{}")) as m:
        response = await m.client.get("/v2/", headers={"Authorization": "Bearer abc"})
        head = await m.client.head("/v2/")
    assert response.status_code == 200
    assert await response.get_json() == {}
    assert "WWW-Authenticate" not in response.headers
    assert m.upstream.requests[0].headers["authorization"] == "Bearer abc"
    assert head.status_code == 200


async def test_v2_basic_challenge_is_relayed_unchanged() -> None:
    basic = 'Basic realm="Registry Realm"'
    async with mirror(lambda request: reply(401, headers={"WWW-Authenticate": basic})) as m:
        response = await m.client.get("/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == basic


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (httpx.ConnectError("connection refused"), 502, "cannot reach"),
        (httpx.ReadTimeout("timed out"), 504, "did not answer in time"),
        (httpx.ConnectTimeout("timed out"), 504, "did not answer in time"),
        (httpx.RemoteProtocolError("peer closed"), 502, "cannot reach"),
    ],
)
async def test_v2_upstream_failure(exc: Exception, status: int, words: str) -> None:
    async with mirror(fail_with(exc)) as m:
        response = await m.client.get("/v2/")
    assert response.status_code == status
    body = await response.get_json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert words in body["errors"][0]["message"]
    assert "registry.example" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("timeout", "said"),
    [
        (httpx.ConnectTimeout, "ConnectTimeout: no connection within 7s"),
        (httpx.ReadTimeout, "ReadTimeout: nothing received within 9s"),
    ],
)
async def test_an_upstream_timeout_says_what_timed_out_and_after_how_long(
    timeout: type[httpx.TimeoutException], said: str
) -> None:
    """httpx raises its timeouts with the request (and its own limits) but no text worth
    reading: the client's error and /health say which wait ran out, and after how long."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise timeout("", request=request)

    settings: dict[str, object] = {"upstream.connect_timeout": 7, "upstream.read_timeout": 9}
    async with mirror(handler, settings) as m:
        response = await m.client.get("/v2/")
        health = await (await m.client.get("/health")).get_json()
    assert response.status_code == 504
    message = (await response.get_json())["errors"][0]["message"]
    assert "did not answer in time" in message and f"registry.example {said}" in message
    assert f"GET registry.example {said}" == health["upstream"]["last_error_message"]


async def test_a_full_connection_pool_is_a_503_that_says_so_and_leaves_health_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every pooled connection busy (a crowd of streams) was an upstream timeout: a 504, and
    /health's upstream error, though the upstream had answered all it was asked."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("", request=request)

    settings: dict[str, object] = {"upstream.connect_timeout": 7}
    async with mirror(handler, settings) as m:
        responses = [await m.client.get("/v2/") for _ in range(3)]
        blob = await m.client.get("/v2/library/redis/blobs/sha256:" + "a" * 64)
        manifest = await m.client.get("/v2/library/redis/manifests/latest")
        health = await (await m.client.get("/health")).get_json()
        full = [r for r in caplog.records if "connections in use" in r.getMessage()]
        assert len(full) == 1 and full[0].levelname == "WARNING"  # once, not once a request
    assert [r.status_code for r in responses] == [503] * 3
    assert [r.headers.get("Retry-After") for r in responses] == ["1"] * 3  # the mirror's own
    assert (blob.status_code, blob.headers.get("Retry-After")) == (503, "1")
    assert (manifest.status_code, manifest.headers.get("Retry-After")) == (503, "1")
    message = (await responses[0].get_json())["errors"][0]["message"]
    assert "connections to the upstream are in use" in message
    assert "registry.example PoolTimeout: no free connection within 7s" in message
    assert health["upstream"]["last_error_message"] is None
    assert "more refused" not in full[0].getMessage()
    full = [r for r in caplog.records if "connections in use" in r.getMessage()]
    assert len(full) == 2  # the two held back, told as the mirror stopped
    assert full[1].getMessage().endswith("; 3 more refused since the last such line")


async def test_the_next_full_pool_warning_counts_the_refusals_it_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The once-a-minute line said nothing of the 503s between two lines: a crowd refused
    all minute long looked like two refusals in the log."""
    now = [1000.0]
    clock = SimpleNamespace(monotonic=lambda: now[0])  # the client's clock, not the loop's
    monkeypatch.setattr("docxy.upstream.client.time", clock)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("", request=request)

    async with mirror(handler, {}) as m:
        for _ in range(4):
            assert (await m.client.get("/v2/")).status_code == 503
        now[0] += client_module.POOL_FULL_LOG_EVERY
        assert (await m.client.get("/v2/")).status_code == 503
        now[0] += client_module.POOL_FULL_LOG_EVERY
        assert (await m.client.get("/v2/")).status_code == 503
    full = [r.getMessage() for r in caplog.records if "connections in use" in r.getMessage()]
    assert len(full) == 3
    assert "more refused" not in full[0]
    assert full[1].endswith("; 3 more refused since the last such line")
    assert "more refused" not in full[2]  # none held back since the second


async def test_refusals_after_the_last_full_pool_warning_are_told_a_minute_later(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals held back after a warning were only counted by the next one: a crowd that
    filled the pool for half a minute and then stopped left a single refusal in the log. They
    now have their line once the minute is up (a timer; here a 3 s minute, so that the three
    requests come within it on a stalled machine), and those still held back when the mirror
    stops have theirs then."""
    now = [1000.0]
    clock = SimpleNamespace(monotonic=lambda: now[0])  # decides what is held back
    monkeypatch.setattr("docxy.upstream.client.time", clock)
    monkeypatch.setattr(client_module, "POOL_FULL_LOG_EVERY", 3.0)  # the timer's real wait

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("", request=request)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused with 503" in r.getMessage()]

    async with mirror(handler, {}) as m:
        for _ in range(3):
            assert (await m.client.get("/v2/")).status_code == 503
        assert len(lines()) == 1  # the first at once, two held back
        await asyncio.sleep(3.5)
        assert len(lines()) == 2
        assert "registry.example PoolTimeout" in lines()[1]  # as detailed as the first
        assert lines()[1].endswith("; 1 more refused since the last such line")
        await asyncio.sleep(0.2)
        assert len(lines()) == 2  # nothing held back since: no line
        now[0] += 3.0
        assert (await m.client.get("/v2/")).status_code == 503  # a new minute: at once
        assert len(lines()) == 3 and "more refused" not in lines()[2]
        assert (await m.client.get("/v2/")).status_code == 503  # held back...
        assert len(lines()) == 3
    assert len(lines()) == 4  # ...and told as the mirror stops
    assert "registry.example PoolTimeout" in lines()[3] and "more refused" not in lines()[3]


# --- manifests --------------------------------------------------------------------------------


async def test_manifest_get_relays_body_and_headers() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        headers = [
            ("Content-Type", MANIFEST_TYPE),
            ("Content-Length", str(len(MANIFEST))),
            ("Docker-Content-Digest", DIGEST),
            ("ETag", f'"{DIGEST}"'),
            ("Set-Cookie", "session=upstream"),
            ("Server", "upstream/1.0"),
            ("Connection", "X-Private"),
            ("X-Private", "1"),
        ]
        return reply(200, MANIFEST, headers)

    async with mirror(upstream) as m:
        response = await m.client.get("/v2/redis/manifests/latest")
        body = await response.get_data()
    assert response.status_code == 200
    assert body == MANIFEST
    assert response.headers["Content-Type"] == MANIFEST_TYPE
    assert response.headers["Docker-Content-Digest"] == DIGEST
    assert response.headers["ETag"] == f'"{DIGEST}"'
    assert response.headers["Content-Length"] == str(len(MANIFEST))
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    for dropped in ("Set-Cookie", "Server", "X-Private"):
        assert dropped not in response.headers
    [sent] = m.upstream.requests
    assert sent.method == "GET"
    assert str(sent.url) == f"{REGISTRY}/v2/library/redis/manifests/latest"


async def test_manifest_head_is_a_head_upstream_with_true_length_and_digest() -> None:
    async with mirror() as m:
        response = await m.raw("HEAD", "/v2/redis/manifests/latest")
    assert response.status == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == str(len(MANIFEST))
    assert response.headers["Docker-Content-Digest"] == DIGEST
    assert response.headers["Content-Type"] == MANIFEST_TYPE
    assert [(r.method, str(r.url)) for r in m.upstream.requests] == [
        ("HEAD", f"{REGISTRY}/v2/library/redis/manifests/latest")
    ]


async def test_manifest_head_of_a_large_manifest_through_the_test_client() -> None:
    length = "7023"

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(200, headers={"Content-Length": length, "Docker-Content-Digest": DIGEST})

    async with mirror(upstream) as m:
        raw = await m.raw("HEAD", f"/v2/org/app/manifests/{DIGEST}")
        response = await m.client.head(f"/v2/org/app/manifests/{DIGEST}")
    assert raw.headers["Content-Length"] == length
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == DIGEST
    assert [r.method for r in m.upstream.requests] == ["HEAD", "HEAD"]
    assert m.upstream.urls[0] == f"{REGISTRY}/v2/org/app/manifests/{DIGEST}"


async def test_every_accept_value_is_forwarded() -> None:
    accepts = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json, */*;q=0.1",
    ]
    headers = Headers()
    for accept in accepts:
        headers.add("Accept", accept)
    async with mirror() as m:
        response = await m.client.get("/v2/redis/manifests/latest", headers=headers)
    assert response.status_code == 200
    sent = m.upstream.requests[0].headers.get_list("accept", split_commas=True)
    expected = [value.strip() for accept in accepts for value in accept.split(",")]
    assert sent == expected


async def test_conditional_and_auth_headers_forwarded_others_not() -> None:
    headers = {
        "Authorization": "Bearer client-token",
        "Range": "bytes=10-",
        "If-Range": '"etag"',
        "If-None-Match": f'"{DIGEST}"',
        "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT",
        "Cookie": "secret=1",
        "X-Forwarded-For": "10.0.0.1",
        "User-Agent": "docker/29.0",
    }
    async with mirror() as m:
        await m.client.get("/v2/redis/manifests/latest", headers=headers)
    sent = m.upstream.requests[0].headers
    for name in ("Authorization", "Range", "If-Range", "If-None-Match", "If-Modified-Since"):
        assert sent[name] == headers[name]
    assert "cookie" not in sent
    assert "x-forwarded-for" not in sent
    assert sent["host"] == "registry.example"
    assert sent["user-agent"] == f"docxy/{__version__}"


async def test_not_modified_is_relayed() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.headers.get("if-none-match") == f'"{DIGEST}"':
            return reply(304, headers={"ETag": f'"{DIGEST}"', "Docker-Content-Digest": DIGEST})
        return reply(200, MANIFEST)

    async with mirror(upstream) as m:
        response = await m.client.get(
            "/v2/redis/manifests/latest", headers={"If-None-Match": f'"{DIGEST}"'}
        )
    assert response.status_code == 304
    assert await response.get_data() == b""
    assert response.headers["ETag"] == f'"{DIGEST}"'


async def test_manifest_401_challenge_is_rewritten() -> None:
    challenge = (
        f'Bearer realm="{AUTH}",service="{SERVICE}",scope="repository:redis:pull",'
        'error="insufficient_scope"'
    )

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})

    async with mirror(upstream) as m:
        response = await m.client.get(
            "/v2/redis/manifests/latest", headers={"X-Forwarded-Host": "evil.example"}
        )
    assert response.status_code == 401
    assert response.headers.get_all("WWW-Authenticate") == [
        f'Bearer realm="{MIRROR_REALM}",service="{SERVICE}",'
        'scope="repository:library/redis:pull",error="insufficient_scope"'
    ]


async def test_upstream_404_is_relayed() -> None:
    async with mirror(lambda request: registry_error(404, "MANIFEST_UNKNOWN")) as m:
        response = await m.client.get("/v2/redis/manifests/nope")
    assert response.status_code == 404
    assert await error_code(response) == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(
    ("path", "settings", "upstream_path"),
    [
        ("/v2/redis/manifests/7", {}, "/v2/library/redis/manifests/7"),
        ("/v2/library/redis/manifests/7", {}, "/v2/library/redis/manifests/7"),
        ("/v2/org/team/app/manifests/v1.2", {}, "/v2/org/team/app/manifests/v1.2"),
        (  # by its own digest: a manifest passed through by digest is checked against it
            f"/v2/redis/manifests/{digest_of(MANIFEST)}",
            {},
            f"/v2/library/redis/manifests/{digest_of(MANIFEST)}",
        ),
        (
            "/v2/redis/manifests/7",
            {"upstream.library_prefix": "false"},
            "/v2/redis/manifests/7",
        ),
        ("/v2/redis/manifests/7?ns=docker.io", {}, "/v2/library/redis/manifests/7"),
        ("/v2/redis/manifests/7?ns=docker.io&x=1", {}, "/v2/library/redis/manifests/7"),
    ],
)
async def test_upstream_url(path: str, settings: dict[str, object], upstream_path: str) -> None:
    async with mirror(settings=settings) as m:
        response = await m.client.get(path)
    assert response.status_code == 200
    assert m.upstream.urls == [REGISTRY + upstream_path]


class GatedBody(Body):
    """Holds back its last chunk until the client has received the first one."""

    def __init__(self, gate: asyncio.Event, *chunks: bytes) -> None:
        super().__init__(*chunks)
        self.gate = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == len(self.chunks) - 1:
                await self.gate.wait()
            self.read += 1
            yield chunk


async def test_get_streams_before_the_upstream_finishes() -> None:
    gate = asyncio.Event()
    body = GatedBody(gate, b"first-", b"last")

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(200, body, {"Content-Length": "10"})

    digest = digest_of(b"first-last")  # a pass-through's blob is verified as it goes out
    async with mirror(upstream) as m:
        async with asyncio.timeout(10):  # a buffering mirror would wait for "last" forever
            response = await m.raw("GET", f"/v2/redis/blobs/{digest}", body_seen=gate)
    assert response.body == b"first-last"
    assert body.closed


async def test_get_streams_every_chunk_and_closes_upstream() -> None:
    chunk = b"x" * (1 << 20)
    body = Body(chunk, chunk, b"tail")

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(200, body, {"Content-Length": str(2 * len(chunk) + 4)})

    async with mirror(upstream) as m:
        response = await m.client.get(f"/v2/redis/manifests/{DIGEST}")
        data = await response.get_data()
    assert data == chunk + chunk + b"tail"
    assert body.read == 3
    assert body.closed


async def test_ratelimit_headers_reach_health() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "42;w=21600"}
        return reply(200, MANIFEST, headers)

    async with mirror(upstream) as m:
        manifest = await m.client.get("/v2/redis/manifests/latest")
        health = await (await m.client.get("/health")).get_json()
    assert manifest.headers["ratelimit-remaining"] == "42;w=21600"
    assert health["upstream"]["ratelimit_limit"] == "100;w=21600"
    assert health["upstream"]["ratelimit_remaining"] == "42;w=21600"


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (httpx.ConnectError("connection refused"), 502, "cannot reach the upstream registry"),
        (httpx.ReadTimeout("timed out"), 504, "did not answer in time"),
        (httpx.WriteTimeout("timed out"), 504, "did not answer in time"),
        (httpx.ReadError("reset"), 502, "cannot reach the upstream registry"),
    ],
)
async def test_manifest_upstream_failure(exc: Exception, status: int, words: str) -> None:
    async with mirror(fail_with(exc)) as m:
        response = await m.client.get("/v2/redis/manifests/latest")
    assert response.status_code == status
    body = await response.get_json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert words in body["errors"][0]["message"]


# --- bad names, tags, digests never reach the upstream --------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Redis/manifests/latest", "NAME_INVALID"),
        ("/v2/a%2Fb/manifests/latest", "NAME_INVALID"),
        ("/v2/a%2fb/blobs/" + BLOB, "NAME_INVALID"),
        ("/v2/%2e%2e/manifests/latest", "NAME_INVALID"),
        ("/v2/../manifests/latest", "NAME_INVALID"),
        ("/v2/a/../b/manifests/latest", "NAME_INVALID"),
        ("/v2/a//b/manifests/latest", "NAME_INVALID"),
        ("/v2/a___b/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "a" * 256 + "/manifests/latest", "NAME_INVALID"),
        ("/v2/redis/manifests/.latest", "TAG_INVALID"),
        ("/v2/redis/manifests/sha256:" + "D" * 64, "DIGEST_INVALID"),
        ("/v2/redis/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/redis/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
        ("/v2/redis/blobs/latest", "DIGEST_INVALID"),
    ],
)
async def test_bad_requests(path: str, code: str) -> None:
    async with mirror() as m:
        response = await m.raw("GET", path)
    assert response.status == 400
    assert json.loads(response.body)["errors"][0]["code"] == code
    assert response.headers["Content-Type"] == "application/json"
    assert m.upstream.requests == []


# --- blobs and redirects ----------------------------------------------------------------------


async def test_blob_redirect_to_cdn_is_followed_without_authorization() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            if "authorization" in request.headers:
                return reply(403, b"signed URL refuses Authorization")
            return reply(
                206,
                b"tail-of-blob",
                {"Content-Range": "bytes 100-111/112", "Content-Type": "application/octet-stream"},
            )
        return reply(307, headers={"Location": f"{CDN}/blobs/{BLOB}?sig=abc"})

    headers = {"Authorization": "Bearer client-token", "Range": "bytes=100-"}
    async with mirror(upstream) as m:
        response = await m.client.get(f"/v2/redis/blobs/{BLOB}", headers=headers)
        body = await response.get_data()
    assert response.status_code == 206
    assert body == b"tail-of-blob"
    assert response.headers["Content-Range"] == "bytes 100-111/112"
    assert "Location" not in response.headers
    first, second = m.upstream.requests
    assert str(first.url) == f"{REGISTRY}/v2/library/redis/blobs/{BLOB}"
    assert first.headers["authorization"] == "Bearer client-token"
    assert str(second.url) == f"{CDN}/blobs/{BLOB}?sig=abc"
    assert "authorization" not in second.headers
    assert second.headers["range"] == "bytes=100-"


async def test_same_host_redirect_keeps_authorization() -> None:
    blob = digest_of(b"blob")  # a whole 200 passed through is verified as it goes out

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/storage/"):
            return reply(200, b"blob", {"Content-Type": "application/octet-stream"})
        return reply(302, headers={"Location": f"/storage/{blob}"})

    headers = {"Authorization": "Bearer client-token", "Range": "bytes=0-"}
    async with mirror(upstream) as m:
        response = await m.client.get(f"/v2/org/app/blobs/{blob}", headers=headers)
        body = await response.get_data()
    assert (response.status_code, body) == (200, b"blob")
    second = m.upstream.requests[1]
    assert str(second.url) == f"{REGISTRY}/storage/{blob}"
    assert second.headers["authorization"] == "Bearer client-token"
    assert second.headers["range"] == "bytes=0-"


@pytest.mark.parametrize(
    "location",
    [
        # other scheme: https to http is not followed at all (test_review_redirects)
        "https://registry.example:8443/elsewhere",  # other port
        "https://sub.registry.example/elsewhere",  # other host
    ],
)
async def test_other_origin_redirects_drop_authorization(location: str) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/elsewhere":
            return reply(200, b"blob")
        return reply(307, headers={"Location": location})

    async with mirror(upstream) as m:
        response = await m.client.get(
            f"/v2/redis/blobs/{BLOB}", headers={"Authorization": "Bearer t"}
        )
    assert response.status_code == 200
    assert "authorization" not in m.upstream.requests[1].headers


async def test_head_blob_follows_redirect_as_head() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            return reply(200, headers={"Content-Length": "5000"})
        return reply(307, headers={"Location": f"{CDN}/b"})

    async with mirror(upstream) as m:
        response = await m.raw("HEAD", f"/v2/redis/blobs/{BLOB}")
    assert response.status == 200
    assert response.headers["Content-Length"] == "5000"
    assert [r.method for r in m.upstream.requests] == ["HEAD", "HEAD"]


async def test_too_many_redirects_is_502() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(307, headers={"Location": f"{CDN}/loop/{len(m.upstream.requests)}"})

    async with mirror(upstream) as m:
        response = await m.client.get(f"/v2/redis/blobs/{BLOB}")
    assert response.status_code == 502
    body = await response.get_json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "redirect" in body["errors"][0]["message"]
    assert len(m.upstream.requests) == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Location": ""},
        {"Location": "ftp://cdn.example/blob"},
        {"Location": "https://cdn.example:99999/blob"},
    ],
)
async def test_unusable_redirect_is_502(headers: dict[str, str]) -> None:
    async with mirror(lambda request: reply(307, headers=headers)) as m:
        response = await m.client.get(f"/v2/redis/blobs/{BLOB}")
    assert response.status_code == 502
    assert await error_code(response) == "UNAVAILABLE"
    assert len(m.upstream.requests) == 1


async def test_cdn_timeout_after_redirect_is_504() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example":
            raise httpx.ReadTimeout("slow CDN")
        return reply(307, headers={"Location": f"{CDN}/b"})

    async with mirror(upstream) as m:
        response = await m.client.get(f"/v2/redis/blobs/{BLOB}")
    assert response.status_code == 504
    body = await response.get_json()
    assert "cdn.example" in body["errors"][0]["message"]


# --- /auth/token ------------------------------------------------------------------------------


async def test_token_forwards_service_account_scopes_and_basic_auth() -> None:
    query = (
        f"service={SERVICE}&account=bob&scope=repository:redis:pull"
        "&scope=repository:org/app:pull,push&client_id=docker&unknown=1&ns=docker.io"
    )
    async with mirror() as m:
        response = await m.client.get(
            f"/auth/token?{query}",
            headers={"Authorization": BASIC, "X-Forwarded-Host": "evil.example"},
        )
        body = await response.get_json()
    assert response.status_code == 200
    assert body == {"token": "t0ken"}
    assert response.headers["Cache-Control"] == "no-store"
    [sent] = m.upstream.requests
    assert sent.method == "GET"
    assert f"{sent.url.scheme}://{sent.url.host}{sent.url.path}" == AUTH
    assert sent.url.params.get_list("service") == [SERVICE]
    assert sent.url.params.get_list("account") == ["bob"]
    assert sent.url.params.get_list("client_id") == ["docker"]
    assert sent.url.params.get_list("scope") == [
        "repository:library/redis:pull",
        "repository:org/app:pull,push",
    ]
    assert "unknown" not in sent.url.params
    assert "ns" not in sent.url.params
    assert sent.headers["authorization"] == BASIC


async def test_token_space_separated_scopes_all_rewritten() -> None:
    async with mirror() as m:
        await m.client.get(
            "/auth/token",
            query_string={"scope": "repository:redis:pull repository:nginx:pull"},
        )
    assert m.upstream.requests[0].url.params.get_list("scope") == [
        "repository:library/redis:pull repository:library/nginx:pull"
    ]


async def test_token_without_library_prefix_keeps_scope() -> None:
    async with mirror(settings={"upstream.library_prefix": "false"}) as m:
        await m.client.get("/auth/token?scope=repository:redis:pull")
    assert m.upstream.requests[0].url.params["scope"] == "repository:redis:pull"


async def test_anonymous_token_request_sends_no_authorization() -> None:
    async with mirror() as m:
        response = await m.client.get("/auth/token?service=x")
    assert response.status_code == 200
    assert "authorization" not in m.upstream.requests[0].headers


async def test_token_refusal_is_relayed() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(
            401,
            b'{"details":"incorrect username or password"}',
            {"Content-Type": "application/json"},
        )

    async with mirror(upstream) as m:
        response = await m.client.get("/auth/token?service=x", headers={"Authorization": BASIC})
    assert response.status_code == 401
    [error] = (await response.get_json())["errors"]  # a registry error, the upstream's words
    assert error["code"] == "UNAUTHORIZED"
    assert error["message"].endswith(": incorrect username or password")


async def test_a_token_refusal_in_the_registry_error_format_keeps_its_body() -> None:
    body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "token expired", "detail": null}]}'

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(401, body, {"Content-Type": "application/json"})

    async with mirror(upstream) as m:
        response = await m.client.get("/auth/token?service=x", headers={"Authorization": BASIC})
    assert response.status_code == 401
    assert await response.get_data() == body
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="{MIRROR_REALM}"'


async def test_token_realm_discovered_from_upstream_challenge() -> None:
    discovered = "https://auth.example/discovered"

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{discovered}"'})
        return reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})

    async with mirror(upstream, {"upstream.auth_realm": ""}) as m:
        first = await m.client.get("/auth/token?scope=repository:redis:pull")
        second = await m.client.get("/auth/token?scope=repository:redis:pull")
    assert (first.status_code, second.status_code) == (200, 200)
    paths = [f"{r.url.scheme}://{r.url.host}{r.url.path}" for r in m.upstream.requests]
    assert paths == [f"{REGISTRY}/v2/", discovered, discovered]  # the realm is remembered
    assert m.upstream.requests[1].url.params["scope"] == "repository:library/redis:pull"


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, {}),
        (401, {"WWW-Authenticate": 'Basic realm="r"'}),
        (401, {}),
        (401, {"WWW-Authenticate": 'Bearer service="no-realm"'}),
    ],
    ids=["open", "basic", "bare-401", "bearer-without-realm"],
)
async def test_token_404_when_upstream_has_no_token_auth(
    status: int, headers: dict[str, str]
) -> None:
    async with mirror(
        lambda request: reply(status, b"{}", headers), {"upstream.auth_realm": ""}
    ) as m:
        response = await m.client.get("/auth/token?scope=repository:redis:pull")
    assert response.status_code == 404
    assert await error_code(response) == "NOT_FOUND"
    assert m.upstream.urls == [f"{REGISTRY}/v2/"]


async def test_token_upstream_unreachable_is_502() -> None:
    async with mirror(fail_with(httpx.ConnectError("refused"))) as m:
        response = await m.client.get("/auth/token?service=x")
    assert response.status_code == 502
    assert await error_code(response) == "UNAVAILABLE"


# --- read-only, unknown paths ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path",
    [
        "/v2/",
        "/v2/redis/manifests/latest",
        f"/v2/org/app/blobs/{BLOB}",
        "/v2/redis/blobs/uploads/",
        "/v2/redis/blobs/uploads/some-uuid",
    ],
)
async def test_writes_are_unsupported(method: str, path: str) -> None:
    async with mirror() as m:
        response = await getattr(m.client, method.lower())(path)
    assert response.status_code == 405
    assert await error_code(response) == "UNSUPPORTED"
    assert response.headers["Allow"] == "GET, HEAD"  # RFC 9110 §15.5.6: a 405 names them
    assert m.upstream.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/foo",
        "/v1/search",
        "/v2/_catalog",
        "/v2/redis/tags/list",
        "/v2/redis",
        "/v3/",
        "/static/config.py",
    ],
)
async def test_unknown_paths_are_404(path: str) -> None:
    async with mirror() as m:
        response = await m.client.get(path)
    assert response.status_code == 404
    assert await error_code(response) == "NOT_FOUND"
    assert m.upstream.requests == []


# --- /health --------------------------------------------------------------------------------


async def test_health_shape_before_any_upstream_call() -> None:
    async with mirror() as m:
        response = await m.client.get("/health")
        body = await response.get_json()
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["upstream"] == {
        "registry": REGISTRY,
        "reachable": None,
        "last_ok": None,
        "last_error": None,
        "last_error_message": None,
        "ratelimit_limit": None,
        "ratelimit_remaining": None,
        "rate_limited_until": None,
        "last_rate_limited": None,
        "stale_served": 0,
        "last_stale": None,
        "login": None,  # no login configured: nothing judged (fe45a4d)
        "login_refused_since": None,
        "healthy": True,
    }
    assert m.upstream.requests == []


async def test_health_degraded_after_failure_and_ok_after_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At once, not after docxy.upstream.outage's hold (its own tests: test_review_downfast)
    monkeypatch.setattr(outage, "FIRST_HOLD", 0.0)
    down = True

    def upstream(request: httpx.Request) -> httpx.Response:
        if down:
            raise httpx.ConnectError("refused")
        return hub(request)

    async with mirror(upstream) as m:
        failed = await m.client.get("/v2/redis/manifests/latest")
        degraded = await (await m.client.get("/health")).get_json()
        down = False
        served = await m.client.get("/v2/redis/manifests/latest")
        healthy = await (await m.client.get("/health")).get_json()
    assert failed.status_code == 502
    assert degraded["status"] == "degraded"
    assert degraded["upstream"]["reachable"] is False
    assert "ConnectError" in degraded["upstream"]["last_error_message"]
    assert degraded["upstream"]["last_error"] is not None
    assert served.status_code == 200
    assert healthy["status"] == "ok"
    assert healthy["upstream"]["reachable"] is True
    assert healthy["upstream"]["last_ok"] is not None


async def test_health_answers_while_upstream_is_down() -> None:
    async with mirror(fail_with(httpx.ConnectError("refused"))) as m:
        response = await m.client.get("/health")
    assert response.status_code == 200
    assert m.upstream.requests == []


# --- ACME webroot ---------------------------------------------------------------------------


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    challenges = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "tok-EN_123").write_text("tok-EN_123.thumbprint")
    (tmp_path / "secret").write_text("do not serve")
    (tmp_path / "webroot" / "secret").write_text("do not serve")
    return tmp_path / "webroot"


async def test_acme_token_is_served(webroot: Path) -> None:
    async with mirror(settings={"certs.webroot": str(webroot)}) as m:
        response = await m.client.get("/.well-known/acme-challenge/tok-EN_123")
        body = await response.get_data()
    assert response.status_code == 200
    assert body == b"tok-EN_123.thumbprint"
    assert response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/..%2F..%2Fsecret",
        "/.well-known/acme-challenge/..%2fsecret",
        "/.well-known/acme-challenge/../secret",
        "/.well-known/acme-challenge/../../secret",
        "/.well-known/acme-challenge/%2e%2e",
        "/.well-known/acme-challenge/..",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/.hidden",
    ],
)
async def test_acme_refuses_traversal_and_unknown_tokens(webroot: Path, path: str) -> None:
    async with mirror(settings={"certs.webroot": str(webroot)}) as m:
        response = await m.raw("GET", path)
    assert response.status == 404
    assert b"do not serve" not in response.body
    assert json.loads(response.body)["errors"][0]["code"] == "NOT_FOUND"


async def test_acme_without_webroot_is_404(webroot: Path) -> None:
    async with mirror() as m:
        response = await m.client.get("/.well-known/acme-challenge/tok-EN_123")
    assert response.status_code == 404


# --- the mirror adds no headers of its own to relayed content ---------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_no_content_type_invented_when_upstream_sends_none(method: str) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(200, b"" if request.method == "HEAD" else b"raw", {"Content-Length": "3"})

    async with mirror(upstream) as m:
        response = await m.raw(method, f"/v2/redis/blobs/{BLOB}")
    assert response.status == 200
    assert "Content-Type" not in response.headers
    assert response.headers["Content-Length"] == "3"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_health_degraded_while_the_upstream_answers_trouble(status: int) -> None:
    trouble = True

    def upstream(request: httpx.Request) -> httpx.Response:
        return registry_error(status, "UNAVAILABLE") if trouble else hub(request)

    async with mirror(upstream) as m:
        await m.client.get("/v2/redis/manifests/latest")
        degraded = await (await m.client.get("/health")).get_json()
        trouble = False
        await m.client.get("/v2/redis/manifests/latest")
        healthy = await (await m.client.get("/health")).get_json()
    assert degraded["status"] == "degraded"
    assert str(status) in degraded["upstream"]["last_error_message"]
    assert degraded["upstream"]["last_error"] is not None
    assert healthy["status"] == "ok"


# --- doubled slashes ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2//manifests/latest", "/v2//blobs/" + BLOB, "/auth//token"])
async def test_doubled_slashes_get_a_registry_error_not_a_redirect_built_from_host(
    path: str,
) -> None:
    """Werkzeug's slash merging answered these with an HTML ``308`` whose ``Location`` was
    built from the client's ``Host`` (``http://evil.example/v2/manifests/latest``): a page
    no registry client can read, pointing wherever the client said the mirror is."""
    async with mirror() as m:
        answer = await call_asgi(m.app, "GET", path, host="evil.example")
    assert answer.status in (400, 404)
    assert answer.headers["Content-Type"] == "application/json"
    assert "Location" not in answer.headers
    assert json.loads(answer.body)["errors"][0]["code"] in ("NAME_INVALID", "NOT_FOUND")
    assert m.upstream.requests == []


# --- header values beyond ASCII -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/v2/", "Authorization"),
        ("/v2/redis/manifests/latest", "Accept"),
        ("/v2/redis/manifests/latest", "Authorization"),
        (f"/v2/redis/blobs/{BLOB}", "Range"),
        ("/auth/token?scope=repository:redis:pull", "Authorization"),
    ],
)
async def test_a_header_to_forward_beyond_ascii_is_a_400_not_an_internal_error(
    path: str, header: str
) -> None:
    """HTTP/1.1 lets a header value carry bytes beyond ASCII (obs-text), and h11 takes them;
    httpx cannot send them, so forwarding one raised inside the route: ``500`` and a
    traceback. The client's request is what is wrong: ``400`` in the registry's format."""
    async with mirror() as m:
        answer = await m.raw("GET", path, [(header, "Bearer \u00e9t\u00e9")])
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert header in json.loads(answer.body)["errors"][0]["message"]
    assert m.upstream.requests == []


@pytest.mark.parametrize("body", [b"<html><body>Not Found</body></html>", b"", b"not json"])
async def test_v2_upstream_error_that_is_not_json_becomes_a_registry_error(body: bytes) -> None:
    """The ``/v2/`` answer to an upstream error was the upstream's body labelled
    ``application/json`` whatever it was: a proxy's HTML page then broke the client's error
    parse (``invalid character '<'``). It is now the registry's JSON error, same status."""
    html = {"Content-Type": "text/html"}
    async with mirror(lambda request: reply(404, body, html)) as m:
        answer = await m.raw("GET", "/v2/")
    assert answer.status == 404
    assert answer.headers["Content-Type"] == "application/json"
    [error] = json.loads(answer.body)["errors"]
    assert "404" in error["message"]


@pytest.mark.parametrize("path", ["/v2/redis/manifests/7", f"/v2/redis/blobs/{DIGEST}"])
@pytest.mark.parametrize("kind", ["text/html; charset=utf-8", None], ids=["html", "no-type"])
async def test_a_server_error_page_relayed_becomes_a_registry_error(
    path: str, kind: str | None
) -> None:
    """A proxy or CDN in front of a failing registry answers 503 with its own HTML page: it
    was relayed as it came, and docker read it as JSON ("invalid character '<'"). A page with
    no Content-Type became the JSON error without one (the relay dropped it as it came)."""
    page = {"Retry-After": "30"} | ({} if kind is None else {"Content-Type": kind})
    async with mirror(lambda request: reply(503, b"<html>Service Unavailable</html>", page)) as m:
        answer = await m.raw("GET", path)
    assert answer.status == 503
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["Content-Length"] == str(len(answer.body))
    [error] = json.loads(answer.body)["errors"]
    assert (error["code"], "503" in error["message"]) == ("UNAVAILABLE", True)


async def test_a_server_error_in_the_registrys_own_json_is_relayed() -> None:
    async with mirror(lambda request: registry_error(503, "TOOMANYREQUESTS")) as m:
        answer = await m.raw("GET", "/v2/redis/manifests/7")
    assert answer.status == 503
    assert json.loads(answer.body)["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_v2_asks_upstream_in_the_mirrors_codings_not_the_clients() -> None:
    """/v2/ forwarded the client's Accept-Encoding, then read the answer itself: a browser's
    br came back br, which the mirror does not read (a 502 for the upstream's 403)."""
    seen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        asked = request.headers.get("accept-encoding", "")
        seen.append(asked)
        if "br" in asked:
            return reply(403, b"\x1b\x00garbage", {"Content-Encoding": "br"})
        return registry_error(403, "DENIED")

    async with mirror(upstream) as m:
        answer = await m.raw("GET", "/v2/", [("Accept-Encoding", "br")])
    assert answer.status == 403
    assert json.loads(answer.body)["errors"][0]["code"] == "DENIED"
    assert seen == [ACCEPTED]


async def test_v2_upstream_registry_error_is_relayed() -> None:
    async with mirror(lambda request: registry_error(403, "DENIED")) as m:
        answer = await m.raw("GET", "/v2/")
    assert answer.status == 403
    assert json.loads(answer.body)["errors"][0]["code"] == "DENIED"


class BreaksOff(Body):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise httpx.ReadError("connection reset by peer")


async def test_a_relayed_body_the_upstream_breaks_off_is_a_cut_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pass-through (here, the cache off) whose upstream body breaks off: the client's body
    is cut, as it was, but the httpx error escaped the app (the server logged an ERROR with a
    traceback for each one) and the access line said ``aborted``, not ``cut``."""
    from docxy.http.middleware import AccessLog, Guard

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        headers = {"Content-Length": "5000", "Content-Type": "application/octet-stream"}
        return httpx.Response(200, headers=headers, stream=BreaksOff())

    caplog.set_level("INFO", logger="docxy")
    async with mirror(upstream) as m:
        app = AccessLog(Guard(m.app, None))
        path = f"/v2/library/redis/blobs/{BLOB}"
        answer = await call_asgi(app, "GET", path, host="mirror.example.com")
    # The read it had, whole: short of the 5000 bytes announced, it cannot be the last (a
    # blob passed through holds back only the byte that would complete it, until verified).
    assert answer.status == 200 and not answer.complete and len(answer.body) == 1000
    [line] = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert line.endswith(" cut"), line
