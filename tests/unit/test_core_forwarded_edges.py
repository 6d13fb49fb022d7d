"""Edges of ``docxy.core.forwarded`` that mutation testing found untested: the ``Forwarded``
elements after the first of a line (with space after the comma), quoted ``for=`` values, space
around ``=`` and ``;``, and a bracketed IPv6 hop with a port after a comma in
``X-Forwarded-For``."""

from __future__ import annotations

import pytest

from docxy.core.forwarded import forwarded_chain


@pytest.mark.parametrize(
    ("header", "lines", "chain"),
    [
        ("forwarded", ["for=192.0.2.1, for=198.51.100.2"], ["192.0.2.1", "198.51.100.2"]),
        ("forwarded", ["proto=https; for=192.0.2.7"], ["192.0.2.7"]),
        ("forwarded", ["for = 192.0.2.1"], ["192.0.2.1"]),
        (
            "forwarded",
            ['for="[2001:db8::1]:4711";proto=https', 'for="_hidden", for="192.0.2.9:80"'],
            ["[2001:db8::1]", "_hidden", "192.0.2.9"],
        ),
        (
            "x-forwarded-for",
            ["192.0.2.1, [2001:db8::1]:4711", " 192.0.2.2:80"],
            ["192.0.2.1", "[2001:db8::1]", "192.0.2.2"],
        ),
    ],
)
def test_forwarded_chain_edges(header: str, lines: list[str], chain: list[str]) -> None:
    assert forwarded_chain(header, lines) == chain
