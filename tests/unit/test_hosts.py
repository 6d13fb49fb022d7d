"""Host names as the mirror compares them (``docxy.core.hosts``): a default port is no port."""

from __future__ import annotations

import pytest

from docxy.core.hosts import (
    canonical_url,
    earlier_spellings,
    host_key,
    key_now,
    origin,
    takes_any_port,
    url_host,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Mirror.Example.com", ("mirror.example.com", "mirror.example.com")),
        ("mirror.example.com:5000", ("mirror.example.com:5000", "mirror.example.com")),
        ("mirror.example.com:443", ("mirror.example.com", "mirror.example.com")),
        ("mirror.example.com:80", ("mirror.example.com", "mirror.example.com")),
        ("mirror.example.com:4430", ("mirror.example.com:4430", "mirror.example.com")),
        ("[::1]:8080", ("[::1]:8080", "[::1]")),
        ("[::1]:443", ("[::1]", "[::1]")),
        ("[::1]", ("[::1]", "[::1]")),
        ("127.0.0.2:80", ("127.0.0.2", "127.0.0.2")),
    ],
)
def test_host_key(host: str, expected: tuple[str, str]) -> None:
    assert host_key(host) == expected


@pytest.mark.parametrize(
    ("entry", "any_port"),
    [
        ("mirror.example.com", True),
        ("mirror.example.com:443", False),  # the default ports, and no other
        ("mirror.example.com:5000", False),
        ("[::1]", True),
        ("[::1]:80", False),
    ],
)
def test_an_entry_without_a_port_takes_any_port(entry: str, any_port: bool) -> None:
    assert takes_any_port(entry) is any_port


@pytest.mark.parametrize(
    ("url", "host", "canonical"),
    [
        ("https://ghcr.io", "ghcr.io", "https://ghcr.io"),
        ("https://ghcr.io:443", "ghcr.io", "https://ghcr.io"),
        ("https://GHCR.io:443/v2", "ghcr.io", "https://ghcr.io/v2"),
        ("http://10.0.0.5:80", "10.0.0.5", "http://10.0.0.5"),
        ("http://10.0.0.5:5000/a", "10.0.0.5:5000", "http://10.0.0.5:5000/a"),
        ("http://lab.example:443", "lab.example:443", "http://lab.example:443"),  # not http's
        ("https://lab.example:80", "lab.example:80", "https://lab.example:80"),
        ("https://[2001:db8::1]:443/", "[2001:db8::1]", "https://[2001:db8::1]/"),
        ("https://[2001:db8::1]:5000", "[2001:db8::1]:5000", "https://[2001:db8::1]:5000"),
    ],
)
def test_a_url_names_its_host_without_the_default_port(url: str, host: str, canonical: str) -> None:
    assert url_host(url) == host
    assert canonical_url(url) == canonical
    assert url_host(canonical) == host


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://ghcr.io/v2/", "https://ghcr.io:443/token", True),
        ("http://lab.example/v2/", "http://lab.example:80/x", True),
        ("https://ghcr.io/v2/", "http://ghcr.io/v2/", False),
        ("https://ghcr.io/v2/", "https://ghcr.io:8443/v2/", False),
        ("http://lab.example:443/", "https://lab.example/", False),
    ],
)
def test_origin_fills_in_the_default_port(a: str, b: str, same: bool) -> None:
    assert (origin(a) == origin(b)) is same


@pytest.mark.parametrize(
    ("registries", "expected"),
    [
        (["https://ghcr.io"], {"ghcr.io:443": "ghcr.io"}),
        (["http://reg.lan"], {"reg.lan:80": "reg.lan"}),
        (["https://[::1]"], {"[::1]:443": "[::1]"}),
        (["http://reg.lan:5000", "https://reg.lan:8443"], {}),  # keyed so before and since
        (["http://reg.lan:443"], {}),  # not http's default port: kept in the key then and now
    ],
)
def test_earlier_spellings(registries: list[str], expected: dict[str, str]) -> None:
    assert earlier_spellings(registries) == expected


@pytest.mark.parametrize(
    ("earlier", "registries", "expected"),
    [
        ("GHCR.io", ["https://ghcr.io"], "ghcr.io"),  # https://GHCR.io, keyed as written
        ("GHCR.io:443", ["https://ghcr.io"], "ghcr.io"),
        ("ghcr.io:443", ["https://quay.io", "https://ghcr.io"], "ghcr.io"),
        ("Reg.Lan:80", ["http://reg.lan"], "reg.lan"),
        ("Reg.Lan:5000", ["http://reg.lan:5000"], "reg.lan:5000"),
        ("ghcr.io", ["https://ghcr.io"], None),  # the key now: nothing to move
        ("reg.lan:443", ["http://reg.lan"], None),  # not http's default port: another host
        ("GHCR.io:8443", ["https://ghcr.io"], None),
        ("quay.io", ["https://ghcr.io"], None),
    ],
)
def test_key_now(earlier: str, registries: list[str], expected: str | None) -> None:
    assert key_now(earlier, registries) == expected
