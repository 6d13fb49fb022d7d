"""Edges of ``docxy.core.cidr`` that mutation testing found untested: space around an address
or a list item, half-bracketed addresses, the IPv4-mapped network boundary at /96, how a list of
networks is shown, and where a network becomes broad (a /8 of IPv4, a /32 of IPv6)."""

from __future__ import annotations

import ipaddress

import pytest

from docxy.core.cidr import broad, parse_address, parse_network, parse_networks


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (" 10.0.0.1 ", "10.0.0.1"),
        ("\t[::ffff:192.0.2.1]\n", "192.0.2.1"),
        ("::1]", None),  # half a bracket pair is no address
        ("[::1", None),
        ("]::1[", None),
    ],
)
def test_parse_address_edges(text: str, address: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("::ffff:0.0.0.0/96", ipaddress.IPv4Network("0.0.0.0/0")),  # all of IPv4, mapped
        ("::ffff:10.0.0.0/104", ipaddress.IPv4Network("10.0.0.0/8")),
        ("::/96", ipaddress.IPv6Network("::/96")),  # not IPv4-mapped: stays IPv6
    ],
)
def test_the_mapped_boundary(
    text: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> None:
    assert parse_network(text) == network


def test_blank_list_items_are_skipped_and_the_list_shown_as_parsed() -> None:
    networks = parse_networks("10.0.0.0/8, , ::1,  ")
    assert networks.networks == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
    )
    assert str(networks) == "10.0.0.0/8, ::1/128"
    assert parse_networks(["10.0.0.0/8", " ", "\t"]).networks == networks.networks[:1]
    assert str(parse_networks("")) == ""


@pytest.mark.parametrize(
    ("network", "is_broad"),
    [
        ("12.0.0.0/7", True),
        ("11.0.0.0/8", False),  # a /8 is the widest that is not
        ("2a00::/31", True),
        ("2a00::/32", False),  # a /32 is the widest that is not
        ("10.0.0.0/8", False),  # private
        ("fc00::/7", False),
    ],
)
def test_where_a_network_becomes_broad(network: str, is_broad: bool) -> None:
    networks = parse_networks(network)
    assert broad(networks) == (list(networks.networks) if is_broad else [])
