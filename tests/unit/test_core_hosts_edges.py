"""Edges of ``docxy.core.hosts`` that mutation testing found untested: space around a host
name or a ``hosts`` entry, and an IPv6 literal whose bracket is never closed."""

from __future__ import annotations

import pytest

from docxy.core.hosts import host_key, takes_any_port


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (" Mirror.Example.com:443\t", ("mirror.example.com", "mirror.example.com")),
        ("\tmirror.example.com:5000 ", ("mirror.example.com:5000", "mirror.example.com")),
        # no closing bracket: the whole text is the host, with no port
        ("[::1", ("[::1", "[::1")),
        ("[::1:443", ("[::1:443", "[::1:443")),
    ],
)
def test_host_key_edges(host: str, expected: tuple[str, str]) -> None:
    assert host_key(host) == expected


@pytest.mark.parametrize(
    ("entry", "any_port"),
    [
        (" [::1] ", True),
        ("\t[::1]:443 ", False),
        (" mirror.example.com:5000 ", False),
        ("[::1", True),  # no closing bracket: no port either
    ],
)
def test_takes_any_port_edges(entry: str, any_port: bool) -> None:
    assert takes_any_port(entry) is any_port
