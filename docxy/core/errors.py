"""Errors the mirror can answer with, in the registry's JSON error format.

Every error a client can see is a :class:`RegistryError`, rendered by its own :meth:`body`
(``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``, :meth:`encoded` as bytes) and
:meth:`headers` with its HTTP status: ``http/responses.py``'s ``error_response`` for the app,
the edge's ASGI layers for what they refuse before it::

    RegistryError
    ├── ClientError                 the request itself is wrong (4xx)
    │   ├── NameInvalid             400 NAME_INVALID    repository name breaks the grammar
    │   ├── DigestInvalid           400 DIGEST_INVALID  malformed digest
    │   ├── TagInvalid              400 TAG_INVALID     malformed tag
    │   ├── RequestTooLarge         413/414/431 SIZE_INVALID  oversized body, query, headers
    │   ├── RangeNotSatisfiable     416 RANGE_INVALID   a Range outside the blob
    │   ├── NotFound                404 NOT_FOUND       no such route
    │   ├── Unauthorized            401 UNAUTHORIZED    no or bad credentials (with a challenge)
    │   ├── Denied                  403 DENIED          not on the allow list, repository rules
    │   ├── TooManyRequests         429 TOOMANYREQUESTS a per-client limit (with Retry-After)
    │   └── Unsupported             405 UNSUPPORTED     the mirror is read-only
    ├── MirrorUnavailable           503 UNAVAILABLE     the mirror cannot check who asks
    └── UpstreamError               the upstream failed us (5xx)
        ├── UpstreamUnavailable     502 UNAVAILABLE     refused, reset, DNS, TLS, bad answer
        │   └── UpstreamBusy        503 UNAVAILABLE     every connection to it in use (Retry-After)
        ├── UpstreamAnswered        4xx (its own)       the registry's word on a blob (404...)
        └── UpstreamTimeout         504 UNAVAILABLE     no answer in time
            ├── TokenServiceTimeout                     ...from its token service, not itself
            └── HopTimeout                              ...from where it redirected (a CDN)

``ConfigError`` is separate: it stops start-up and never reaches a client. ``StreamCut`` is
raised inside a streamed body that cannot be finished (a failed fill): the app's ASGI layer
then leaves the response unended, so the server closes the connection, logged in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from docxy.core.echoes import NONE, Secrets
from docxy.core.jsondoc import object_in


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names the key and its source."""


class StreamCut(Exception):
    """A started response body must stop short: the client has to see a broken download."""


class RegistryError(Exception):
    status: int = 500
    code: str = "UNKNOWN"

    def __init__(self, message: str, detail: Any = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}

    def encoded(self) -> bytes:
        return json.dumps(self.body()).encode()

    def headers(self) -> list[tuple[str, str]]:
        """The response's headers but its length and the API version (the caller's layer adds
        those): ``Content-Type``, and what a kind of error adds to it."""
        return [("Content-Type", "application/json")]


class ClientError(RegistryError):
    status = 400


class NameInvalid(ClientError):
    code = "NAME_INVALID"


class DigestInvalid(ClientError, ValueError):
    code = "DIGEST_INVALID"


class TagInvalid(ClientError):
    code = "TAG_INVALID"


class RequestTooLarge(ClientError):
    status = 414
    code = "SIZE_INVALID"


class RangeNotSatisfiable(ClientError):
    status = 416
    code = "RANGE_INVALID"

    def headers(self) -> list[tuple[str, str]]:
        headers = super().headers()
        if isinstance(self.detail, dict):
            headers.append(("Content-Range", f"bytes */{self.detail.get('size', '*')}"))
        return headers


class NotFound(ClientError):
    status = 404
    code = "NOT_FOUND"


class Unauthorized(ClientError):
    """``challenge``: the ``WWW-Authenticate`` value that tells the client where to log in."""

    status = 401
    code = "UNAUTHORIZED"

    def __init__(self, message: str, challenge: str | None = None, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.challenge = challenge

    def headers(self) -> list[tuple[str, str]]:
        headers = super().headers()
        if self.challenge is not None:
            headers.append(("WWW-Authenticate", self.challenge))
        return headers


class Denied(ClientError):
    status = 403
    code = "DENIED"


class TooManyRequests(ClientError):
    status = 429
    code = "TOOMANYREQUESTS"

    def headers(self) -> list[tuple[str, str]]:
        headers = super().headers()
        if isinstance(self.detail, dict):
            headers.append(("Retry-After", str(self.detail.get("retry_after", 1))))
        return headers


class Unsupported(ClientError):
    """405: the method is not one the path takes; ``allow`` (RFC 9110 §15.5.6) names those."""

    status = 405
    code = "UNSUPPORTED"

    def __init__(self, message: str, detail: Any = None, *, allow: Iterable[str]) -> None:
        super().__init__(message, detail)
        self.allow = ", ".join(allow)

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("Allow", self.allow)]


class MirrorUnavailable(RegistryError):
    status = 503
    code = "UNAVAILABLE"


class UpstreamError(RegistryError):
    status = 502
    code = "UNAVAILABLE"


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamAnswered(UpstreamError):
    """The registry's own answer to the mirror's request in repository ``name``, which is its
    word on the content asked (a ``404 BLOB_UNKNOWN`` or ``MANIFEST_UNKNOWN``, a ``400``), not
    on the mirror's credentials: the request of a client without credentials of its own, sent
    again, would only be told the same (and cost the upstream a second request); one with its
    own may be told more (a registry hiding private repositories behind a 404). Answered with
    the upstream's status and its registry error (``body``, when it is one:
    ``{"errors": [...]}``, of at most :data:`RELAYED_LIMIT` bytes), else the mirror's own
    saying the status (``unknown`` its code for a 404).

    That body answers a request sent with the mirror's own credentials, ``secrets``
    (:meth:`~docxy.upstream.tokens.MirrorTokens.secrets`): an error whose code, message or
    detail repeats one (an upstream or a proxy that echoes request headers) keeps its code but
    says the mirror's own words for it, without its detail (:func:`relayable`). The body is
    relayed as parsed, never as it came: what the mirror checked is what the client reads."""

    def __init__(
        self,
        status: int,
        body: bytes,
        name: str,
        unknown: str = "BLOB_UNKNOWN",
        secrets: Secrets = NONE,
    ) -> None:
        super().__init__(f"the upstream answered {status}", status=status)
        if status == 404:  # the code of the mirror's own error, when the registry sent none
            self.code = unknown
        self.name = name
        self.said = relayable(body, secrets, self.code)

    def encoded(self) -> bytes:
        return self.said if self.said is not None else super().encoded()


#: The largest upstream error body relayed (parsed, checked for the mirror's secrets): a
#: registry's is a few hundred bytes; a larger one gets the mirror's own error.
RELAYED_LIMIT = 64 * 1024

#: The mirror's own words for a registry error code (Distribution's), said in place of an
#: upstream's message that repeated the mirror's credentials.
OWN_WORDS = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_UNKNOWN": "repository name not known to registry",
    "NAME_INVALID": "invalid repository name",
    "TAG_INVALID": "manifest tag did not match URI",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_INVALID": "manifest invalid",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "TOOMANYREQUESTS": "too many requests",
    "UNSUPPORTED": "the operation is unsupported",
}
WITHHELD = "the upstream's message is withheld: it repeated the mirror's upstream credentials"


def relayable(body: bytes, secrets: Secrets, code: str) -> bytes | None:
    """An upstream's registry error ``body`` as a client may be told it; None when it is none
    (no JSON object with an ``errors`` list of objects, or over :data:`RELAYED_LIMIT` bytes):
    the caller says its own. Each error keeps its ``code``, ``message`` and ``detail``, unless
    one of them holds a ``secrets`` value (:class:`~docxy.core.echoes.Secrets`): then its
    message is the mirror's own for its code (``code`` for a code that held one), its detail
    dropped. Anything else in the body is left out (a duplicate key's first value too)."""
    if len(body) > RELAYED_LIMIT:
        return None
    parsed = object_in(body)
    errors = parsed.get("errors") if parsed is not None else None
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        return None
    told: list[dict[str, Any]] = []
    for error in errors:
        said = {key: error[key] for key in ("code", "message", "detail") if key in error}
        if secrets.in_value(said):
            own = said.get("code")
            own = own if isinstance(own, str) and not secrets.in_text(own) else code
            words = OWN_WORDS.get(own.upper(), "the upstream answered an error")
            said = {"code": own, "message": f"{words} ({WITHHELD})"}
        told.append(said)
    return json.dumps({"errors": told}).encode()


class UpstreamBusy(UpstreamUnavailable):
    """Every connection of the mirror's to the upstream is in use (a crowd of pass-through
    streams): the mirror's own limit, not the upstream's trouble. ``503`` with
    ``Retry-After``: a moment later one is free."""

    status = 503

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("Retry-After", "1")]


class UpstreamTimeout(UpstreamError):
    status = 504


class TokenServiceTimeout(UpstreamTimeout):
    """The upstream's token service (not its registry) sent nothing in time: a client that
    holds a token of its own may still be answered by the registry."""


class HopTimeout(UpstreamTimeout):
    """A host the registry redirected to (another origin: a CDN) sent nothing in time: asked
    again, the registry may send the request to another one."""
