"""Review findings on the shared tier's health (test_review_shared3's file name was taken by an
earlier round): each a test that failed before its mend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore
from docxy.core.digests import digest_of
from docxy.http.state import mirror_state
from docxy.shared import tier as tier_module
from tests.unit.test_observe_routes import (
    BLOB,
    SHARED,
    STORE_HOST,
    Upstream,
    answer,
    blob_path,
    stack,
)
from tests.unit.test_review_shared3 import LAYER, MAX_SIZE, cache, open_tier

#: What a web server (nginx, a single-page app's fallback route) answers at any path.
PAGE = b"<!doctype html><html><head><title>Welcome</title></head><body>It works</body></html>"


def web_page(request: httpx.Request) -> httpx.Response:
    """A web server at the endpoint: a page, 200, to every method and path; nothing of S3."""
    headers = {"content-type": "text/html", "content-length": str(len(PAGE)), "server": "nginx"}
    return answer(200, b"" if request.method == "HEAD" else PAGE, headers)


class WebServer(Upstream):
    """The upstream as ever; ``shared.endpoint`` names a web server, not an S3 store."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == STORE_HOST:  # as it is: no S3 request id put in
            self.bucket_seen.append(f"{request.method} {request.url.path}")
            return web_page(request)
        return super().__call__(request)


# --- 1. an endpoint answering 200 that is no S3 store ---------------------------------------


async def test_a_web_server_at_the_endpoint_is_no_store_not_a_corrupt_object_per_blob(
    tmp_path: Path,
) -> None:
    """Its page, 200, was taken for the object: the fill did not verify, the client's pull was
    cut, the blob counted ``corrupt`` and ``reachable`` stayed true, blob after blob: a tier
    that looked healthy and never served. It is the store failing, with the reason."""
    upstream = WebServer()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        pulled = await mirror.get(blob_path())
        _, admin = await mirror.admin_get("/status.json")
        _, page = await mirror.admin_get("/status")
    assert (pulled.status, pulled.body == BLOB) == (200, True)  # from the upstream, whole
    shared = json.loads(admin)["shared"]
    assert (shared["reachable"], shared["corrupt"], shared["hits"]) == (False, 0, 0)
    assert "not an S3 store" in shared["last_error"], shared["last_error"]
    assert 'id=shared-state class="badge bad">unreachable' in page


async def test_an_upload_to_a_web_server_is_not_counted_uploaded(tmp_path: Path) -> None:
    """Its HEAD 200 and PUT 200 passed for a stored length and an upload taken."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    layer = await cache(blobs, LAYER)
    tier, http = open_tier(blobs, web_page)
    async with http:
        tier.filled(layer)
        await tier.uploads.drained()
    assert (tier.counts.uploaded, tier.counts.upload_failed, tier.reachable) == (0, 1, False)
    assert tier.last_error is not None and "not an S3 store" in tier.last_error


def s3_without_request_id(request: httpx.Request) -> httpx.Response:
    """A store that sends no ``x-amz-`` header at all (the S3 API, not AWS's headers): its
    object is served, its missing key a ``NoSuchKey``."""
    if request.url.path.endswith(digest_of(LAYER).hex):
        return answer(200, LAYER, {"content-length": str(len(LAYER))})
    body = b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
    return answer(404, body + b"</Error>", {"content-type": "application/xml"})


async def test_a_store_without_amz_headers_is_still_read(tmp_path: Path) -> None:
    """Guard for the mend: a 200 with no ``x-amz-`` header is asked once whether the store
    answers a key no blob has as S3 does; it does, and the object fills the blob."""
    blobs = DiskBlobStore.open(tmp_path / "cache", MAX_SIZE, write_buffer=0)
    tier, http = open_tier(blobs, s3_without_request_id)
    async with http:
        download = await tier.download(digest_of(LAYER))
        assert download is not None and download.chunks is not None
        body = b"".join([chunk async for chunk in download.chunks])
        await download.close()
        assert await tier.download(digest_of(b"another blob")) is None  # a miss: one probe
    assert body == LAYER
    assert (tier.reachable, tier.counts.errors, tier.counts.misses) == (True, 0, 1)


# --- 2. an object that does not verify counted a hit as well -------------------------------


class WrongObject(Upstream):
    """The bucket's object under the blob's key is the blob's length of other bytes."""

    def bucket(self, request: httpx.Request) -> httpx.Response:
        self.bucket_seen.append(f"{request.method} {request.url.path}")
        if request.method == "GET" and request.url.path.endswith(BLOB_HEX):
            headers = {"x-amz-request-id": "18EE17D3BF0E9510", "Content-Length": str(len(BLOB))}
            return answer(200, bytes(len(BLOB)), headers)
        return super().bucket(request)


BLOB_HEX = digest_of(BLOB).hex


async def test_an_object_that_does_not_verify_is_corrupt_not_a_hit(tmp_path: Path) -> None:
    """``hits`` are fills from the bucket; one that did not verify served nothing whole (its
    client was cut) and counted both, so hits - corrupt was no count of anything, and a bucket
    of bad objects showed as many hits as misses it cost."""
    async with stack(tmp_path, settings=SHARED, upstream=WrongObject()) as mirror:
        await mirror.get(blob_path())  # cut: the object is not the blob
        again = await mirror.get(blob_path())  # from the upstream
        health = json.loads((await mirror.get("/health")).body)["shared"]
        seen = await mirror.scrape()
    assert (again.status, again.body == BLOB) == (200, True)
    assert (health["hits"], health["corrupt"]) == (0, 1)
    assert seen["docxy_shared_blobs_total{result=hit}"] == 0
    assert seen["docxy_shared_blobs_total{result=corrupt}"] == 1


# --- 3. the last error stood for ever, with no time ------------------------------------------


class FailsOnce(Upstream):
    """The bucket holds the blob; its first answer is a 503 (a store restarting)."""

    def __init__(self) -> None:
        super().__init__(in_bucket=True)
        self.failed = False

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if not self.failed:
            self.failed = True
            self.bucket_seen.append(f"{request.method} {request.url.path}")
            body = b"<Error><Code>ServiceUnavailable</Code><Message>restarting</Message></Error>"
            return answer(503, body, {"x-amz-request-id": "18EE17D3BF0E9510"})
        return super().bucket(request)


async def test_the_last_error_says_when_once_the_store_answers_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed "last error: GET answered 503 ..." beside a green "reachable", with no
    time, as long as the mirror ran: an operator could not tell a store failing now from one
    that failed once at start-up. As the upstream's last error does, it says when, and the
    page when the store last answered."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the next miss asks the store again
    async with stack(tmp_path, settings=SHARED, upstream=FailsOnce()) as mirror:
        first = await mirror.get(blob_path())  # the store fails: from the upstream
        tier = mirror_state(mirror.app).running.blobs.shared
        assert tier is not None and tier.reachable is False
        assert await tier.download(digest_of(b"another blob")) is None  # answered: a miss
        assert tier.reachable is True
        _, admin = await mirror.admin_get("/status.json")
        _, page = await mirror.admin_get("/status")
    assert first.body == BLOB
    shared = json.loads(admin)["shared"]
    assert "503" in shared["last_error"]
    assert shared["last_error_at"] <= shared["last_ok"], shared  # when it was: before the answer
    assert "<dt>last error</dt><dd>20" in page and " ago): GET answered 503" in page
    assert "<dt>last answer</dt><dd>20" in page
