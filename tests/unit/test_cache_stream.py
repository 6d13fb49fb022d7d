"""tee(): the first client of a miss gets upstream bytes while they are cached and verified."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docxy.cache import fill as fill_module
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import DigestMismatch, SizeMismatch
from docxy.cache.fill import BlobWriter
from docxy.cache.stream import tee
from docxy.core.digests import digest_of

DATA = bytes(range(256)) * 40
CHUNK = 1000


async def upstream(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


async def writer_for(store: DiskBlobStore) -> BlobWriter:
    writer = await store.fetch_or_join(digest_of(DATA))
    assert isinstance(writer, BlobWriter)
    return writer


@pytest.fixture
def store(tmp_path: Path) -> DiskBlobStore:
    return DiskBlobStore.open(tmp_path, 1 << 20, write_buffer=0)


async def test_good_blob_is_sent_and_cached(store: DiskBlobStore) -> None:
    sent = [c async for c in tee(await writer_for(store), upstream(DATA), len(DATA))]
    assert b"".join(sent) == DATA
    assert store.lookup(digest_of(DATA)) is not None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (DATA[:-1] + b"!", DigestMismatch),
        (DATA[: len(DATA) // 2], SizeMismatch),
        (DATA + b"extra", SizeMismatch),
    ],
)
async def test_bad_blob_ends_in_an_error_before_the_last_chunk(
    store: DiskBlobStore, body: bytes, error: type[Exception]
) -> None:
    sent: list[bytes] = []
    with pytest.raises(error):
        async for chunk in tee(await writer_for(store), upstream(body), len(DATA)):
            sent.append(chunk)
    assert len(b"".join(sent)) < min(len(body), len(DATA))
    assert store.lookup(digest_of(DATA)) is None
    assert os.listdir(store.tmp_dir) == []


async def test_disk_full_keeps_the_client_stream(
    store: DiskBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_all(fd: int, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fill_module, "write_all", write_all)
    sent = [c async for c in tee(await writer_for(store), upstream(DATA), len(DATA))]
    assert b"".join(sent) == DATA
    assert store.lookup(digest_of(DATA)) is None
    assert os.listdir(store.tmp_dir) == []


async def test_client_going_away_aborts_the_fill(store: DiskBlobStore) -> None:
    stream = tee(await writer_for(store), upstream(DATA), len(DATA))
    assert await anext(stream) == DATA[:CHUNK]
    await stream.aclose()  # what Quart does when the client disconnects
    assert os.listdir(store.tmp_dir) == []
    assert isinstance(await store.fetch_or_join(digest_of(DATA)), BlobWriter)
