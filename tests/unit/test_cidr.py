"""IP networks for allow lists and trusted proxies; the key per-client limits use."""

from __future__ import annotations

import ipaddress

import pytest

from docxy.core.cidr import client_key, parse_address, parse_network, parse_networks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7/32"),
        (" 2001:db8::/32 ", "2001:db8::/32"),
        ("::1", "::1/128"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # IPv4-mapped is the IPv4 network
    ],
)
def test_networks_parse(text: str, expected: str) -> None:
    assert str(parse_network(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "10.0.0.1/8", "10.0.0.0/33", "2001:db8::1/32", "example.com", "10.0.0.0 /8", "*"]
)
def test_bad_networks_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_network(text)


def test_a_list_holds_v4_and_v6_and_mapped_addresses() -> None:
    networks = parse_networks("10.0.0.0/8, 2001:db8::/32,")
    assert ipaddress.ip_address("10.1.2.3") in networks
    assert ipaddress.ip_address("::ffff:10.1.2.3") in networks  # a dual-stack socket's view
    assert ipaddress.ip_address("2001:db8:1::5") in networks
    assert ipaddress.ip_address("11.0.0.1") not in networks
    assert ipaddress.ip_address("2001:db9::1") not in networks
    assert "10.1.2.3" not in networks  # text is not an address
    assert not parse_networks("") and not parse_networks([])
    assert parse_networks(["127.0.0.2", "::1"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", None),
        ("", None),
        ("1.2.3.4:80", None),
    ],
)
def test_addresses_parse(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    one = client_key(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
    other = client_key(ipaddress.ip_address("2001:db8:1:2:bbbb::9"))
    assert one == other == "2001:db8:1:2::/64"
    assert client_key(ipaddress.ip_address("2001:db8:1:3::1")) != one
    assert client_key(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
    assert client_key(ipaddress.ip_address("::ffff:192.0.2.1")) == "192.0.2.1"
