"""The client identity of a request: who it is for limits and logs.

Set once per request by the access check (``gate.py``) into the request's facts (the dict
``middleware.AccessLog`` puts at ``scope["docxy"]``); read with :func:`identity_of` once the
route has run (after ``await app(...)`` in an ASGI layer: bandwidth, logs). A layer that must
know the client *before* the app runs (a rate limit) asks the access check itself:
``mirror_state(app).access.check(authorization_header, None).identity`` (``gate.py``; ``access``
is None in open mode without client certificates: everyone is anonymous). The IP address is
not part of it: a limit keyed by address reads the scope's ``client`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

FACT = "identity"


class Via(Enum):
    ANONYMOUS = "anonymous"  # no credentials (open mode), or refused
    CERTIFICATE = "cert"  # a client certificate from `docxy clients add`
    TOKEN = "token"  # a token the mirror issued to one of its users


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    via: Via
    name: str | None = None

    def label(self) -> str:
        """``user:alice``, ``cert:ci-runner`` or ``-``, as the access log prints it."""
        if self.name is None:
            return "-"
        return ("user:" if self.via is Via.TOKEN else "cert:") + self.name


ANONYMOUS = ClientIdentity(Via.ANONYMOUS)


def set_identity(facts: dict[str, Any], identity: ClientIdentity) -> None:
    facts[FACT] = identity


def identity_of(scope: Mapping[str, Any]) -> ClientIdentity:
    """The identity the access check gave this request (ASGI scope), anonymous if none yet."""
    facts = scope.get("docxy")
    found = facts.get(FACT) if isinstance(facts, dict) else None
    return found if isinstance(found, ClientIdentity) else ANONYMOUS
