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
"""

from __future__ import annotations

from docxy.upstream.anonymous import CAPACITY, GRACE, KeptTokens


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
