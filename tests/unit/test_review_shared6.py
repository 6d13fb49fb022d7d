"""Review of the shared tier's hand-over to the upstream (round shared6): a store body that
breaks off after its last byte, an object longer than its blob behind an upstream whose 416
says no total, and whose fault a break is when the object turns out not to be the blob."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from docxy.cache.errors import FetchFailed
from docxy.cache.fill import Download, Handover
from docxy.core.digests import parse_digest
from docxy.shared.body import ObjectBody
from docxy.shared.objects import ObjectStoreError
from tests.unit.test_observe_routes import BLOB, BLOB_DIGEST, SHARED, stack
from tests.unit.test_review_shared4b import OBJECT_KEY_END, LongerObject, WholeThenBroken
from tests.unit.test_shared_resume import BreaksOff, CutBucket, cached


class NoRestAtTheEnd:
    """The upstream's rest as ``docxy.pull.blobs`` gives it for a ``Range`` from the blob's
    end: a 416 of the very length claimed blames nothing, and is a failed fetch."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def __call__(self, offset: int, size: int | None) -> Download:
        self.asked.append(offset)
        raise FetchFailed(f"registry.test answered 416 to bytes={offset}-")


async def test_a_body_that_breaks_off_after_its_last_byte_is_whole() -> None:
    """Every byte of the object came, then its connection broke instead of ending: nothing is
    missing, so no rest is asked (a Range from the blob's end is a 416) and the fill goes on
    to its verify; the rest's failure cut a client that had every byte."""
    rest, told = NoRestAtTheEnd(), list[ObjectStoreError]()
    response = httpx.Response(200, stream=BreaksOff(BLOB))
    body = ObjectBody(
        parse_digest(BLOB_DIGEST),
        len(BLOB),
        response,
        b"",
        response.aiter_bytes(),
        rest,
        told.append,
        Handover(),
    )
    got = b"".join([chunk async for chunk in body.chunks()])
    await body.close()
    assert (got == BLOB, rest.asked, body.handover.at) == (True, [], None)
    assert not body.finished()  # nothing was finished from the upstream
    assert len(told) == 1  # the break itself, not found the object's: the store's, at the close


async def test_a_whole_object_that_breaks_off_at_its_end_is_served_and_kept(
    tmp_path: Path,
) -> None:
    upstream = WholeThenBroken()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.pulled()
        health = await mirror.shared_health()
        kept = cached(tmp_path)
    assert (first.status, first.body == BLOB) == (200, True)
    assert upstream.ranged == []
    assert [path.read_bytes() == BLOB for path in kept] == [True]
    assert (health["hits"], health["corrupt"], health["resumed"]) == (1, 0, 0)


def blob_head() -> httpx.Response:
    """A registry's answer to the HEAD of the blob: its length and digest, no body."""
    headers = {"Content-Length": str(len(BLOB)), "Docker-Content-Digest": BLOB_DIGEST}
    return httpx.Response(200, headers=headers)


class Headed(LongerObject):
    """As :class:`LongerObject` (a 416 past the blob's end, its Content-Range as ``said``),
    the HEADs asking the blob's own length counted (``Accept-Encoding: identity``; not the
    one that confirms the repository holds the blob)."""

    def __init__(self, said: str | None) -> None:
        super().__init__(said)
        self.heads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            self.heads += request.headers.get("accept-encoding") == "identity"
            return blob_head()
        return super().__call__(request)


async def test_an_object_longer_than_its_blob_behind_a_416_of_no_total_is_marked_bad(
    tmp_path: Path,
) -> None:
    """The 416 says no total; the upstream's HEAD of the blob says its length, which ends it
    before the byte asked and is not the length claimed: the object is not the blob, marked
    bad at the first miss (the second is the upstream's whole, not cut again). The store's
    break was the bad object's doing, not the store's trouble: no rest taken for it."""
    upstream = Headed(None)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        second = await mirror.pulled()
        health = await mirror.shared_health()
    gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert upstream.ranged == [f"bytes={len(BLOB) + 50}-"]
    assert (second.status, second.body == BLOB) == (200, True)
    assert len(gets) == 1  # marked bad: not read again
    assert (health["corrupt"], health["hits"], upstream.heads) == (1, 0, 1)


class PassingFault(CutBucket):
    """A right object breaks off at ``CUT_AT``; the upstream answers its rest 416 with no
    Content-Range (a passing fault of its own), while its HEAD says the blob's length."""

    def __init__(self) -> None:
        super().__init__("honoured")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.method == "GET" and "/blobs/" in request.url.path and wanted:
            self.ranged.append(wanted)
            return httpx.Response(416, content=b'{"errors":[]}')
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            return blob_head()
        return super().__call__(request)


async def test_a_416_of_no_total_for_a_right_object_blames_nothing(tmp_path: Path) -> None:
    """The upstream's HEAD gives the blob a byte at the offset asked: nothing shown against
    the object (1fff8b1's case), which is not marked bad."""
    upstream = PassingFault()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        health = await mirror.shared_health()
    assert health["corrupt"] == 0


@pytest.mark.parametrize("said", [f"bytes */{len(BLOB)}", None])
async def test_a_break_the_object_made_is_not_the_stores_trouble(
    tmp_path: Path, said: str | None
) -> None:
    """The store's body broke off, and its rest showed the object is not the blob: the object
    is corrupt (counted so, marked bad), and the store served it as stored. It was counted a
    store error first, and the tier rested (``unreachable``) for a fault of the object's."""
    upstream = Headed(said)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        await mirror.pulled()
        health = await mirror.shared_health()
    assert (health["corrupt"], health["errors"]) == (1, 0)
    assert (health["reachable"], health["state"]) == (True, "reachable")
    assert upstream.heads == (0 if said else 1)  # a 416's total is taken without a HEAD


class WrongWholeThenBroken(WholeThenBroken):
    """The object has the blob's length but not its bytes, and breaks off after its last."""

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(OBJECT_KEY_END):
            self.bucket_seen.append(f"GET {request.url.path}")
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=BreaksOff(bytes(len(BLOB))))
        return super().bucket(request)


async def test_a_whole_object_that_does_not_verify_is_corrupt_not_the_stores_trouble(
    tmp_path: Path,
) -> None:
    upstream = WrongWholeThenBroken()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.pulled()
        health = await mirror.shared_health()
    assert first.body != BLOB
    assert (health["corrupt"], health["errors"], health["state"]) == (1, 0, "reachable")
