"""The anonymous tokens the mirror's token endpoint handed out, known again when clients use them.

Docker Hub limits anonymous pulls by address, and an anonymous pull through the mirror comes
from the mirror's address: a client pulling with such a token stands where the mirror's own
requests stand, and a 429 it gets is the mirror's rate limit (its health, its ``ratelimit-*``
headers). Only a client's own login is its own account. The token endpoint tells
:class:`AnonymousTokens` each token it relayed to an anonymous client; the upstream client
asks it whose an ``Authorization`` is.

Tokens are kept as SHA-256 digests, at most ``capacity`` of them (the least recently handed
out go first), until :data:`GRACE` past their expiry: whether a client's request carries a
credential of its own (:meth:`AnonymousTokens.anonymous`) holds of a token whoever still sends
it, and containerd keeps sending one a while past its ``expires_in``; the health's question
(:meth:`AnonymousTokens.holds`) is asked until it expires. The mirror's own token
(:data:`OFFLINE_TOKEN`: offline, mirror-only) is always anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
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
#: Seconds a relayed token is still known after it expires (at least; or one more lifetime).
GRACE = 600.0
#: The token the mirror's token endpoint answers itself (``docxy.http.auth``: its upstream's
#: token service down, or none): it grants nothing upstream, whoever holds it asks as nobody.
OFFLINE_TOKEN = "docxy-offline"


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class KeptTokens(Generic[V]):
    """Tokens the token endpoint relayed, each with a value (whose it is), until they expire:
    kept as SHA-256 digests, at most ``capacity`` of them (the least recently kept go first).

    ``grace``: a token is known that long past its expiry too, or one more lifetime if that
    is longer (none by default): for what must hold of a token whoever still sends it."""

    def __init__(self, capacity: int = CAPACITY, *, grace: float = 0.0) -> None:
        #: digest -> (expiry, kept until: expiry and grace, value)
        self._kept: LruDict[bytes, tuple[float, float, V]] = LruDict(capacity)
        self._grace = grace

    def keep(self, token: str, value: V, lifetime: float = DEFAULT_LIFETIME) -> None:
        lifetime = min(max(lifetime, 0.0), LONGEST)
        kept = lifetime + max(lifetime, self._grace) if self._grace > 0 else lifetime
        now = time.monotonic()
        self._kept.set(_key(token), (now + lifetime, now + kept, value))

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

    def value(self, authorization: str, *, graced: bool = True) -> V | None:
        """The value kept with a ``Bearer`` ``authorization``'s token while it holds (and its
        ``grace``, unless not ``graced``); None for anything else (a token never kept, or
        expired, Basic)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        key = _key(token)
        found = self._kept.get(key)
        if found is None:
            return None
        now = time.monotonic()
        if now > found[1]:
            self._kept.pop(key)
            return None
        if not graced and now > found[0]:
            return None
        return found[2]


class AnonymousTokens:
    """Tokens the mirror handed out for anonymous pulls, and until when they hold."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._kept = KeptTokens[bool](capacity, grace=GRACE)

    def remember(self, token: str, lifetime: float = DEFAULT_LIFETIME) -> None:
        self._kept.keep(token, True, lifetime)

    def remember_answer(self, body: bytes) -> None:
        """Remember the token(s) of a token service's answer (``token``, ``access_token``)."""
        self._kept.keep_answer(body, True)

    def holds(self, authorization: str) -> bool:
        """Whether ``authorization`` is ``Bearer`` with a token handed out for anonymous pulls
        that has not expired."""
        return self._kept.value(authorization, graced=False) is not None

    def anonymous(self, authorization: str) -> bool:
        """Whether ``authorization`` is no credential of the client's own: a token handed out
        for an anonymous pull, expired less than :data:`GRACE` (or one more lifetime) ago
        (containerd sends one past its ``expires_in``), or the mirror's own
        :data:`OFFLINE_TOKEN`, always (the record of it lasts a minute after it was last handed
        out, and none survives a restart: it is told by its value)."""
        token = bearer_token(authorization)
        if token is not None and hmac.compare_digest(token.encode(), OFFLINE_TOKEN.encode()):
            return True
        return self._kept.value(authorization) is not None
