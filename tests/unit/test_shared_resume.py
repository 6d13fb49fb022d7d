"""A shared-store body that breaks off after its first bytes went out: the rest of the blob
comes from the upstream, as each upstream answers a ``Range`` (the real store and registry of
tests/e2e/test_shared_cut_e2e.py show the common case; these are the answers a registry there
cannot be made to give: a ``Range`` ignored, a ``206`` from elsewhere, a rest refused)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.cache.fill import Handover
from docxy.shared import tier
from tests.unit.test_observe_routes import BLOB, BLOB_DIGEST, SHARED, Upstream, answer, stack

CUT_AT = 5000  # bytes of the object's body before it breaks off


class BreaksOff(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


class CutBucket(Upstream):
    """The bucket's object breaks off after ``CUT_AT`` bytes; the upstream answers a ranged
    blob GET as ``ranges`` says: ``honoured`` (206 from the start asked), ``ignored`` (the
    whole blob, 200), ``elsewhere`` (206 from byte 0), ``refused`` (503)."""

    def __init__(self, ranges: str) -> None:
        super().__init__(in_bucket=True)
        self.ranges = ranges
        self.ranged: list[str] = []  # the Range of each upstream blob GET

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.bucket_seen.append(f"GET {request.url.path}")
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=BreaksOff(BLOB[:CUT_AT]))
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if request.method != "GET" or "/blobs/" not in request.url.path or wanted is None:
            return super().__call__(request)
        self.ranged.append(wanted)
        start = int(wanted.removeprefix("bytes=").removesuffix("-"))
        if self.ranges == "refused":
            return answer(503, b'{"errors": [{"code": "UNAVAILABLE", "message": "busy"}]}')
        if self.ranges == "ignored":
            return answer(200, BLOB, {"Content-Length": str(len(BLOB))})
        first = 0 if self.ranges == "elsewhere" else start
        span = {"Content-Range": f"bytes {first}-{len(BLOB) - 1}/{len(BLOB)}"}
        if self.ranges == "cut" and len(self.ranged) == 1:  # the rest breaks off in its turn
            headers = {"Content-Length": str(len(BLOB) - first), **span}
            return httpx.Response(206, headers=headers, stream=BreaksOff(BLOB[first:][:CUT_AT]))
        return answer(206, BLOB[first:], {"Content-Length": str(len(BLOB) - first), **span})


def cached(root: Path) -> list[Path]:
    return [path for path in (root / "cache" / "blobs").rglob("*") if path.is_file()]


def blob_path() -> str:
    return f"/v2/library/hello/blobs/{BLOB_DIGEST}"


@pytest.mark.parametrize("ranges", ["honoured", "ignored"])
async def test_the_rest_comes_from_the_upstream_and_the_blob_is_kept(
    tmp_path: Path, ranges: str
) -> None:
    upstream = CutBucket(ranges)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
        seen = await mirror.scrape()
        kept = cached(tmp_path)
    assert (first.status, first.body == BLOB) == (200, True)
    assert upstream.ranged == [f"bytes={CUT_AT}-"]
    assert [path.read_bytes() == BLOB for path in kept] == [True]
    assert (health["hits"], health["resumed"], health["corrupt"], health["errors"]) == (1, 1, 0, 1)
    assert seen["docxy_shared_blobs_total{result=resumed}"] == 1


async def test_a_rest_that_breaks_off_in_its_turn_goes_on_from_there(tmp_path: Path) -> None:
    """The upstream's rest breaks off too, after new bytes: the fill goes on from there with
    another Range GET, as a fill from the upstream does, and the blob is whole and kept."""
    upstream = CutBucket("cut")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
        kept = cached(tmp_path)
    assert (first.status, first.body == BLOB) == (200, True)
    assert upstream.ranged == [f"bytes={CUT_AT}-", f"bytes={2 * CUT_AT}-"]
    assert [path.read_bytes() == BLOB for path in kept] == [True]
    assert (health["resumed"], health["corrupt"]) == (1, 0)


@pytest.mark.parametrize("ranges", ["elsewhere", "refused"])
async def test_a_rest_the_upstream_does_not_give_cuts_the_clients_and_keeps_nothing(
    tmp_path: Path, ranges: str
) -> None:
    upstream = CutBucket(ranges)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
        seen = await mirror.scrape()
        files = cached(tmp_path)
    assert first.body != BLOB and len(first.body) < len(BLOB)  # never a whole-looking blob
    assert upstream.ranged == [f"bytes={CUT_AT}-"]
    assert files == []
    # The object is not blamed; nor is the fill counted as finished from the upstream.
    assert (health["hits"], health["resumed"], health["corrupt"], health["errors"]) == (1, 0, 0, 1)
    assert seen["docxy_shared_blobs_total{result=resumed}"] == 0


@pytest.mark.parametrize("ranges", ["honoured", "ignored"])
async def test_the_bytes_of_the_rest_are_counted_as_the_upstreams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ranges: str
) -> None:
    """The rest spent upstream quota: the metrics (and the status page's byte hit ratio) count
    it as upstream bytes, and the access log says how many of the answer's bytes it was."""
    async with stack(tmp_path, settings=SHARED, upstream=CutBucket(ranges)) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        first = await mirror.get(blob_path())
        seen = await mirror.scrape()
    rest = len(BLOB) - CUT_AT
    assert (first.status, first.body == BLOB) == (200, True)
    assert seen["docxy_sent_bytes_total{source=shared}"] == CUT_AT
    assert seen["docxy_sent_bytes_total{source=upstream}"] == rest
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(lines) == 1 and f" cache=shared upstream_bytes={rest} " in lines[0], lines


class BadRest(CutBucket):
    """A ``206`` from the right byte whose bytes are not the blob's: the whole fails its digest,
    though the bucket's part was good (on a second GET, the bucket sends the object whole)."""

    def __init__(self) -> None:
        super().__init__("honoured")
        self.bucket_gets = 0

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.bucket_gets += 1
            if self.bucket_gets > 1:
                self.bucket_seen.append(f"GET {request.url.path}")
                return answer(200, BLOB, {"Content-Length": str(len(BLOB))})
        return super().bucket(request)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("range") is None:
            return super().__call__(request)
        self.ranged.append(request.headers["range"])
        span = {"Content-Range": f"bytes {CUT_AT}-{len(BLOB) - 1}/{len(BLOB)}"}
        wrong = bytes(len(BLOB) - CUT_AT)
        return answer(206, wrong, {"Content-Length": str(len(wrong)), **span})


async def test_a_resumed_blob_that_does_not_verify_does_not_blame_the_object(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which part was bad cannot be told: one WARNING names both sources, and the object is
    not marked bad (the next miss reads it again: whole, it verifies, and is served). The
    upstream's rest did not finish the blob: not counted as ``resumed``."""
    monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)  # the body breaking off made the tier rest
    upstream = BadRest()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO)
        first = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
        second = await mirror.get(blob_path())
        kept = cached(tmp_path)
    assert first.body != BLOB and len(first.body) < len(BLOB)  # cut, never served whole
    assert (health["resumed"], health["corrupt"]) == (0, 0)
    assert (second.status, second.body == BLOB, upstream.bucket_gets) == (200, True, 2)
    assert [path.read_bytes() == BLOB for path in kept] == [True]
    failed = [r.getMessage() for r in caplog.records if "did not verify" in r.getMessage()]
    failed += [r.getMessage() for r in caplog.records if "fill failed" in r.getMessage()]
    assert len(failed) == 1, failed
    assert f"(from shared until byte {CUT_AT}, then upstream)" in failed[0], failed
    assert "digest mismatch" in failed[0] and "not marked bad" in failed[0], failed


@pytest.mark.parametrize(
    ("at", "sent", "upstream"),
    [(None, 12000, 0), (5000, 12000, 7000), (5000, 5000, 0), (5000, 3000, 0), (0, 12000, 12000)],
)
def test_the_handover_splits_what_a_client_got(at: int | None, sent: int, upstream: int) -> None:
    """A client of the fill gets the blob from its first byte: of what it got, the bytes past
    the handover are the upstream's (none when it left before, or nothing was handed over)."""
    assert Handover(at).upstream_part(sent) == upstream
    where = Handover(at).describe("shared")
    assert where == ("shared" if at is None else f"shared until byte {at}, then upstream")
