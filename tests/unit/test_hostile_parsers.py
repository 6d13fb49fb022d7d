"""Property-based tests: the pure parsers under arbitrary, hostile input.

Every parser in ``docxy/core`` (and the edge's CIDR, forwarded-address and rule parsers) takes
text a client or an upstream controls. For any input each must either give a well-formed value
or refuse with its documented error, never another exception, and what it accepts must keep
the invariants the rest of the mirror relies on (a name that round-trips, a range inside the
blob, no hop-by-hop header forwarded, a client address that came from the headers or the peer).
"""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from docxy.core.challenge import parse_challenge, rewrite_challenge, rewrite_scope
from docxy.core.cidr import (
    NAT64_LOCAL_USE,
    NAT64_WELL_KNOWN,
    Address,
    Networks,
    client_key,
    parse_address,
    parse_network,
    parse_networks,
)
from docxy.core.digests import parse_digest
from docxy.core.errors import ClientError, DigestInvalid, RangeNotSatisfiable
from docxy.core.forwarded import client_address, forwarded_chain
from docxy.core.headers import HOP_BY_HOP, request_headers, response_headers
from docxy.core.names import Kind, parse_v2_path, validate_name
from docxy.core.ranges import parse_range
from docxy.core.rules import parse_pattern
from docxy.edge.framing import framing_error

settings.register_profile("docxy", max_examples=300, deadline=None)
settings.load_profile("docxy")

# Text biased towards the characters that matter to each grammar, plus anything at all.
PATHY = st.text(alphabet=st.sampled_from("/abc.-_:%09AZ@ \x00é"), max_size=80)
ANY = st.text(max_size=200)
HEADER_TEXT = st.one_of(
    ANY, st.text(alphabet=st.sampled_from('=,;" \\abc:/[]0123456789.'), max_size=80)
)
IPS = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(st.one_of(PATHY.map(lambda s: "/v2/" + s), ANY))
def test_v2_paths_parse_or_refuse(path: str) -> None:
    try:
        reference = parse_v2_path(path)
    except ClientError:
        return
    if reference is None:
        assert path == "/v2/"
        return
    assert validate_name(reference.name) == reference.name
    assert ".." not in reference.name.split("/") and "%" not in reference.name
    suffix = f"/{reference.kind.value}/{reference.ref}"
    assert path == f"/v2/{reference.name}{suffix}"
    if reference.kind is Kind.BLOB:
        assert reference.digest is not None


@given(
    st.one_of(ANY, st.text(alphabet=st.sampled_from("sha256:0123456789abcdefABC+._-"), max_size=80))
)
def test_digests_parse_or_refuse(text: str) -> None:
    try:
        digest = parse_digest(text)
    except DigestInvalid:
        return
    assert str(digest) == text
    assert re.fullmatch(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", text)


@given(HEADER_TEXT, st.booleans())
def test_challenges_parse_and_rewrite_without_raising(header: str, prefix: bool) -> None:
    challenge = parse_challenge(header)
    if challenge is not None and challenge.scheme.lower() == "bearer":
        rendered = rewrite_challenge(header, "https://mirror.test/auth/token", prefix)
        again = parse_challenge(rendered)
        assert again is not None and again.realm == "https://mirror.test/auth/token"
    else:
        assert rewrite_challenge(header, "https://m/auth", prefix) == header


@given(ANY, st.booleans())
def test_scopes_rewrite_without_raising(scope: str, prefix: bool) -> None:
    rewritten = rewrite_scope(scope, prefix)
    assert rewritten == scope or rewritten.startswith("repository:library/")


@given(
    st.one_of(
        st.none(),
        ANY,
        st.builds(
            lambda a, b: f"bytes={a}-{b}",
            st.one_of(st.just(""), st.integers(0, 10**30).map(str)),
            st.one_of(st.just(""), st.integers(0, 10**30).map(str)),
        ),
    ),
    st.integers(0, 10**12),
)
def test_ranges_stay_inside_the_blob(header: str | None, size: int) -> None:
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if span is not None:
        start, stop = span
        assert 0 <= start <= stop <= size


@given(st.lists(st.tuples(st.one_of(st.sampled_from(sorted(HOP_BY_HOP)), ANY), ANY), max_size=20))
def test_hop_by_hop_headers_never_pass(headers: list[tuple[str, str]]) -> None:
    for name, _ in request_headers(headers) + response_headers(headers):
        assert name.lower() not in HOP_BY_HOP


@given(st.one_of(ANY, st.builds(lambda ip, n: f"{ip}/{n}", IPS, st.integers(-1, 140))))
def test_networks_parse_or_refuse(text: str) -> None:
    try:
        network = parse_network(text)
    except ValueError:
        return
    assert network.network_address in Networks((network,))


@given(ANY)
def test_address_and_network_lists_never_raise_otherwise(text: str) -> None:
    parse_address(text)
    try:
        parse_networks(text)
    except ValueError:
        pass


@given(IPS, IPS)
def test_client_keys_group_ipv6_by_64(
    one: ipaddress.IPv4Address, two: ipaddress.IPv4Address
) -> None:
    same64 = (
        isinstance(one, ipaddress.IPv6Address)
        and isinstance(two, ipaddress.IPv6Address)
        and one.ipv4_mapped is None
        and two.ipv4_mapped is None
        and int(one) >> 64 == int(two) >> 64
        # a NAT64 translator's clients are their IPv4 addresses, each its own (6e91b6c)
        and not any(a in NAT64_WELL_KNOWN or a in NAT64_LOCAL_USE for a in (one, two))
    )
    if same64:
        assert client_key(one) == client_key(two)
    elif isinstance(one, ipaddress.IPv4Address) and isinstance(two, ipaddress.IPv4Address):
        assert (client_key(one) == client_key(two)) == (one == two)


TRUSTED = parse_networks("10.0.0.0/8, fd00::/8")


@given(IPS, st.lists(HEADER_TEXT, max_size=4), st.sampled_from(["x-forwarded-for", "forwarded"]))
def test_the_client_address_comes_from_the_peer_or_the_headers(
    peer: Address, values: list[str], header: str
) -> None:
    lines = [(header, value) for value in values]
    address = client_address(peer, lines, TRUSTED, header)
    if peer not in TRUSTED:
        assert address == peer
    else:
        entries = {parse_address(entry) for entry in forwarded_chain(header, values)}
        assert address == peer or address in entries  # never an address nobody named


@given(st.one_of(ANY, st.text(alphabet=st.sampled_from("ab/*._-"), max_size=30)), PATHY)
def test_patterns_parse_or_refuse_and_match_without_raising(text: str, name: str) -> None:
    try:
        pattern = parse_pattern(text)
    except ValueError:
        return
    pattern.matches(name)
    if "*" not in text:
        assert pattern.matches(pattern.text) and pattern.matches(name) == (name == pattern.text)


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=400)), max_size=60))
def test_framing_checks_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    error = framing_error(headers)
    names = [name.lower() for name, _ in headers]
    if b"content-length" in names and b"transfer-encoding" in names:
        assert error is not None
