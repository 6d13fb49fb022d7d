"""Outcomes and errors rendered as registry responses (docxy.http.responses), without a server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from quart import Response

from docxy.cache.manifests import NotKept
from docxy.cli.warm import UNCACHED_BECAUSE
from docxy.core.digests import digest_of
from docxy.core.errors import NotFound, RangeNotSatisfiable, UpstreamTimeout
from docxy.http.responses import (
    cache_status,
    error_response,
    relay,
    served_response,
    unauthorized,
    with_cache_status,
)
from docxy.pull.outcome import BlobContent, ManifestContent, PassThrough, Reason, Served, Source

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


async def test_cache_status_says_what_the_cache_did_for_every_source_and_reason() -> None:
    """RFC 9211: the mirror's member names it, then ``hit``, or where the request went
    (``fwd``) and why; every source and every pass-through reason has its own."""
    blob = BlobContent(DIGEST, 10, None)
    said = {source: cache_status(Served(source, blob)) for source in Source}
    assert said[Source.HIT] == "Docxy; hit"
    assert said[Source.MISS] == "Docxy; fwd=miss"
    assert said[Source.JOINED] == "Docxy; fwd=miss; collapsed"
    assert len(set(said.values())) == len(Source)
    manifest = ManifestContent(DIGEST, "application/vnd.oci.image.manifest.v1+json", 8, None)
    assert cache_status(Served(Source.MISS, manifest, not_kept=Reason.CACHE_UNWRITABLE)) == (
        "Docxy; fwd=miss; stored=?0; detail=cache-unwritable"
    )
    for reason in Reason:
        status = cache_status(PassThrough(reason, "a detail that stays in the log"))
        assert status == f"Docxy; fwd=bypass; detail={reason.value}"


async def test_cache_status_goes_after_the_upstreams_own() -> None:
    """A relayed answer keeps the members of the caches before the mirror, in order, and the
    mirror's goes last (the one nearest the client)."""
    upstream = httpx.Response(
        200, headers=[("Cache-Status", "CDN; hit"), ("Cache-Status", "Edge; fwd=miss")]
    )
    response = relay(
        upstream, method="HEAD", realm="https://m.test/auth/token", library_prefix=True
    )
    with_cache_status(response, PassThrough(Reason.PRIVATE))
    assert response.headers.getlist("Cache-Status") == [
        "CDN; hit, Edge; fwd=miss, Docxy; fwd=bypass; detail=private"
    ]
    hit = Served(Source.HIT, BlobContent(DIGEST, 10, None))
    served = with_cache_status(served_response(hit), hit)
    assert served.headers.getlist("Cache-Status") == ["Docxy; hit"]


@pytest.mark.parametrize("why", list(NotKept))
async def test_a_manifest_not_kept_says_why_in_cache_status_and_to_warm(why: NotKept) -> None:
    """A manifest fetched just now and not cached is ``stored=?0`` with the store's own reason
    (a disk that refused it is not an eviction that took it out meanwhile), which
    ``docxy warm`` explains."""
    manifest = ManifestContent(DIGEST, "application/vnd.oci.image.manifest.v1+json", 2, None)
    served = Served(Source.MISS, manifest, not_kept=Reason(why.value))
    assert not served.kept
    assert cache_status(served) == f"Docxy; fwd=miss; stored=?0; detail={why.value}"
    assert why.value in UNCACHED_BECAUSE


async def test_a_relay_dropped_in_another_thread_releases_its_permit_on_the_loop() -> None:
    """``release`` (a fill permit's: it changes the permits' count and wakes a waiter's future,
    which only the loop may touch) runs when the body is dropped unstarted; the garbage
    collector may drop it in any thread (a worker's), where it ran then and there."""
    import gc
    import threading

    released_in: list[int] = []
    held = [
        relay(
            httpx.Response(200, content=b"blob"),
            method="GET",
            realm="https://mirror.test/auth/token",
            library_prefix=True,
            release=lambda: released_in.append(threading.get_ident()),
        )
    ]

    def drop() -> None:
        held.clear()
        gc.collect()

    await asyncio.to_thread(drop)
    for _ in range(10):
        if released_in:
            break
        await asyncio.sleep(0.01)
    assert released_in == [threading.get_ident()]
