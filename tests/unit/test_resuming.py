"""Resuming (docxy.cache.resuming): going on from where a download broke off, as a fill's
download and a given-up fill's follower both do: up to the limit, each time only after new
bytes, every rest it fetched closed, and a clear BrokeOff when it may not go on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

import pytest

from docxy.cache.errors import FetchFailed, FillAborted
from docxy.cache.fill import Download
from docxy.cache.resuming import RESUMES, BrokeOff, Resuming

BLOB = bytes(range(256)) * 40  # 10240 bytes


class Cut(Exception):
    """What a cut upstream raises (a download's ``broke_off``)."""


class Source:
    """Rests of BLOB from any offset, each breaking off after ``every`` bytes (None: never);
    records the offsets asked for and the rests closed."""

    def __init__(self, every: int | None, error: type[Exception] = Cut) -> None:
        self.every, self.error = every, error
        self.asked: list[int] = []
        self.closed: list[int] = []

    def download(self, offset: int) -> Download:
        async def chunks() -> AsyncIterator[bytes]:
            end = len(BLOB) if self.every is None else min(offset + self.every, len(BLOB))
            for start in range(offset, end, 1000):
                yield BLOB[start : min(start + 1000, end)]
            if end < len(BLOB):
                raise self.error("connection reset")

        async def close() -> None:
            self.closed.append(offset)

        return Download(len(BLOB) - offset, chunks(), close, broke_off=(Cut,))

    async def fetch(self, offset: int) -> Download:
        self.asked.append(offset)
        return self.download(offset)


def resuming(source: Source, at: int = 0) -> tuple[Resuming, list[tuple[int, int]]]:
    said: list[tuple[int, int]] = []  # (offset, resume number) of each went_on
    return Resuming(source.fetch, at, lambda exc, at, n: said.append((at, n))), said


async def read(resumed: Resuming, first: Download | None = None) -> bytes:
    data = b""
    async with aclosing(resumed.chunks(first)) as chunks:
        async for chunk in chunks:
            data += chunk
    return data


async def test_a_rest_that_breaks_off_goes_on_from_where_it_broke() -> None:
    source = Source(every=4000)
    resumed, said = resuming(source, at=1000)
    assert await read(resumed) == BLOB[1000:]
    assert source.asked == [1000, 5000, 9000]  # 4000 + 4000 + the last 1240, uncut
    assert said == [(5000, 1), (9000, 2)] and resumed.resumes == 2
    assert source.closed == source.asked and resumed.at == len(BLOB)


async def test_it_gives_up_after_the_limit_with_what_it_had() -> None:
    source = Source(every=1000)
    resumed, said = resuming(source)
    with pytest.raises(BrokeOff) as raised:
        await read(resumed)
    assert source.asked == [0, 1000, 2000, 3000] and len(said) == RESUMES
    assert raised.value.at == 4000 and raised.value.resumes == RESUMES
    assert str(raised.value) == "Cut: connection reset (3 resumes, the last gave 1000 bytes)"
    assert isinstance(raised.value, FillAborted) and isinstance(raised.value.cause, Cut)
    assert source.closed == source.asked


async def test_a_break_before_any_new_byte_is_the_end() -> None:
    """The first download breaks off before its first byte: nothing to go on from. A rest
    that gives nothing new after a resume ends it too, however few resumes came before."""
    source = Source(every=0)
    resumed, said = resuming(source, at=500)
    with pytest.raises(BrokeOff, match=r"^Cut: connection reset$") as raised:
        await read(resumed)
    assert source.asked == [500] and said == [] and raised.value.gave == 0

    class Stuck(Source):
        def download(self, offset: int) -> Download:
            self.every = 2000 if offset == 0 else 0  # the first gives 2000, the rest nothing
            return super().download(offset)

    stuck = Stuck(every=None)
    resumed, said = resuming(stuck)
    with pytest.raises(BrokeOff, match=r"\(1 resume, the last gave 0 bytes\)$"):
        await read(resumed)
    assert stuck.asked == [0, 2000] and said == [(2000, 1)]


async def test_a_first_download_is_read_first_and_left_to_its_owner_to_close() -> None:
    source = Source(every=4000)
    first = source.download(0)
    resumed, said = resuming(source)
    assert await read(resumed, first) == BLOB
    assert source.asked == [4000, 8000] and said == [(4000, 1), (8000, 2)]
    assert source.closed == [4000, 8000]  # not 0: the first one is its owner's


async def test_it_goes_on_only_while_someone_wants_the_bytes() -> None:
    source = Source(every=3000)
    wanted = [True]
    resumed = Resuming(source.fetch, 0, lambda *_: None, may_go_on=lambda: wanted[0])
    chunks = resumed.chunks()
    assert await anext(chunks) == BLOB[:1000]
    wanted[0] = False
    with pytest.raises(BrokeOff):
        while True:
            await anext(chunks)
    assert source.asked == [0] and source.closed == [0]


async def test_other_errors_pass_unchanged_and_a_consumer_leaving_closes_the_rest() -> None:
    source = Source(every=3000, error=ValueError)  # not a break: not resumed
    resumed, _ = resuming(source)
    with pytest.raises(ValueError):
        await read(resumed)
    assert source.asked == [0] and source.closed == [0]

    async def refused(offset: int) -> Download:
        raise FetchFailed("the upstream answered 503")

    with pytest.raises(FetchFailed):
        await read(Resuming(refused, 0, lambda *_: None))

    leaving = Source(every=None)
    resumed, _ = resuming(leaving, at=2000)
    async with aclosing(resumed.chunks()) as chunks:
        assert await anext(chunks) == BLOB[2000:3000]
    assert leaving.closed == [2000]


def test_each_break_is_counted_against_the_limit_only_after_progress() -> None:
    """``broke`` alone, as the fill uses it for a pumped body before any rest."""
    resumed = Resuming(Source(None).fetch, 0, lambda *_: None, limit=1)
    resumed.at = 10
    resumed.broke(Cut("cut"), 0)  # 10 new bytes: go on
    assert resumed.resumes == 1
    resumed.at = 20
    with pytest.raises(BrokeOff, match=r"\(1 resume, the last gave 10 bytes\)"):
        resumed.broke(Cut("cut"), 10)  # the limit


async def test_a_download_that_broke_off_for_good_is_told_its_source() -> None:
    """The download being read when it may not go on is told (its ``gave_up``: its owner
    counts it against the upstream), once, whether it was the first or a rest; a first
    download is told too when the break is handed to ``broke`` by hand (a pumped body)."""
    told: list[tuple[int, BrokeOff]] = []

    class Telling(Source):
        def download(self, offset: int) -> Download:
            kept = super().download(offset)
            return replace(kept, gave_up=lambda error: told.append((offset, error)))

    source = Telling(every=1000)
    resumed, _ = resuming(source)
    with pytest.raises(BrokeOff) as raised:
        await read(resumed, source.download(0))
    assert told == [(3000, raised.value)]  # the last rest, after three resumes

    told.clear()
    first = source.download(0)
    pumped = Resuming(source.fetch, 0, lambda *_: None)
    with pytest.raises(BrokeOff) as raised:
        pumped.broke(Cut("cut"), 0, first)  # nothing new: the end
    assert told == [(0, raised.value)]


async def test_a_break_nobody_wanted_the_bytes_of_is_told_no_source() -> None:
    """A download stopped because no one wants its bytes any more (the fill was aborted, and
    the break is the echo of that) says nothing of the upstream: its source is not told."""
    told: list[BrokeOff] = []
    source = Source(every=3000)
    first = replace(source.download(0), gave_up=told.append)
    resumed = Resuming(source.fetch, 0, lambda *_: None, may_go_on=lambda: False)
    with pytest.raises(BrokeOff):
        await read(resumed, first)
    assert told == []
