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
from typing import Generic, TypeVar

from docxy.core import jsondoc
from docxy.core.bounded import LruDict
from docxy.core.expiry import DEFAULT_EXPIRES_IN, token_lifetime
from docxy.core.headers import bearer_token

V = TypeVar("V")

#: Tokens remembered at once: about 150 bytes each.
CAPACITY = 16384
#: A token answer without ``expires_in`` lasts 60 s (the token spec's default).
DEFAULT_LIFETIME = DEFAULT_EXPIRES_IN
#: However long a token says it lasts, it is not remembered longer than this.
LONGEST = 86400.0


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class KeptTokens(Generic[V]):
    """Tokens the token endpoint relayed, each with a value (whose it is), until they expire:
    kept as SHA-256 digests, at most ``capacity`` of them (the least recently kept go first).

    ``grace``: a token is known that long past its expiry too, or one more lifetime if that
    is longer (none by default): for what must hold of a token whoever still sends it."""

    def __init__(self, capacity: int = CAPACITY, *, grace: float = 0.0) -> None:
        self._kept: LruDict[bytes, tuple[float, V]] = LruDict(capacity)
        self._grace = grace

    def keep(self, token: str, value: V, lifetime: float = DEFAULT_LIFETIME) -> None:
        lifetime = min(max(lifetime, 0.0), LONGEST)
        if self._grace > 0:
            lifetime += max(lifetime, self._grace)
        self._kept.set(_key(token), (time.monotonic() + lifetime, value))

    def keep_answer(self, body: bytes, value: V) -> None:
        """Keep the token(s) of a token service's answer (``token``, ``access_token``)."""
        answer = jsondoc.object_in(body)
        if answer is None:
            return
        lifetime = token_lifetime(answer.get("expires_in"), LONGEST)
        for field in ("token", "access_token"):
            token = answer.get(field)
            if isinstance(token, str) and token:
                self.keep(token, value, lifetime)

    def value(self, authorization: str) -> V | None:
        """The value kept with a ``Bearer`` ``authorization``'s token while it holds (and its
        ``grace``); None for anything else (a token never kept, or expired, Basic)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        key = _key(token)
        found = self._kept.get(key)
        if found is None:
            return None
        if time.monotonic() > found[0]:
            self._kept.pop(key)
            return None
        return found[1]


class AnonymousTokens:
    """Tokens the mirror handed out for anonymous pulls, and until when they hold."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._kept = KeptTokens[bool](capacity)

    def remember(self, token: str, lifetime: float = DEFAULT_LIFETIME) -> None:
        self._kept.keep(token, True, lifetime)

    def remember_answer(self, body: bytes) -> None:
        """Remember the token(s) of a token service's answer (``token``, ``access_token``)."""
        self._kept.keep_answer(body, True)

    def holds(self, authorization: str) -> bool:
        """Whether ``authorization`` is ``Bearer`` with a token handed out for anonymous pulls
        that has not expired."""
        return self._kept.value(authorization) is not None
