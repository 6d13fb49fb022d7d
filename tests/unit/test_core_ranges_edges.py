"""Edges of ``docxy.core.ranges`` that mutation testing found untested: which requests have
their ``Range`` honoured, whitespace around a ``Range``, and the digit bounds of a ``206``'s
``Content-Range``."""

from __future__ import annotations

import pytest

from docxy.core.ranges import parse_content_range, parse_range, range_asked

ETAG = '"sha256:abc"'


@pytest.mark.parametrize(
    ("method", "header", "if_range", "asked"),
    [
        ("GET", "bytes=0-9", None, "bytes=0-9"),
        ("GET", None, None, None),
        ("HEAD", "bytes=0-9", None, None),  # Range is defined for GET only
        ("GET", "bytes=0-9", ETAG, "bytes=0-9"),  # If-Range names this representation
        ("GET", "bytes=0-9", f"  {ETAG} ", "bytes=0-9"),  # ... with space around it
        ("GET", "bytes=0-9", '"sha256:other"', None),  # another one: the whole body
        ("GET", "bytes=0-9", "Tue, 01 Dec 2026 10:00:00 GMT", None),  # a date never matches
        ("HEAD", None, ETAG, None),
    ],
)
def test_range_asked(
    method: str, header: str | None, if_range: str | None, asked: str | None
) -> None:
    assert range_asked(method, header, if_range, ETAG) == asked


@pytest.mark.parametrize("header", [" bytes=0-9", "bytes=0-9 ", "\tbytes=0-9\t"])
def test_space_around_a_range_is_not_part_of_it(header: str) -> None:
    assert parse_range(header, 100) == (0, 10)


TWENTY = "9" * 20  # the longest number a Content-Range may hold (2**64 has 20 digits)


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (f"bytes 0-9/{TWENTY}", (0, 10, int(TWENTY))),
        (f"bytes 0-{TWENTY}/*", (0, int(TWENTY) + 1, None)),
        (f"bytes {TWENTY}-{TWENTY}/*", (int(TWENTY), int(TWENTY) + 1, None)),
        (f"bytes 0-9/1{'0' * 20}", None),  # 21 digits
        (f"bytes 0-1{'0' * 20}/*", None),
        (f"bytes 1{'0' * 20}-1{'0' * 20}/*", None),
        ("bytes0-9/10", None),  # no space after the unit
        ("bytes -9/10", None),  # a part left out is no number (not a ValueError either)
        ("bytes 0-/10", None),
        ("bytes 0-9/", None),
    ],
)
def test_content_range_bounds(header: str, span: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(header) == span
