"""The client's address behind trusted proxies: read from the right, never made up."""

from __future__ import annotations

import ipaddress

import pytest

from docxy.core.cidr import parse_networks
from docxy.core.forwarded import client_address, forwarded_chain

PROXY = ipaddress.ip_address("10.0.0.5")
STRANGER = ipaddress.ip_address("203.0.113.9")
TRUSTED = parse_networks("10.0.0.0/24, 2001:db8::/64")


def resolve(peer: object, header: str, *values: str) -> str:
    lines = [(header, value) for value in values]
    return str(client_address(peer, lines, TRUSTED, header.lower()))  # type: ignore[arg-type]


def test_an_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert resolve(STRANGER, "X-Forwarded-For", "192.0.2.1") == "203.0.113.9"
    assert resolve(STRANGER, "Forwarded", "for=192.0.2.1") == "203.0.113.9"


@pytest.mark.parametrize(
    ("values", "client"),
    [
        (["192.0.2.1"], "192.0.2.1"),
        (["192.0.2.1, 10.0.0.7"], "192.0.2.1"),  # a second trusted hop is skipped
        (["6.6.6.6, 192.0.2.1"], "192.0.2.1"),  # the client's own left part is ignored
        (["6.6.6.6", "192.0.2.1"], "192.0.2.1"),  # several header lines join in order
        (["192.0.2.1:5555"], "192.0.2.1"),
        (["unknown"], "10.0.0.5"),  # unreadable: the last trusted hop
        (["192.0.2.1, garbage"], "10.0.0.5"),
        ([""], "10.0.0.5"),
        ([], "10.0.0.5"),
        (["10.0.0.8, 10.0.0.9"], "10.0.0.8"),  # all trusted: the leftmost
    ],
)
def test_x_forwarded_for_from_a_trusted_proxy(values: list[str], client: str) -> None:
    assert resolve(PROXY, "X-Forwarded-For", *values) == client


@pytest.mark.parametrize(
    ("values", "client"),
    [
        (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
        (["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
        (["For=192.0.2.1, for=10.0.0.9"], "192.0.2.1"),
        (["for=_hidden"], "10.0.0.5"),
        (["proto=https"], "10.0.0.5"),
    ],
)
def test_forwarded_from_a_trusted_proxy(values: list[str], client: str) -> None:
    assert resolve(PROXY, "Forwarded", *values) == client


def test_only_the_configured_header_is_read() -> None:
    lines = [("Forwarded", "for=6.6.6.6"), ("X-Forwarded-For", "192.0.2.1")]
    assert str(client_address(PROXY, lines, TRUSTED, "x-forwarded-for")) == "192.0.2.1"
    assert str(client_address(PROXY, lines, TRUSTED, "forwarded")) == "6.6.6.6"


def test_a_long_chain_is_cut_at_its_right_end() -> None:
    chain = forwarded_chain("x-forwarded-for", [", ".join(["10.0.0.9"] * 1000)])
    assert len(chain) == 32
