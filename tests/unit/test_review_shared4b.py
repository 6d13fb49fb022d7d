"""Review of the shared tier's fills (round shared4; test_review_shared4 was taken by an earlier
round): an object of no stated length that ends cleanly short of its blob, an object longer
than its blob whose rest the upstream answers 416, and the HEAD of a known bad object asked
for as its GET is."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.core.digests import digest_of
from docxy.shared import tier as tier_module
from docxy.shared.objects import Bucket, ObjectStore
from tests.unit.test_observe_routes import (
    BLOB,
    BLOB_DIGEST,
    SHARED,
    Upstream,
    answer,
    stack,
)
from tests.unit.test_review_shared3 import BUCKET, REQUEST_ID
from tests.unit.test_shared_resume import BreaksOff, CutBucket

OBJECT_KEY_END = BLOB_DIGEST.removeprefix("sha256:")
CUT = len(BLOB) // 2


class ChunkedShortObject(Upstream):
    """The bucket's object is answered chunked (no Content-Length) and ends cleanly after the
    blob's first ``CUT`` bytes; the upstream honours a blob ``Range`` (206 to the blob's end)."""

    def __init__(self) -> None:
        super().__init__(in_bucket=True)
        self.ranged: list[str] = []

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(OBJECT_KEY_END):
            self.bucket_seen.append(f"GET {request.url.path}")

            async def body() -> AsyncIterator[bytes]:
                yield BLOB[:CUT]

            return httpx.Response(200, content=body())
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.url.host != "store.test" and "/blobs/" in request.url.path and wanted:
            self.seen.append(f"{request.method} {request.url.path}")
            self.ranged.append(wanted)
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            span = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
            return answer(206, BLOB[start:], span)
        return super().__call__(request)


async def test_a_chunked_object_that_ends_short_is_marked_bad_not_finished_upstream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's own answer ended cleanly short: the object is not the blob (as before
    29dd756), never 'the upstream broke off' made whole by a Range GET and counted a hit."""
    caplog.set_level(logging.INFO)
    upstream = ChunkedShortObject()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        after_first = await mirror.shared_health()
        second = await mirror.pulled()
    said = [record.getMessage() for record in caplog.records]
    assert upstream.ranged == []  # no rest of the store's object asked of the upstream
    assert (after_first["corrupt"], after_first["hits"]) == (1, 0)
    assert not [line for line in said if "the upstream broke off" in line]
    # marked bad: the next miss is the upstream's, whole, and not read from the object again
    assert (second.status, second.body == BLOB) == (200, True)
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert len(gets) == 1


class LongerObject(CutBucket):
    """The object claims 100 bytes more than the blob; its body is the blob and 50 bytes of
    junk, then it breaks off. The upstream answers a Range from past the blob's end with 416
    (``bytes */<the blob's length>``)."""

    def __init__(self, said: str | None = None) -> None:
        super().__init__("honoured")
        #: the 416's Content-Range (None: it has none)
        self.said = said

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(OBJECT_KEY_END):
            self.bucket_seen.append(f"GET {request.url.path}")
            headers = {"Content-Length": str(len(BLOB) + 100)}
            return httpx.Response(200, headers=headers, stream=BreaksOff(BLOB + b"j" * 50))
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.method == "GET" and "/blobs/" in request.url.path and wanted:
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            if start >= len(BLOB):
                self.ranged.append(wanted)
                error = b'{"errors":[{"code":"RANGE_INVALID","message":"out of range"}]}'
                headers = {} if self.said is None else {"Content-Range": self.said}
                return answer(416, error, headers)
        return super().__call__(request)


@pytest.mark.parametrize("said", [f"bytes */{len(BLOB)}"])
async def test_a_416_rest_of_an_object_longer_than_its_blob_marks_it_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str | None
) -> None:
    """The upstream's 416 says the blob ends before the object's claimed length (its total at
    or before the offset asked): a length denied (OtherLength), the object marked bad; the
    next miss is the upstream's whole, not a cut client at every miss."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)  # the store's break rests nothing
    upstream = LongerObject(said)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        second = await mirror.pulled()
        health = await mirror.shared_health()
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert upstream.ranged == [f"bytes={len(BLOB) + 50}-"]
    assert (health["corrupt"], health["hits"]) == (1, 0)
    assert len(gets) == 1  # marked bad: not read again
    assert (second.status, second.body == BLOB) == (200, True)


@pytest.mark.parametrize("said", [f"bytes */{len(BLOB) + 100}", f"bytes */{len(BLOB) + 51}"])
async def test_a_416_that_does_not_show_the_blob_shorter_does_not_blame_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str | None
) -> None:
    """A 416 whose total has a byte at the offset asked (the length the object claims, or any
    past that offset) shows nothing wrong with the object: the upstream contradicting itself
    or briefly wrong (the fill fails, nothing marked bad: a replica that uploads nothing would
    have kept a right object marked bad for good). A 416 that says no total is judged by the
    upstream's HEAD of the blob (test_review_shared6)."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)
    upstream = LongerObject(said)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        health = await mirror.shared_health()
    assert health["corrupt"] == 0


class WholeThenBroken(CutBucket):
    """The object is right (the blob's length, the blob's bytes), but its body breaks off after
    its last byte; the rest asked from the blob's end gets the upstream's 416 of that length."""

    def __init__(self) -> None:
        super().__init__("honoured")

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(OBJECT_KEY_END):
            self.bucket_seen.append(f"GET {request.url.path}")
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=BreaksOff(BLOB))
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.method == "GET" and "/blobs/" in request.url.path and wanted:
            if int(wanted.removeprefix("bytes=").removesuffix("-")) >= len(BLOB):
                self.ranged.append(wanted)
                said = {"Content-Range": f"bytes */{len(BLOB)}"}
                return answer(416, b'{"errors":[]}', said)
        return super().__call__(request)


async def test_a_416_of_the_claimed_length_at_its_end_does_not_blame_a_whole_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A right object whose body broke off after its last byte was asked for its rest at the
    blob's end; the upstream's 416 there confirms the length claimed. Taken for a length
    denied (total <= offset), the right object was counted corrupt and marked bad. No rest is
    asked now (every byte came: test_review_shared6), and nothing is blamed."""
    monkeypatch.setattr(tier_module, "RETRY_AFTER", 0.0)
    upstream = WholeThenBroken()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        health = await mirror.shared_health()
    assert upstream.ranged == []
    assert health["corrupt"] == 0


def compressing_proxy(request: httpx.Request) -> httpx.Response:
    """A store behind a proxy that may compress: an answer to a client that accepts gzip has
    its ETag weakened (as nginx's gzip does), one to ``identity`` keeps the store's."""
    etag = '"5d41402abc4b2a76b9719d911017c592"'
    if "gzip" in request.headers.get("accept-encoding", ""):
        etag = "W/" + etag
    headers = {**REQUEST_ID, "ETag": etag, "Content-Length": str(len(BLOB))}
    return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else BLOB)


async def test_a_heads_etag_is_the_one_its_get_stamped() -> None:
    """A bad object's stamp is its GET's ETag (asked Accept-Encoding: identity); the HEAD that
    asks whether it was replaced must ask the same, or a proxy's other ETag passes for a
    replacement (the bad object read again each minute)."""
    where = Bucket("http://127.0.79.1:9", BUCKET, "us-east-1", "docxy", "x")  # never dialled
    digest = digest_of(BLOB)
    async with httpx.AsyncClient(transport=httpx.MockTransport(compressing_proxy)) as http:
        store = ObjectStore(where, http)
        got = await store.open(digest)
        assert got is not None
        await got.aclose()
        headers = await store.head(digest)
    assert headers is not None
    assert headers["etag"] == got.headers["etag"]
