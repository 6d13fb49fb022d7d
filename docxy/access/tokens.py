"""The mirror's own tokens: short-lived JWTs (ES256, PyJWT) naming a user and what they may pull.

Claims are Distribution's: ``iss`` (the mirror's public URL), ``sub`` (the user), ``aud`` (the
service named in the mirror's challenge), ``iat``/``nbf``/``exp``, ``jti`` and ``access`` (a list
of ``{type, name, actions}``); and the mirror's own ``pwf``, the fingerprint of the password
hash the token was issued under (``docxy.access.users.password_fingerprint``).

A token is honoured only if its signature is from a key of the ring (``keys.py``), it is inside
its lifetime, its issuer and audience are this mirror's, and its user still exists with the
password hash its ``pwf`` names (checked by the caller against the users file). A token of the
previous key, retired by ``docxy tokens rotate``, must also have been issued before the
rotation and live no longer than ``auth.token_ttl`` (each give or take :data:`LEEWAY`), as
every token the mirror issued with it did: the old key signs nothing new the mirror honours,
should it have leaked, and its tokens all expire within ``auth.token_ttl`` of the rotation.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.access.keys import KeyRing
from docxy.access.scopes import Access, from_claim

ALGORITHM = "ES256"
LEEWAY = 5  # seconds of clock skew tolerated on nbf/exp


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    access: tuple[Access, ...]
    expires: float
    #: the ``pwf`` claim (None: the token has none, or not a string)
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class TokenSpec:
    issuer: str
    audience: str
    ttl: int


class TokenInvalid(Exception):
    """A token the mirror does not honour; the message says why (never the token)."""


def issue(
    ring: KeyRing,
    spec: TokenSpec,
    user: str,
    access: list[Access],
    now: float,
    *,
    fingerprint: str | None = None,
) -> str:
    """A token for ``user``; ``fingerprint``: the one of the hash the user's password
    matched (``UsersFile.checked``), without which the mirror honours none of its tokens."""
    signing = ring.signing()
    claims = {
        "iss": spec.issuer,
        "sub": user,
        "aud": spec.audience,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + spec.ttl,
        "jti": secrets.token_urlsafe(12),
        "access": [entry.claim() for entry in access],
    }
    if fingerprint is not None:
        claims["pwf"] = fingerprint
    return jwt.encode(claims, signing.key, algorithm=ALGORITHM, headers={"kid": signing.kid})


def issued_here(ring: KeyRing, spec: TokenSpec, token: str) -> bool:
    """Whether ``token`` is this mirror's, honoured or not: expired, or signed by a key rotated
    out, it is still the mirror's, never a credential for an upstream. It is if it says so
    (its ``iss``: nothing verified, a stranger's token that claims our issuer only stays here
    too), or if the key of the mirror's its header's ``kid`` names signed it (without a kid:
    any of them), whatever it says (:meth:`KeyRing.known`, past the retired key's grace
    too): a token issued before a change of ``server.public_url`` names the old URL.
    :class:`TokenKeyError` if the keys cannot be read (the caller then cannot tell, and keeps
    the token here)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        kid = jwt.get_unverified_header(token).get("kid")  # a kid not text: not the mirror's
    except jwt.PyJWTError:
        return False
    if not isinstance(claims, dict):
        return False
    if claims.get("iss") == spec.issuer:
        return True
    known = ring.known()
    # By the header's kid, as every token the mirror signs has: a stranger's token (Docker
    # Hub's, each request of a certificate client under auth.upstream_logins) costs no
    # verification, one naming a key of ours one. A token without a kid is tried with each
    # key the mirror holds (two at most: the current one and the previous one).
    if kid is None:
        candidates = list(known.values())
    else:
        key = known.get(kid)
        candidates = [] if key is None else [key]
    return any(_signed_by(key, token) for key in candidates)


def _signed_by(key: ec.EllipticCurvePublicKey, token: str) -> bool:
    """Whether ``key`` signed ``token``, whatever its claims (lifetime, issuer, audience)."""
    try:
        jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        return False
    return True


def verify(ring: KeyRing, spec: TokenSpec, token: str, now: float | None = None) -> Claims:
    """The claims of a token this mirror issued and still honours, or :class:`TokenInvalid`."""
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("not a token of this mirror") from exc
    key = ring.verifying(now).get(str(header.get("kid")))
    if key is None:
        raise TokenInvalid("signed with an unknown or retired key")
    try:
        claims = jwt.decode(
            token,
            key.public,
            algorithms=[ALGORITHM],
            audience=spec.audience,
            issuer=spec.issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "nbf", "iat", "sub", "aud", "iss"], "verify_iat": False},
        )
        # PyJWT checks exp/nbf against the wall clock; `now` makes expiry testable.
        if now > float(claims["exp"]) + LEEWAY:
            raise jwt.ExpiredSignatureError("expired")
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("expired") from exc
    except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
        # the signature is checked first: the mirror signed it, for another server.public_url
        raise TokenInvalid("issued under another server.public_url") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"rejected ({type(exc).__name__})") from exc
    if key.retired is not None:
        _issued_before(claims, key.retired, spec.ttl)
    user = claims["sub"]
    if not isinstance(user, str):
        raise TokenInvalid("rejected (no user)")
    fingerprint = claims.get("pwf")
    # ASCII only (the mirror writes hex): other text would not even encode (a lone surrogate)
    fingerprint = fingerprint if isinstance(fingerprint, str) and fingerprint.isascii() else None
    access = tuple(from_claim(claims.get("access")))
    return Claims(user, access, float(claims["exp"]), fingerprint)


def _issued_before(claims: dict[str, Any], retired: float, ttl: int) -> None:
    """A token of a key retired at ``retired`` is honoured only as one the mirror issued with it:
    before the rotation, for at most ``ttl``; else :class:`TokenInvalid`."""
    issued, expires = claims["iat"], claims["exp"]
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (issued, expires)):
        raise TokenInvalid("rejected (iat or exp not a time)")
    # Said as what must hold, not what must not: a NaN (JSON allows it) fails every comparison.
    if not issued <= retired + LEEWAY:
        raise TokenInvalid("signed with a retired key after its rotation")
    if not expires - issued <= ttl + LEEWAY:
        raise TokenInvalid("of a retired key with a lifetime over auth.token_ttl")
