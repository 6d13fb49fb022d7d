"""An object in the bucket that is not its blob (the same length, wrong bytes): the fill from
it fails verification with one WARNING, which says what the tier made of it (the object marked
bad), and the next miss fills from the upstream (the real store of
tests/e2e/test_shared_e2e.py shows the upload that replaces the object)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from tests.unit.test_observe_routes import BLOB, SHARED, Upstream, answer, blob_path, stack


class WrongObject(Upstream):
    def __init__(self) -> None:
        super().__init__(in_bucket=True)

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.bucket_seen.append(f"GET {request.url.path}")
            return answer(200, bytes(len(BLOB)), {"Content-Length": str(len(BLOB))})
        return super().bucket(request)


async def test_an_object_that_does_not_verify_is_one_warning_and_marked_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = WrongObject()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO)
        first = await mirror.get(blob_path())
        second = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
    assert first.body != BLOB and len(first.body) < len(BLOB)  # cut, never served whole
    assert (second.status, second.body == BLOB) == (200, True)
    bucket_gets = [line for line in upstream.bucket_seen if line.startswith("GET ")]
    assert len(bucket_gets) == 1  # the second miss went to the upstream
    assert (health["hits"], health["corrupt"]) == (0, 1)  # a corrupt object is no hit
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "fill failed (from shared): digest mismatch" in warnings[0], warnings
    assert "marked bad" in warnings[0], warnings


class HugeObject(Upstream):
    """The object's length says more than the whole local cache (a bucket writer's doing, or a
    store that lost the length)."""

    def __init__(self) -> None:
        super().__init__(in_bucket=True)

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.bucket_seen.append(f"GET {request.url.path}")
            return answer(200, BLOB, {"Content-Length": str(10**15)})
        return super().bucket(request)


async def test_an_object_longer_than_the_whole_cache_is_not_filled_from_and_the_blob_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fill from it would find no room before its first byte: no mismatch, and the blob was
    then refused room until a restart, passed through on every pull, never cached."""
    upstream = HugeObject()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO)
        for _ in range(2):
            pulled = await mirror.get(blob_path())
            assert (pulled.status, pulled.body == BLOB) == (200, True)
            await mirror.committed()
        health = json.loads((await mirror.get("/health")).body)["shared"]
    assert [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert len([line for line in upstream.bucket_seen if line.startswith("GET ")]) == 1
    assert health["corrupt"] == 1  # once the blob kept proved of another length
    said = [r.getMessage() for r in caplog.records if "more than the whole cache" in r.getMessage()]
    assert len(said) == 1 and "fetched upstream" in said[0], said
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(bad) == 1 and f"{10**15} bytes, the blob has {len(BLOB)}" in bad[0], bad
    assert "marked bad" in bad[0], bad


class EmptyObject(Upstream):
    """The object is empty (an upload of a file gone empty, any bucket writer)."""

    def __init__(self) -> None:
        super().__init__(in_bucket=True)

    def bucket(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.bucket_seen.append(f"GET {request.url.path}")
            return answer(200, b"", {"Content-Length": "0"})
        return super().bucket(request)


async def test_an_empty_object_is_never_a_complete_answer_for_its_blob(tmp_path: Path) -> None:
    """The last byte waits for the verification; an empty object has none: the headers alone
    (200, Content-Length 0, the blob's digest) were a complete, wrong answer. Now its fill
    fails verification before them, and the client gets the blob from the upstream."""
    upstream = EmptyObject()
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        first = await mirror.get(blob_path())
        health = json.loads((await mirror.get("/health")).body)["shared"]
    assert (first.status, first.body == BLOB) == (200, True)
    assert health["corrupt"] == 1
