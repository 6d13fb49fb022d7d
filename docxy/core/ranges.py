"""Pure parsing of a single-range ``Range: bytes=...`` header against a known size."""

from __future__ import annotations

import re

from docxy.core.errors import RangeNotSatisfiable

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
#: Any position with more digits than this is past the end of any blob (2**64 has 20 digits).
_MAX_DIGITS = 20
_BEYOND = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    """A byte position from the header; a number too long to matter is just "past the end"
    (``int()`` refuses texts over 4300 digits, and huge ones are costly to convert)."""
    digits = digits.lstrip("0") or "0"
    return _BEYOND if len(digits) > _MAX_DIGITS else int(digits)


def range_asked(method: str, header: str | None, if_range: str | None, etag: str) -> str | None:
    """The ``Range`` a request's answer honours (RFC 9110 14.2, 13.1.5): none for a HEAD (Range
    is defined for GET only), and none when an ``If-Range`` is not the representation's strong
    ``etag`` (a date never matches: no ``Last-Modified`` is sent); then the whole is sent."""
    if method != "GET" or header is None:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    return header


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` with ``stop`` exclusive, or ``None`` to send the whole body.

    Forms: ``bytes=N-``, ``bytes=N-M``, ``bytes=-K`` (the last K bytes). A header the mirror
    does not understand (several ranges, other units) is ignored, as RFC 9110 allows; a range
    that starts past the end raises :class:`RangeNotSatisfiable` (416).
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = _position(last)
        if suffix == 0:
            raise RangeNotSatisfiable("empty suffix range", {"size": size})
        if size == 0:  # satisfiable (RFC 9110 §14.1.1), but no byte to name: the whole body
            return None
        return (max(size - suffix, 0), size)
    start = _position(first)
    stop = size if last == "" else min(_position(last) + 1, size)
    if last != "" and _position(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable("range starts past the end of the blob", {"size": size})
    return (start, stop)


def content_range(start: int, stop: int, size: int) -> str:
    return f"bytes {start}-{stop - 1}/{size}"


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)\s*")


def parse_content_range(header: str | None) -> tuple[int, int, int | None] | None:
    """A ``206``'s ``Content-Range: bytes first-last/size`` as ``(start, stop, size)``, ``stop``
    exclusive and ``size`` None for ``*``; None when absent or not that form (or impossible:
    last before first, past the size)."""
    match = _CONTENT_RANGE.fullmatch(header or "")
    if match is None:
        return None
    first, last, total = match.groups()
    start, stop = int(first), int(last) + 1
    size = None if total == "*" else int(total)
    if stop <= start or (size is not None and stop > size):
        return None
    return (start, stop, size)


_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d{1,20})\s*")


def unsatisfied_length(header: str | None) -> int | None:
    """A ``416``'s ``Content-Range: bytes */size`` as the size it says the whole has; None
    when absent or not that form."""
    match = _UNSATISFIED_RANGE.fullmatch(header or "")
    return None if match is None else int(match.group(1))
