"""``Range: bytes=...`` against a known size: good, odd and hostile headers."""

from __future__ import annotations

import pytest

from docxy.core.errors import RangeNotSatisfiable
from docxy.core.ranges import content_range, parse_content_range, parse_range

HUGE = "9" * 5000  # past Python's int-from-text digit limit (4300)


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:30] + f"...({len(text)} chars)"


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("", None),
        ("bytes=0-", (0, 100)),
        ("bytes=10-19", (10, 20)),
        ("bytes = 10 - 19", (10, 20)),
        ("bytes=10-1000", (10, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-1000", (0, 100)),
        ("bytes=20-10", None),  # invalid: ignored, the whole body
        ("bytes=0-1,5-6", None),  # several ranges: ignored
        ("items=0-1", None),
        ("bytes=-", None),
        (f"bytes=0-{HUGE}", (0, 100)),
        (f"bytes=10-{'0' * 40}99", (10, 100)),
        (f"bytes=-{HUGE}", (0, 100)),
        (f"bytes={'0' * 5000}5-", (5, 100)),
        (f"bytes={HUGE}-1", None),  # last < first: ignored
    ],
    ids=short,
)
def test_parse_range(header: str | None, span: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == span


@pytest.mark.parametrize(
    "header",
    ["bytes=100-", "bytes=100-200", "bytes=-0", f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}"],
    ids=short,
)
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_content_range() -> None:
    assert content_range(10, 20, 100) == "bytes 10-19/100"


def test_suffix_range_of_an_empty_blob_is_the_whole_empty_body() -> None:
    """RFC 9110 §14.1.1: on a zero-length representation a suffix range is satisfiable, and
    there is no byte to name in a ``Content-Range``. It gave the span (0, 0), which the blob
    response sent as ``206`` with ``Content-Range: bytes 0--1/0``; now the whole (empty) body."""
    assert parse_range("bytes=-5", 0) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes 0-9/10", (0, 10, 10)),
        ("bytes 1048576-3145732/3145733", (1048576, 3145733, 3145733)),
        ("bytes 5-5/*", (5, 6, None)),
        (" bytes 2-3/4 ", (2, 4, 4)),
        (None, None),
        ("", None),
        ("bytes */10", None),  # a 416's: no range
        ("bytes 5-4/10", None),  # last before first
        ("bytes 0-10/10", None),  # past the size
        ("items 0-1/2", None),
        ("bytes 0-1/2, 4-5/6", None),
        ("bytes -1-2/3", None),
        (f"bytes 0-{HUGE}/{HUGE}", None),
    ],
)
def test_a_206s_content_range(header: str | None, span: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(header) == span
