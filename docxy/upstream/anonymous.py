"""The anonymous tokens the mirror's token endpoint handed out, known again when clients use them.

Docker Hub limits anonymous pulls by address, and an anonymous pull through the mirror comes
from the mirror's address: a client pulling with such a token stands where the mirror's own
requests stand, and a 429 it gets is the mirror's rate limit (its health, its ``ratelimit-*``
headers). Only a client's own login is its own account. The token endpoint tells
:class:`AnonymousTokens` each token it relayed to an anonymous client; the upstream client
asks it whose an ``Authorization`` is.

Tokens are kept as SHA-256 digests, until they expire and at most ``capacity`` of them (the
least recently handed out go first).
"""

from __future__ import annotations

import hashlib
import time

from docxy.core import jsondoc
from docxy.core.bounded import LruDict
from docxy.core.expiry import DEFAULT_EXPIRES_IN, token_lifetime

#: Tokens remembered at once: about 150 bytes each.
CAPACITY = 16384
#: A token answer without ``expires_in`` lasts 60 s (the token spec's default).
DEFAULT_LIFETIME = DEFAULT_EXPIRES_IN
#: However long a token says it lasts, it is not remembered longer than this.
LONGEST = 86400.0


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(authorization: str) -> str | None:
    """The token of a ``Bearer`` ``Authorization``, else None."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AnonymousTokens:
    """Tokens the mirror handed out for anonymous pulls, and until when they hold."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._until: LruDict[bytes, float] = LruDict(capacity)

    def remember(self, token: str, lifetime: float = DEFAULT_LIFETIME) -> None:
        lifetime = min(max(lifetime, 0.0), LONGEST)
        self._until.set(_key(token), time.monotonic() + lifetime)

    def remember_answer(self, body: bytes) -> None:
        """Remember the token(s) of a token service's answer (``token``, ``access_token``)."""
        answer = jsondoc.object_in(body)
        if answer is None:
            return
        lifetime = token_lifetime(answer.get("expires_in"), LONGEST)
        for field in ("token", "access_token"):
            token = answer.get(field)
            if isinstance(token, str) and token:
                self.remember(token, lifetime)

    def holds(self, authorization: str) -> bool:
        """Whether ``authorization`` is ``Bearer`` with a token handed out for anonymous pulls
        that has not expired."""
        token = bearer_token(authorization)
        if token is None:
            return False
        key = _key(token)
        until = self._until.get(key)
        if until is None:
            return False
        if time.monotonic() > until:
            self._until.pop(key)
            return False
        return True
