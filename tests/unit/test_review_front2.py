"""Second review of the request path's front: the token endpoint's own 401 and blobs passed
through a redirect.

Each test is a fault an earlier review noted in ``docxy/http/auth.py`` and ``routes.py``,
reproduced through the app (the ASGI call hypercorn makes) with the unit tests' fake upstream,
then mended.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.http.app import create_app
from tests.unit.asgi import call_asgi
from tests.unit.fakes import FakeUpstream, reply
from tests.unit.test_review_front import HUB_LOGIN, MIRROR, follow_with_login

PUBLIC = "https://mirror.example.com"
JSON = {"Content-Type": "application/json"}
GHCR_CHALLENGE = 'Bearer realm="https://auth.ghcr.example/token",service="ghcr-service"'


def ghcr_refusing_anonymous(request: httpx.Request) -> httpx.Response:
    """A registry (ghcr.example) whose token service refuses an anonymous ask (as one may for a
    private repository, or one that does not exist); every registry request is a 401
    challenge. Hub (hub.example) is never asked in these tests."""
    if request.url.host == "auth.ghcr.example":
        return reply(401, b'{"details": "authentication required"}', JSON)
    return reply(401, b"{}", {"WWW-Authenticate": GHCR_CHALLENGE, **JSON})


@asynccontextmanager
async def open_mirror_with_ghcr(handler: FakeUpstream) -> AsyncIterator[Quart]:
    """An open mirror fronting Docker Hub (hub.example) with ghcr.test beside it, no cache."""
    settings: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
        "cache.enabled": "false",
        "upstreams": "ghcr.test=https://ghcr.example",
    }
    app = create_app(load_config(settings, environ={}), probe=False,
                     transport=httpx.MockTransport(handler))  # fmt: skip
    async with app.test_app():
        yield app


@pytest.mark.parametrize(
    "asked",
    [
        # the realm of the mirror's /v2/ (no upstream named), the scope naming it by prefix
        "/auth/token?service=docker.io&scope=repository:ghcr.test/owner/img:pull",
        # the realm a by-prefix pull's relayed challenge names, with no scope in it
        "/auth/token?upstream=ghcr.test&via=prefix&service=ghcr-service",
    ],
)
async def test_the_token_endpoints_401_to_a_by_prefix_ask_keeps_the_login_home(asked: str) -> None:
    """A token request for ``mirror.example.com/ghcr.test/owner/img`` with the login the
    client holds for the mirror's name (Docker Hub's) goes to ghcr.test's token service
    anonymously; that service refused it (401). The endpoint's 401 named the plain
    ``?upstream=ghcr.test`` realm, no ``via=prefix``: a client following it with the same
    login had it sent to ghcr.test's token service (``credentials_go_to`` took the request
    for one reached as ghcr.test itself). That 401 says ``via=prefix`` now, as the routes' do
    (1da0ab6)."""
    upstream = FakeUpstream(ghcr_refusing_anonymous)
    async with open_mirror_with_ghcr(upstream) as app:
        login = [("Authorization", HUB_LOGIN)]
        answer = await call_asgi(app, "GET", asked, host=MIRROR, headers=login)
        assert answer.status == 401
        await follow_with_login(app, answer)
    sent = [r for r in upstream.requests if r.url.host == "auth.ghcr.example"]
    assert len(sent) == 2, "a token request never reached ghcr.test's token service"
    assert all("authorization" not in r.headers for r in sent), (
        "the login held for the mirror's name went to ghcr.test's token service"
    )
    assert "via=prefix" in answer.headers["WWW-Authenticate"]


async def test_the_token_endpoints_401_to_an_upstream_reached_as_itself_names_its_realm() -> None:
    """The other side: a client that reached ghcr.test as itself (``?ns=``, its own host
    name: the realm names it, the scope names its repository as ghcr.test does) holds
    ghcr.test's own login. The 401 when ghcr.test refuses it keeps the plain realm, and the
    login goes there again when followed."""
    upstream = FakeUpstream(ghcr_refusing_anonymous)
    async with open_mirror_with_ghcr(upstream) as app:
        login = [("Authorization", HUB_LOGIN)]
        scope = "repository:owner/img:pull"
        asked = f"/auth/token?upstream=ghcr.test&service=ghcr-service&scope={scope}"
        answer = await call_asgi(app, "GET", asked, host=MIRROR, headers=login)
        assert answer.status == 401
        assert "via=prefix" not in answer.headers["WWW-Authenticate"]
        assert "upstream=ghcr.test" in answer.headers["WWW-Authenticate"]
        await follow_with_login(app, answer)
    sent = [r for r in upstream.requests if r.url.host == "auth.ghcr.example"]
    assert [r.headers.get("authorization") for r in sent] == [HUB_LOGIN, HUB_LOGIN]


# --- a blob passed through a redirect to a CDN ------------------------------------------------

BLOB_BYTES = b"layer-bytes-" * 100
BLOB = "sha256:" + hashlib.sha256(BLOB_BYTES).hexdigest()
CDN_URL = f"https://cdn.example/blobs/{BLOB.split(':')[1]}?sig=abc"


def hub_via_cdn(request: httpx.Request) -> httpx.Response:
    """A registry (hub.example, open: no token service) that sends every blob request to a
    CDN with a 307, as Docker Hub and ghcr.io do; the CDN answers as S3 or CloudFront do: the
    bytes, their length and ranges, no ``Docker-Content-Digest`` (a registry's header)."""
    if request.url.host == "cdn.example":
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        body = BLOB_BYTES
        status = 200
        if "range" in request.headers:  # bytes=N- only, as the tests ask
            start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
            body, status = BLOB_BYTES[start:], 206
            headers["Content-Range"] = f"bytes {start}-{len(BLOB_BYTES) - 1}/{len(BLOB_BYTES)}"
        headers["Content-Length"] = str(len(body))
        return reply(status, b"" if request.method == "HEAD" else body, headers)
    if "/blobs/" in request.url.path:
        return reply(307, headers={"Location": CDN_URL})
    return reply(200, b"{}", JSON)


@asynccontextmanager
async def mirror_of(handler: FakeUpstream, cache_dir: Path | None) -> AsyncIterator[Quart]:
    """An open mirror of hub.example, with a cache in ``cache_dir`` (None: no cache)."""
    settings: dict[str, object] = {
        "server.public_url": PUBLIC,
        "upstream.registry": "https://hub.example",
    }
    if cache_dir is None:
        settings["cache.enabled"] = "false"
    else:
        settings["cache.dir"] = str(cache_dir)
    app = create_app(load_config(settings, environ={}), probe=False,
                     transport=httpx.MockTransport(handler))  # fmt: skip
    async with app.test_app():
        yield app


RANGE = [("Range", "bytes=1000-")]


@pytest.mark.parametrize(
    ("cached", "method", "headers", "status"),
    [
        (False, "HEAD", [], 200),
        (False, "GET", [], 200),
        (False, "GET", RANGE, 206),
        (True, "HEAD", [], 200),
        (True, "GET", RANGE, 206),
    ],
    ids=["head", "get", "ranged-get", "head-not-cached", "ranged-get-not-cached"],
)
async def test_a_blob_passed_through_a_cdn_carries_its_digest(
    tmp_path: Path, cached: bool, method: str, headers: list[tuple[str, str]], status: int
) -> None:
    """A blob request the mirror passes through (no cache; a HEAD or a ranged GET of a blob
    not cached) is redirected to a CDN, whose answer is relayed: without
    ``Docker-Content-Digest``, which the registry API says a blob's answer carries and clients
    read (containerd's resolver and skopeo from a HEAD). The mirror names the digest the
    client asked for, the only one a content-addressed blob can have. (A plain GET with a
    cache is a fill, answered by the mirror itself: not passed through, not here.)"""
    upstream = FakeUpstream(hub_via_cdn)
    async with mirror_of(upstream, tmp_path / "cache" if cached else None) as app:
        path = f"/v2/library/img/blobs/{BLOB}"
        answer = await call_asgi(app, method, path, host=MIRROR, headers=headers)
    assert [str(r.url) for r in upstream.requests][-1] == CDN_URL, "not through the CDN"
    assert answer.status == status
    assert "fwd=bypass" in answer.headers["Cache-Status"], "not passed through"
    assert answer.headers.get("Docker-Content-Digest") == BLOB
    assert answer.headers["Content-Length"] == str(len(BLOB_BYTES) - (1000 if headers else 0))
    if method == "GET":
        assert answer.body == BLOB_BYTES[1000 if headers else 0 :]


def cdn_refusing(request: httpx.Request) -> httpx.Response:
    """As :func:`hub_via_cdn`, but the CDN's signed URL has expired: 403, its own page."""
    if request.url.host == "cdn.example":
        return reply(403, b"<Error>AccessDenied</Error>", {"Content-Type": "application/xml"})
    return hub_via_cdn(request)


async def test_a_blob_refused_at_the_cdn_is_given_no_digest() -> None:
    """Only an answer that is the blob names it: a CDN's 403 (or any error) carries no
    ``Docker-Content-Digest``, which would say the blob was there."""
    async with mirror_of(FakeUpstream(cdn_refusing), None) as app:
        path = f"/v2/library/img/blobs/{BLOB}"
        answer = await call_asgi(app, "HEAD", path, host=MIRROR)
    assert answer.status == 403
    assert "Docker-Content-Digest" not in answer.headers
