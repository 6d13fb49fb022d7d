"""Which upstream each token the mirror's token endpoint relayed was issued for.

Every challenge the mirror sends points at its own token endpoint, so every token a client
holds for an upstream came through it, from that upstream's token service. A client that talks
to several upstreams through one mirror host may send one upstream's token with a request for
another: containerd keeps one token handler per host it talks to (the mirror's), and reuses a
token it holds for the same scope (``repository:owner/img:pull``) whichever ``?ns=`` the
request names. Such a token, got with the client's login for one registry, must never be
passed through to another: :meth:`TokenIssuers.issuer` tells the routes whose it is.

Tokens are kept as SHA-256 digests, at most ``capacity`` of them (the least recently handed
out go first), as :mod:`docxy.upstream.anonymous` keeps them; but not forgotten when they
expire: a client may still send one (containerd keeps using a token it holds a while past its
``expires_in``), and one forgotten counted as never relayed, free to go to any upstream. Each
is known :data:`GRACE` past its expiry, or one more lifetime if that is longer.

The record is memory only, and bounded: after a restart, or once evicted, a token is unknown.
With one upstream an unknown token can only be its own, and goes there (a pull in progress
across a restart keeps working). With several, :func:`may_go_to` lets it go only where its
JWT claims (:mod:`docxy.core.claims`) name the upstream's token service and no other's; an
opaque token, or one whose claims cannot be told apart, stays here as another's does: the
request goes on without it, and the ``401`` it may get says ``error="invalid_token"``
(``docxy.http.routes.say_withheld``), on which containerd asks for a new token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from docxy.core.claims import TokenClaims, token_claims
from docxy.core.headers import bearer_token
from docxy.core.hosts import url_host
from docxy.upstream.anonymous import CAPACITY, GRACE, KeptTokens

if TYPE_CHECKING:  # client.py keeps a TokenIssuers: imported for annotations only
    from docxy.upstream.client import Upstream, UpstreamClient


class TokenIssuers:
    """Tokens the mirror relayed, each with the upstream (its registry host) it was for."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._kept = KeptTokens[str](capacity, grace=GRACE)

    def remember_answer(self, upstream_host: str, body: bytes) -> None:
        """The token(s) of a token service's answer (``token``, ``access_token``), relayed
        for the upstream ``upstream_host``."""
        self._kept.keep_answer(body, upstream_host)

    def issuer(self, authorization: str) -> str | None:
        """The registry host of the upstream a ``Bearer`` ``authorization`` was relayed for,
        while it holds and :data:`GRACE` after; None for anything else (a token the mirror never
        relayed, or long expired, Basic)."""
        return self._kept.value(authorization)


@dataclass(frozen=True, slots=True)
class TokenService:
    """What the mirror knows of an upstream's token service: the ``service`` its challenge
    named, and its realm's host (the challenge's, a configured ``auth_realm``); both empty
    for an upstream seen to have none (Basic, or open) and no ``auth_realm``."""

    services: frozenset[str]
    realm_hosts: frozenset[str]

    def named_by(self, claims: TokenClaims) -> bool:
        """Whether the token's ``aud`` is this service, or its ``iss`` this realm's host."""
        issuer = claims.issuer
        if issuer is not None:
            issuer = url_host(issuer) if "://" in issuer else issuer.lower()
        return bool(claims.audiences & self.services) or issuer in self.realm_hosts


def told_for(
    claims: TokenClaims | None, routed: TokenService | None, others: Iterable[TokenService | None]
) -> bool:
    """Whether an unknown token's ``claims`` tell it to be the routed upstream's: they name
    its token service and no other upstream's. None for a service: the mirror has not seen
    that upstream's challenge, so whether the claims name it cannot be told."""
    if claims is None or routed is None or not routed.named_by(claims):
        return False
    return all(other is not None and not other.named_by(claims) for other in others)


def known_service(client: UpstreamClient, upstream: Upstream) -> TokenService | None:
    """The upstream's token service as its last ``/v2/`` probe showed it; None before any
    probe answered. One whose ``/v2/`` named no Bearer challenge (Basic, or none: ``200``)
    names no ``service``: no token of another's names it, but by a configured
    ``auth_realm``'s host as its ``iss`` (that realm is its token service all the same)."""
    if not client.probed(upstream):
        return None
    found = client.known_challenge(upstream)
    services = frozenset({found.service} if found is not None and found.service else ())
    realm = found.realm if found is not None else None
    realms = frozenset(url_host(r) for r in (realm, upstream.auth_realm) if r)
    return TokenService(services, realms)


async def may_go_to(
    client: UpstreamClient,
    routed: Upstream,
    upstreams: Iterable[Upstream],
    authorization: str,
    *,
    probe: bool,
) -> bool | None:
    """Whether the client's ``authorization`` may go to the ``routed`` upstream: not a Bearer
    token (not the question here), or one relayed for it, or (unknown) the only upstream's,
    or one whose claims say it is its (:func:`told_for`). The others' challenges are taken
    only as known, so one that is down delays nothing. The routed upstream's, if never seen,
    is looked at first (a JWT only) when ``probe``, but not again for a while after a probe
    failed (:meth:`~docxy.upstream.client.UpstreamClient.challenge_unless_failed`): False
    then, as for a token not told. Without ``probe`` (a request that may yet be served from
    the cache, which no probe should delay), None: not told yet."""
    if bearer_token(authorization) is None:
        return True
    issuer = client.token_issuers.issuer(authorization)
    if issuer is not None:
        return issuer == routed.host
    others = {u.host: u for u in upstreams if u.host != routed.host}
    if not others:  # an upstream under two names is one: its host is whose a token is
        return True
    claims = token_claims(authorization)
    if claims is None:
        return False
    if not client.probed(routed):
        if not probe:
            return None
        if not await client.challenge_unless_failed(routed):
            return False  # not told: the request that follows meets the same trouble
    services = [known_service(client, other) for other in others.values()]
    return told_for(claims, known_service(client, routed), services)
