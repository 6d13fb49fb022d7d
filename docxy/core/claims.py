"""What a client's Bearer token says of whose it is: a JWT's ``aud`` and ``iss``, unverified.

Registry token services (Docker's distribution token spec) issue JWTs whose ``aud`` is the
``service`` the registry's challenge named (Docker Hub: ``registry.docker.io``) and whose
``iss`` names the issuer (Docker Hub: ``auth.docker.io``, its realm's host). The mirror holds
no key to verify them and needs none: the claims only tell it where a token may go, never
grant anything; a forged claim at most sends a client's own token to the registry it names,
which checks the signature itself. An opaque token (ghcr.io's) says nothing: None.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from docxy.core import jsondoc
from docxy.core.headers import bearer_token


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The audiences (``aud``: a string or a list of them) and issuer (``iss``) a JWT names."""

    audiences: frozenset[str]
    issuer: str | None


def token_claims(authorization: str | None) -> TokenClaims | None:
    """The claims of a ``Bearer`` ``authorization`` that is a JWT naming an ``aud`` or an
    ``iss``; None for anything else (no token, Basic, opaque, not JSON, neither claim)."""
    token = bearer_token(authorization)
    payload = jwt_payload(token) if token is not None else None
    if payload is None:
        return None
    aud, iss = payload.get("aud"), payload.get("iss")
    listed = aud if isinstance(aud, list) else [aud]
    audiences = frozenset(a for a in listed if isinstance(a, str) and a)
    issuer = iss if isinstance(iss, str) and iss else None
    if not audiences and issuer is None:
        return None
    return TokenClaims(audiences, issuer)


def jwt_payload(token: str) -> dict[str, object] | None:
    """A JWT's payload as a JSON object, unverified (the mirror holds no key of the token
    service's); None for anything else (opaque, a JWE's five parts, bad base64url, not
    JSON, nested too deep). Read here rather than by PyJWT, which (with cryptography) is
    ~10 MiB an open mirror checking no credentials never loads otherwise."""
    parts = token.split(".")
    if len(parts) != 3:  # header.payload.signature
        return None
    part = parts[1]
    try:  # base64url without its padding (RFC 7515 §2)
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None
    return jsondoc.object_in(raw)
