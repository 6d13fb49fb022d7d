"""The client's address behind trusted reverse proxies (``X-Forwarded-For`` or ``Forwarded``).

The headers are read only when the peer is a trusted proxy, and then from the right: each
proxy appends the address it received the request from, so the rightmost entries are written
by proxies we trust and everything left of the first untrusted address is the client's to
invent. The walk stops at that first untrusted address, or at an entry that is not an address
(``unknown``, an obfuscated ``_node``, garbage), in which case the last trusted hop is the
client: an address we cannot read is never made up.

Only one header is read (``server.forwarded_header``): a proxy that writes one of them lets a
client send the other, and reading both would let the client choose.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from docxy.core.cidr import Address, Networks, parse_address
from docxy.core.headers import split_quoted, unquoted

HEADERS = ("x-forwarded-for", "forwarded")
MAX_HOPS = 32  # a longer chain is cut at its right end: no client gets to make us walk forever

#: One ``name=value`` pair of an element: a token, then a token or a quoted-string (spaces
#: around ``=`` and an unquoted address with ``:`` or ``[]``, as some proxies write it, taken).
_PAIR = re.compile(r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^";,\s]*)\s*""")


def _forwarded_for(element: str) -> str:
    """The ``for=`` value of one RFC 7239 element (``for="[2001:db8::1]:4711";proto=https``):
    its pairs are cut at ``;`` outside quoted-strings, so a value the client wrote (a ``host=``
    the proxy copied from its Host header) is never read as one. An element that is not all
    pairs, or names ``for`` twice, has none: the walk stops there."""
    pairs = split_quoted(element, ";")
    if pairs is None:
        return ""
    named = []
    for pair in filter(str.strip, pairs):  # an empty pair, as the grammar allows, is none
        match = _PAIR.fullmatch(pair)
        if match is None:
            return ""
        if match.group(1).lower() == "for":
            named.append(match.group(2))
    if len(named) != 1:
        return ""
    return unquoted(named[0]) if named[0].startswith('"') else named[0]


def _strip_port(value: str) -> str:
    """``[v6]:port`` → ``[v6]``; ``v4:port`` → ``v4``; a bare IPv6 address stays whole."""
    value = value.strip()
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _clean_tail(line: str) -> list[str]:
    """The elements of the longest part of ``line`` after one of its commas that cuts cleanly
    at commas outside quoted-strings (none: ``[]``)."""
    at = line.find(",")
    while at != -1:
        tail = split_quoted(line[at + 1 :], ",")
        if tail is not None:
            return tail
        at = line.find(",", at + 1)
    return []


def forwarded_chain(header: str, values: Iterable[str]) -> list[str]:
    """The hop entries of every ``header`` line, left to right (raw text, ports stripped)."""
    entries: list[str] = []
    for line in values:
        if header != "forwarded":
            entries += [_strip_port(element) for element in line.split(",")]
            continue
        # Cut at commas outside quoted-strings. A line whose quoted-string does not end is no
        # address up to the longest tail that cuts cleanly: a proxy that appends its element
        # to the client's line (`$http_forwarded, for=$remote_addr`) wrote that tail, and a
        # client's open quote must not swallow it (the walk then stopped at the whole line and
        # took the proxy itself for the client: its place in access.allow, limits.exempt).
        elements = split_quoted(line, ",")
        if elements is None:
            elements = ["", *_clean_tail(line)]
        entries += [_strip_port(_forwarded_for(element)) for element in elements]
    return entries[-MAX_HOPS:]


def client_address(
    peer: Address, headers: Iterable[tuple[str, str]], trusted: Networks, header: str
) -> Address:
    """The address of the client: ``peer`` unless it is a trusted proxy that says otherwise."""
    if peer not in trusted:
        return peer
    lines = [value for name, value in headers if name.lower() == header]
    client = peer
    for entry in reversed(forwarded_chain(header, lines)):
        address = parse_address(entry)
        if address is None:
            return client
        client = address
        if address not in trusted:
            return address
    return client
