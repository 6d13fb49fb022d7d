"""Outcomes and errors rendered as registry responses (docxy.http.responses), without a server."""

from __future__ import annotations

import httpx
from quart import Response

from docxy.core.digests import digest_of
from docxy.core.errors import NotFound, RangeNotSatisfiable, UpstreamTimeout
from docxy.http.responses import error_response, relay, served_response, unauthorized
from docxy.pull.outcome import BlobContent, ManifestContent, Served, Source

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
DIGEST = digest_of(b"manifest")


def responses() -> list[Response]:
    manifest = ManifestContent(DIGEST, "application/vnd.oci.image.manifest.v1+json", 8, b"manifest")
    return [
        served_response(Served(Source.HIT, manifest)),
        served_response(Served(Source.MISS, BlobContent(DIGEST, 10, None, (2, 5)))),
        error_response(NotFound("unknown path")),
        error_response(UpstreamTimeout("slow")),
        unauthorized('Bearer realm="https://mirror.test/auth/token"'),
        relay(
            httpx.Response(404, headers={"Content-Type": "application/json"}),
            method="HEAD",
            realm="https://mirror.test/auth/token",
            library_prefix=True,
        ),
    ]


async def test_every_registry_response_carries_the_api_version_once() -> None:
    for response in responses():
        assert response.headers.getlist(API_VERSION[0]) == [API_VERSION[1]]


async def test_a_blob_span_is_a_206_with_its_range_and_length() -> None:
    response = served_response(Served(Source.HIT, BlobContent(DIGEST, 10, None, (2, 5))))
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 2-4/10"
    assert response.headers["Content-Length"] == "3"
    assert response.headers["Docker-Content-Digest"] == str(DIGEST)


async def test_a_manifest_head_keeps_the_length_and_sends_no_body() -> None:
    content = ManifestContent(DIGEST, "application/vnd.oci.image.index.v1+json", 1234, None)
    response = served_response(Served(Source.MISS, content))
    assert response.headers["Content-Length"] == "1234"
    assert response.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    assert await response.get_data() == b""


async def test_errors_are_the_registry_json_with_their_status() -> None:
    response = error_response(RangeNotSatisfiable("past the end", {"size": 10}))
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */10"
    body = await response.get_json()
    assert body["errors"][0]["code"] == "RANGE_INVALID"
