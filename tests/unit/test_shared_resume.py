"""A shared-store body that breaks off after its first bytes went out: the rest of the blob
comes from the upstream, as each upstream answers a ``Range`` (the real store and registry of
tests/e2e/test_shared_cut_e2e.py show the common case; these are the answers a registry there
cannot be made to give: a ``Range`` ignored, a ``206`` from elsewhere, a rest refused)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.cache.fill import Download, Handover
from docxy.core.digests import parse_digest
from docxy.http.state import mirror_state
from docxy.shared import tier
from docxy.shared.body import ObjectBody
from docxy.shared.objects import ObjectStoreError
from docxy.shared.tier import SharedTier
from tests.unit.test_observe_routes import (
    BLOB,
    BLOB_DIGEST,
    SHARED,
    Stack,
    Upstream,
    answer,
    no_such_key,
    stack,
)

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
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
        seen = await mirror.scrape()
        kept = cached(tmp_path)
    assert (first.status, first.body == BLOB) == (200, True)
    assert upstream.ranged == [f"bytes={CUT_AT}-"]
    assert [path.read_bytes() == BLOB for path in kept] == [True]
    assert (health["hits"], health["resumed"], health["corrupt"], health["errors"]) == (1, 1, 0, 1)
    assert seen["docxy_shared_blobs_total{result=resumed}"] == 1


class OneCutObject(CutBucket):
    """The blob's object breaks off; the store has no other."""

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and not request.url.path.endswith(BLOB_DIGEST[7:]):
            self.bucket_seen.append(f"GET {request.url.path}")
            return no_such_key(request)
        return super().bucket(request)


async def resumed_and_committed(mirror: Stack) -> SharedTier:
    """The blob pulled through `mirror` (its object breaks off, the upstream gives the rest),
    committed, and the upload queue drained; the shared tier."""
    shared = mirror_state(mirror.app).running.blobs.shared
    assert shared is not None
    assert (await mirror.get(blob_path())).status == 200
    await mirror.committed()
    await asyncio.wait_for(shared.uploads.drained(), 10)
    return shared


async def test_an_object_that_broke_off_is_replaced_once_the_store_answers_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that lost a chunk of the object breaks it at the same byte for every replica:
    the verified copy goes over it, whatever its length says, once the store answers again
    (the break rests the tier first)."""
    upstream = OneCutObject("honoured")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = await resumed_and_committed(mirror)
        assert not any(line.startswith("PUT ") for line in upstream.bucket_seen)  # resting
        monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)
        other = parse_digest("sha256:" + "0" * 64)
        assert await shared.download(other) is None  # a miss the store answers 404
        await asyncio.wait_for(shared.uploads.drained(), 10)
        health = json.loads((await mirror.get("/health")).body)["shared"]
    puts = [line for line in upstream.bucket_seen if line.startswith("PUT ")]
    assert puts == [f"PUT /docxy-cache/docxy/blobs/sha256/{BLOB_DIGEST.removeprefix('sha256:')}"]
    assert not any(line.startswith("HEAD ") for line in upstream.bucket_seen)  # length unasked
    assert (health["resumed"], health["uploaded"]) == (1, 1)


class ReadOnlyKey(OneCutObject):
    """As :class:`OneCutObject`, and the replica's key may only read: every PUT is refused."""

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.bucket_seen.append(f"PUT {request.url.path}")
            denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return answer(403, denied)
        return super().bucket(request)


async def test_a_refused_repair_is_not_sent_again_at_every_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica with a read-only key (it still reads from the bucket): the repair's upload
    is refused once, and then forgotten; it was sent again, whole, after every later answer
    of the store, refused each time, for as long as the mirror ran."""
    upstream = ReadOnlyKey("honoured")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = await resumed_and_committed(mirror)
        monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)
        for n in range(4):  # misses the store answers 404
            assert await shared.download(parse_digest(f"sha256:{n:064x}")) is None
            await asyncio.wait_for(shared.uploads.drained(), 10)
    puts = [line for line in upstream.bucket_seen if line.startswith("PUT ")]
    assert len(puts) == 1
    assert (shared.counts.upload_failed, shared.counts.uploaded) == (1, 0)


async def test_a_repair_whose_cached_file_rotted_is_not_sent_again_at_every_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repaired blob's cached file no longer matches its digest: there is no good copy
    here to repair the object with. The upload is cut once and the repair forgotten; it was
    read, hashed and sent again (cut before its last byte) after every later answer."""
    upstream = OneCutObject("honoured")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = await resumed_and_committed(mirror)
        [path] = cached(tmp_path)
        rotted = bytearray(path.read_bytes())
        rotted[10] ^= 0xFF
        path.write_bytes(bytes(rotted))
        monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)
        for n in range(4):  # misses the store answers 404
            assert await shared.download(parse_digest(f"sha256:{n:064x}")) is None
            await asyncio.wait_for(shared.uploads.drained(), 10)
    assert (shared.counts.upload_failed, shared.counts.uploaded) == (1, 0)


async def test_a_repair_kept_out_by_a_full_queue_is_not_counted_as_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair stays pending while the upload queue is full, and goes at a later answer: it
    is not lost, so not ``dropped`` (each answer that found the queue full counted one)."""
    upstream = OneCutObject("honoured")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        shared = await resumed_and_committed(mirror)
        monkeypatch.setattr(tier, "RETRY_AFTER", 0.0)
        monkeypatch.setattr(shared.uploads, "max_waiting", 0)  # full for these answers
        for n in range(3):
            assert await shared.download(parse_digest(f"sha256:{n:064x}")) is None
        assert (shared.uploads.dropped, shared.counts.uploaded) == (0, 0)
        monkeypatch.setattr(shared.uploads, "max_waiting", 1)
        assert await shared.download(parse_digest(f"sha256:{3:064x}")) is None
        await asyncio.wait_for(shared.uploads.drained(), 10)
    assert (shared.uploads.dropped, shared.counts.uploaded) == (0, 1)


async def test_a_rest_that_breaks_off_in_its_turn_goes_on_from_there(tmp_path: Path) -> None:
    """The upstream's rest breaks off too, after new bytes: the fill goes on from there with
    another Range GET, as a fill from the upstream does, and the blob is whole and kept."""
    upstream = CutBucket("cut")
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.get(blob_path())
        await mirror.committed()
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
        await mirror.committed()
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
        await mirror.committed()
        seen = await mirror.scrape()
    rest = len(BLOB) - CUT_AT
    assert (first.status, first.body == BLOB) == (200, True)
    assert seen["docxy_sent_bytes_total{source=shared}"] == CUT_AT
    assert seen["docxy_sent_bytes_total{source=upstream}"] == rest
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(lines) == 1 and f" cache=shared upstream_bytes={rest} " in lines[0], lines


class HeldBreak(httpx.AsyncByteStream):
    """The object's first ``CUT_AT`` bytes, then a break once ``release`` is set."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BLOB[:CUT_AT]
        await self.release.wait()
        raise httpx.ReadError("connection reset by peer")


class HeldBucket(CutBucket):
    """As ``honoured``, the object's break held until ``release``: a second client joins."""

    def __init__(self) -> None:
        super().__init__("honoured")
        self.release = asyncio.Event()

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=HeldBreak(self.release))
        return super().bucket(request)


async def test_a_client_joining_a_resumed_fill_is_the_caches_and_the_rest_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two clients on one fill from the bucket, whose body breaks off and is finished from the
    upstream: the upstream sent the rest once, for the fill the first client started, and it
    is counted once, under that client (``cache=shared upstream_bytes=``). The client that
    joined the fill is ``cache=joined`` and its bytes the cache's, as a client joining a fill
    from the upstream is: it made no download of its own (counting its rest as the
    upstream's too would count the rest twice, as a joiner's bytes once were)."""
    upstream = HeldBucket()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        answers = await mirror.two_on_one_fill(upstream.release)
        seen = await mirror.scrape()
    assert [(a.status, a.body == BLOB) for a in answers] == [(200, True), (200, True)]
    rest = len(BLOB) - CUT_AT
    assert upstream.ranged == [f"bytes={CUT_AT}-"]  # one rest, for the fill
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "docxy.access")
    said = [line.split(" cache=")[1].split(" upstream=")[0] for line in lines]
    assert said == ["joined", f"shared upstream_bytes={rest}"], lines
    assert seen["docxy_sent_bytes_total{source=upstream}"] == rest
    assert seen["docxy_sent_bytes_total{source=shared}"] == CUT_AT
    assert seen["docxy_sent_bytes_total{source=cache}"] == len(BLOB)
    assert seen["docxy_cache_requests_total{outcome=joined,route=blob}"] == 1


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
        await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
        second = await mirror.get(blob_path())
        await mirror.committed()
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


# --- the hand-over itself (docxy.shared.body.ObjectBody, a Resuming allowed once) ----------


class Rest:
    """The upstream's rests, as ``docxy.pull.blobs`` gives them: each ``Download`` of
    ``chunks`` (then ``httpx.ReadError`` when ``breaks``), its closes counted."""

    def __init__(self, chunks: list[bytes], breaks: bool) -> None:
        self.chunks, self.breaks = chunks, breaks
        self.asked: list[int] = []
        self.closed = 0

    async def __call__(self, offset: int, size: int | None) -> Download:
        self.asked.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                yield chunk
            if self.breaks:
                raise httpx.ReadError("reset again")

        async def close() -> None:
            self.closed += 1

        left = None if size is None else size - offset  # a Download's size: what is left
        return Download(left, chunks(), close, broke_off=(httpx.TransportError,))


def object_body(rest: Rest | None, told: list[ObjectStoreError]) -> ObjectBody:
    data = BLOB[:CUT_AT]
    response = httpx.Response(200, stream=BreaksOff(data))
    body = response.aiter_bytes()
    return ObjectBody(
        parse_digest(BLOB_DIGEST), len(BLOB), response, b"", body, rest, told.append, Handover()
    )


async def test_the_store_breaking_off_hands_over_once_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="docxy.shared.body")
    rest, told = Rest([BLOB[CUT_AT:]], breaks=False), list[ObjectStoreError]()
    body = object_body(rest, told)
    got = b"".join([chunk async for chunk in body.chunks()])
    assert got == BLOB and rest.asked == [CUT_AT] and body.handover.at == CUT_AT
    assert len(told) == 1 and "connection reset by peer" in str(told[0])
    assert body.finished() and rest.closed == 1  # closed once read, not left to the fill's end
    said = [r.getMessage() for r in caplog.records if "broke off" in r.getMessage()]
    assert said == [
        f"blob {BLOB_DIGEST}: the shared store's body broke off after {CUT_AT} bytes; "
        "the rest from the upstream"
    ]
    await body.close()
    assert rest.closed == 1


async def test_a_rest_that_breaks_off_is_the_fills_to_go_on_from() -> None:
    """The hand-over is allowed once: the rest's own break reaches the fill as it is (its
    Resuming goes on from there, counted among its resumes), not as this one's give-up, and
    the broken rest is closed at once (its fill permit given back before the next is asked)."""
    rest, told = Rest([BLOB[CUT_AT : CUT_AT + 10]], breaks=True), list[ObjectStoreError]()
    body = object_body(rest, told)
    got = b""
    with pytest.raises(httpx.ReadError):
        async for chunk in body.chunks():
            got += chunk
    assert got == BLOB[: CUT_AT + 10] and rest.asked == [CUT_AT] and rest.closed == 1
    assert len(told) == 1 and not body.finished()


async def test_a_body_left_during_its_rest_closes_the_rest() -> None:
    rest = Rest([BLOB[CUT_AT : CUT_AT + 10], BLOB[CUT_AT + 10 :]], breaks=False)
    told = list[ObjectStoreError]()
    body = object_body(rest, told)
    chunks = body.chunks()
    assert await anext(chunks) == BLOB[:CUT_AT]
    assert await anext(chunks) == BLOB[CUT_AT : CUT_AT + 10]
    await body.close()  # the fill went away with the rest half read
    assert rest.closed == 1 and not body.finished()


async def test_without_a_rest_the_break_is_raised_and_told() -> None:
    told: list[ObjectStoreError] = []
    body = object_body(None, told)
    with pytest.raises(httpx.ReadError):
        async for _ in body.chunks():
            pass
    assert len(told) == 1 and body.handover.at is None
