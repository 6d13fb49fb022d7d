"""IP networks for allow lists and trusted proxies, and the key a client's limits are kept under.

Pure functions over :mod:`ipaddress` values. An IPv4 address that arrives IPv4-mapped
(``::ffff:192.0.2.1``, as a dual-stack socket reports it) is the IPv4 address it maps, so one
list entry covers both ways a client can reach the mirror. A network with host bits set
(``10.0.0.1/8``) is refused: it is almost always a typo for something narrower or wider.

An IPv4 client that a translator (NAT64/SIIT, RFC 6052 and RFC 8215) brings in as IPv6 is one
client for the limits (:func:`client_key`), not one of a /64 every translated client shares;
allow lists and trusted proxies still see the IPv6 address it arrives from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A network whose prefix is shorter than this (IPv4, IPv6) and which is not wholly private
#: (``ipaddress``'s ``is_private``: 10/8, fc00::/7, ...) is *broad*: more than a /8 of the IPv4
#: Internet (``0.0.0.0/0`` is all of it), more than a /32 (a whole ISP's allocation, the least
#: a regional registry gives one) of IPv6's (``::/0``, ``2000::/3``).
BROAD_PREFIX = {4: 8, 6: 32}

#: IPv6 clients are kept by their /64: one host usually holds a whole /64 and can use any of it.
IPV6_CLIENT_PREFIX = 64
#: ... and also by their /48 (:func:`site_key`): what a site is given (RFC 6177 suggests /48
#: to /56), so its 256 to 65536 /64s are one site for the limits that keep sites.
IPV6_SITE_PREFIX = 48
#: RFC 6052's well-known prefix: ``64:ff9b::a.b.c.d`` is the IPv4 client a.b.c.d, translated.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215's local-use prefix: a translator's own prefix inside it may be /48 to /96, which
#: places the IPv4 address differently (RFC 6052 section 2.2), so each address in it is kept
#: as a client of its own: one IPv4 client, whichever length the translator uses.
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (``[v6]`` brackets and a ``%zone`` allowed), else None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _unmapped(address)


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """``"10.0.0.0/8"``, ``"2001:db8::/32"``, or a bare address (one host). Raises ValueError."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"not an IP network: {text!r}")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IP network ({exc}): {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.0/104 is 10.0.0.0/8
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class Networks:
    """A list of networks; an address is *in* it when any network contains it."""

    networks: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = _unmapped(address)
        return any(address in network for network in self.networks)

    def covers(self, network: Network) -> bool:
        """Whether every address of ``network`` is in this list: one network of it holds it
        whole (two that only add up to it, ``0.0.0.0/1`` and ``128.0.0.0/1``, are not seen
        to: a caller that wants a certainty is told no)."""
        first, last = network.network_address, network.broadcast_address
        return any(first in listed and last in listed for listed in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(network) for network in self.networks)


def parse_networks(value: str | Iterable[str]) -> Networks:
    """A comma-separated string (env, flags) or a list of strings (TOML) → :class:`Networks`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected network strings, got {item!r}")
        if item.strip():
            networks.append(parse_network(item))
    return Networks(tuple(networks))


def broad(networks: Networks) -> list[Network]:
    """The networks in `networks` that are broad (:data:`BROAD_PREFIX`): listed as a NAT or a
    farm, they spare much of the Internet instead (``limits.exempt``)."""
    return [
        network
        for network in networks.networks
        if network.prefixlen < BROAD_PREFIX[network.version] and not network.is_private
    ]


def client_key(address: Address) -> str:
    """The key per-client limits are kept under: the IPv4 address (an IPv4-mapped one too, and
    one a NAT64 translator brings in under ``64:ff9b::/96``), the whole address under the
    local-use ``64:ff9b:1::/48``, or else the IPv6 /64. The one rule every per-address limit
    keys by: the connection cap per client (``docxy.edge.connections``), and through
    ``docxy.edge.clients.limit_key`` wrong passwords, token relays, and admission's buckets and
    fill caps for a client without an identity. An IPv6 client is also kept by its /48
    (:func:`site_key`), on top, by the limits that keep sites."""
    address = _translated(address)
    if isinstance(address, ipaddress.IPv4Address) or address in NAT64_LOCAL_USE:
        return str(address)
    network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
    return str(network)


def site_key(address: Address) -> str | None:
    """The wider key an IPv6 client is also kept under: its /48, every /64 a site (a home's
    /56, a business's /48) may take an address from; None for IPv4 (an IPv4-mapped or a
    translated one too: :func:`client_key`), which has no such range of its own to hand out."""
    address = _translated(address)
    if isinstance(address, ipaddress.IPv4Address) or address in NAT64_LOCAL_USE:
        return None
    return str(ipaddress.IPv6Network((address, IPV6_SITE_PREFIX), strict=False))


def _translated(address: Address) -> Address:
    """``address`` unmapped, and an IPv4 address a translator embedded under the well-known
    prefix (the low 32 bits, RFC 6052) as that IPv4 address."""
    address = _unmapped(address)
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address
