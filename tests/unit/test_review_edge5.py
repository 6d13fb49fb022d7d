"""Review findings on the HTTP edge (fifth round): what a client is told that the mirror does
not mean. Each fault is a test asserting the right behaviour; it was seen failing (strict xfail)
before its mend. In-process only: the app called as hypercorn calls it, over a mock upstream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from docxy.core.headers import request_headers, response_headers
from tests.unit.fakes import reply
from tests.unit.test_routes import mirror

BLOB = b"0123456789" * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
OTHER = "sha256:" + "f" * 64  # a digest no bytes here hash to

#: Headers an upstream or its CDN sets for its own origin: relayed, a browser or client would
#: take them as the mirror's (HSTS pins the mirror's domain and its subdomains to HTTPS).
ORIGIN_POLICY = [
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains; preload"),
    ("Alt-Svc", 'h3=":443"; ma=86400'),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Docker-Content-Digest"),
    ("Public-Key-Pins", 'pin-sha256="abc="; max-age=5184000'),
    ("Public-Key-Pins-Report-Only", 'pin-sha256="abc="; max-age=5184000'),
    ("Clear-Site-Data", '"cache", "cookies"'),
]
#: What a registry client needs from an answer passed through.
REGISTRY_HEADERS = [
    ("Docker-Content-Digest", BLOB_DIGEST),
    ("Content-Range", "bytes 0-9/1000"),
    ("ETag", f'"{BLOB_DIGEST}"'),
    ("Link", '</v2/x/tags/list?n=1&last=a>; rel="next"'),
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "10"),
]


def test_origin_policy_headers_are_not_relayed() -> None:
    kept = response_headers([*ORIGIN_POLICY, *REGISTRY_HEADERS])
    assert kept == REGISTRY_HEADERS


def _with_origin_policy(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    headers = [("Content-Type", "application/octet-stream"), *ORIGIN_POLICY]
    return reply(200, BLOB, headers, length=True)


async def test_a_blob_passed_through_carries_no_upstream_origin_policy() -> None:
    async with mirror(_with_origin_policy) as m:
        answer = await m.raw("GET", f"/v2/x/blobs/{BLOB_DIGEST}")
    assert answer.status == 200 and answer.body == BLOB
    relayed = [name for name, _ in ORIGIN_POLICY if name in answer.headers]
    assert relayed == []
    assert answer.headers["Docker-Content-Digest"] == BLOB_DIGEST


def test_a_head_s_range_is_not_forwarded() -> None:
    asked = [("Accept", "*/*"), ("Range", "bytes=0-9"), ("If-Range", '"e"'), ("RANGE", "x")]
    assert request_headers(asked, head=True) == [("Accept", "*/*")]
    assert request_headers(asked) == asked


def _ranged_head(request: httpx.Request) -> httpx.Response:
    """As Distribution (Go's ``http.ServeContent``) answers a HEAD with a Range: 206."""
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    length = [("Content-Length", str(len(BLOB)))]
    if "range" in request.headers:
        return reply(206, b"", [("Content-Length", "10"), ("Content-Range", "bytes 0-9/1000")])
    return reply(200, b"" if request.method == "HEAD" else BLOB, length)


async def test_a_head_passed_through_ignores_range() -> None:
    asked = [("Range", "bytes=0-9"), ("If-Range", f'"{BLOB_DIGEST}"')]
    async with mirror(_ranged_head) as m:
        head = await m.raw("HEAD", f"/v2/x/blobs/{BLOB_DIGEST}", asked)
        [sent] = [r for r in m.upstream.requests if r.method == "HEAD"]
    assert "range" not in sent.headers and "if-range" not in sent.headers
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(BLOB))
    assert "Content-Range" not in head.headers


async def test_a_get_passed_through_still_forwards_range() -> None:
    async with mirror(_ranged_head) as m:
        get = await m.raw("GET", f"/v2/x/blobs/{BLOB_DIGEST}", [("Range", "bytes=0-9")])
        [sent] = [r for r in m.upstream.requests if r.method == "GET" and "/blobs/" in r.url.path]
    assert sent.headers["range"] == "bytes=0-9"
    assert get.status == 206


def _html_503(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    page = b"<html>down for maintenance</html>"
    return reply(503, page, {"Content-Type": "text/html", "Retry-After": "30"}, length=True)


@pytest.mark.parametrize("path", ["/v2/x/manifests/latest", f"/v2/x/blobs/{BLOB_DIGEST}"])
async def test_a_head_of_an_upstream_trouble_page_has_the_get_s_headers(path: str) -> None:
    async with mirror(_html_503) as m:
        get = await m.raw("GET", path)
        head = await m.raw("HEAD", path)
    assert get.status == head.status == 503
    assert json.loads(get.body)["errors"][0]["code"] == "UNAVAILABLE"
    for name in ("Content-Type", "Content-Length", "Retry-After"):
        assert head.headers.get(name) == get.headers.get(name), name
    assert head.body == b""


@pytest.mark.parametrize(
    "method",
    [
        "OPTIONS",
        "TRACE",
        "PROPFIND",
        "PUT",  # refused by the routes themselves: right already
        "DELETE",
    ],
)
@pytest.mark.parametrize(
    "path", ["/v2", "/v2/", "/v2/x/manifests/latest", f"/v2/x/blobs/{BLOB_DIGEST}"]
)
async def test_every_405_on_v2_allows_only_get_and_head(method: str, path: str) -> None:
    async with mirror() as m:
        answer = await m.raw(method, path)
    assert answer.status == 405
    assert json.loads(answer.body)["errors"][0]["code"] == "UNSUPPORTED"
    assert answer.headers["Allow"] == "GET, HEAD"


async def test_a_405_elsewhere_names_the_route_s_own_methods() -> None:
    async with mirror() as m:
        answer = await m.raw("OPTIONS", "/auth/token")
    assert answer.status == 405
    assert {m.strip() for m in answer.headers["Allow"].split(",")} == {"GET", "HEAD", "POST"}


def _token_or_ping(request: httpx.Request) -> httpx.Response | None:
    """The token service's and ``/v2/``'s answers (the mirror's fill asks for a token)."""
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    return None


def _empty_for_any(request: httpx.Request) -> httpx.Response:
    if (answer := _token_or_ping(request)) is not None:
        return answer
    return reply(200, b"", {"Content-Type": "application/octet-stream", "Content-Length": "0"})


async def test_an_empty_corrupt_download_is_a_502(tmp_path: Path) -> None:
    """The fill proves the upstream's empty 200 is not the blob asked for before a byte went
    out: passed through, the client got that same empty body as a whole 200."""
    settings: dict[str, object] = {"cache.enabled": "true", "cache.dir": str(tmp_path)}
    async with mirror(_empty_for_any, settings) as m:
        answer = await m.raw("GET", f"/v2/x/blobs/{OTHER}")
        blob_gets = [r for r in m.upstream.requests if r.method == "GET" and "blobs" in r.url.path]
    assert answer.status == 502
    assert json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert len(blob_gets) == 1  # the fill's: the corrupt body is not asked for again


def _wrong_bytes(request: httpx.Request) -> httpx.Response:
    if (answer := _token_or_ping(request)) is not None:
        return answer
    return reply(200, BLOB, {"Content-Type": "application/octet-stream"}, length=True)


async def test_a_corrupt_download_with_bytes_still_cuts_its_client(tmp_path: Path) -> None:
    """Bytes that do not hash to the digest asked: the client got its headers with the first
    byte and is cut at the end (Docker retries), never a whole 200."""
    settings: dict[str, object] = {"cache.enabled": "true", "cache.dir": str(tmp_path)}
    async with mirror(_wrong_bytes, settings) as m:
        answer = await m.raw("GET", f"/v2/x/blobs/{OTHER}")
    assert not (answer.status == 200 and answer.complete)


async def test_a_body_over_the_limit_is_size_invalid() -> None:
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    headers.append(("Content-Length", "100000000"))
    async with mirror() as m:
        answer = await m.raw("POST", "/auth/token", headers)
    assert answer.status == 413
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "SIZE_INVALID"
    assert answer.headers["Content-Type"] == "application/json"
