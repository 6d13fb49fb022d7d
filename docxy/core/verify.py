"""Why a TLS peer's certificate was not verified, as the mirror's messages tell it: the
``ssl`` error under a client library's own, and OpenSSL's verify code sorted by what mends it.
Used for the upstream's certificates (``docxy.upstream.failures``) and for the mirror's own,
as ``docxy warm`` sees it."""

from __future__ import annotations

import ssl

#: OpenSSL's verify codes (``X509_V_ERR_*``) for a chain it cannot follow to a trusted CA (no
#: issuer, a self-signed leaf or root): the ones that naming the issuing CA mends.
UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
#: For a certificate that is not for the host connected to (host name, e-mail, IP address).
NAME_MISMATCH = frozenset({62, 63, 64})
#: For one outside its dates (not yet valid, expired).
OUT_OF_DATE = frozenset({9, 10})
#: What the out-of-date case is told, wherever it is met.
RENEW_OR_CLOCK = "the server's certificate is to be renewed, or this machine's clock is wrong"


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl`` error under ``exc`` (httpx raises its own from httpcore's, from the ``ssl``
    one), or ``exc`` itself if it is one; None if the chain holds none."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
