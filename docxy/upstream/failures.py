"""A failed HTTP request in words, for logs, /health and error messages.

An httpx timeout has no text of its own (``str()`` is empty, or ``timed out``): what it waited
for and for how long are in its type and in the request's own ``timeout`` extension. Used for
the upstream registry (``docxy.upstream.client``) and the shared object store.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import httpx

from docxy.core.hosts import url_host
from docxy.core.verify import NAME_MISMATCH, OUT_OF_DATE, RENEW_OR_CLOCK, UNKNOWN_ISSUER, ssl_cause

if TYPE_CHECKING:
    from docxy.upstream.trust import UpstreamTrust

#: What each httpx timeout waited for, by its key in ``httpx.Timeout``.
_WAITED_FOR: dict[type[httpx.HTTPError], tuple[str, str]] = {
    httpx.ConnectTimeout: ("connect", "no connection"),
    httpx.ReadTimeout: ("read", "nothing received"),
    httpx.WriteTimeout: ("write", "could not send"),
    httpx.PoolTimeout: ("pool", "no free connection"),
}


def failure(what: str, exc: httpx.HTTPError) -> str:
    """``what`` failed, in words: ``GET ReadTimeout: nothing received within 15s``. An httpx
    timeout has no text of its own (``HEAD ReadTimeout: `` said nothing): it says what it
    waited for and how long (the request's timeout), then its text if it has one."""
    name, text = type(exc).__name__, str(exc)
    waited = _WAITED_FOR.get(type(exc))
    if waited is None:
        return f"{what} {name}: {text}" if text else f"{what} {name} (no detail given)"
    key, missing = waited
    seconds = _timeout_of(exc, key)
    told = f"{what} {name}: {missing}"
    if seconds is not None:
        told += f" within {seconds:g}s"
    return f"{told} ({text})" if text else told


def _timeout_of(exc: httpx.HTTPError, key: str) -> float | None:
    try:
        limits = exc.request.extensions.get("timeout", {})
    except RuntimeError:  # raised without its request
        return None
    seconds = limits.get(key)
    return float(seconds) if isinstance(seconds, int | float) else None


def upstream_certificate_refused(
    url: str, exc: BaseException, trust: UpstreamTrust | None
) -> str | None:
    """:func:`certificate_refused` for a request to ``url`` that failed with ``exc``, told by
    ``trust`` (None: no upstream has a ``ca_file``) whether a ``ca_file`` covers its origin and
    who keeps it on certifi's CAs: the one call of the shared client's and the fills' paths."""
    covered = trust is None or trust.covers(url)
    kept = () if trust is None else trust.kept_default_by(url)
    return certificate_refused(url_host(url), exc, covered, kept)


def certificate_refused(
    host: str, exc: BaseException, covered: bool = True, kept_default_by: tuple[str, ...] = ()
) -> str | None:
    """Why a connection to ``host`` failed, in words for logs, /health and the 502, if its
    certificate did not verify: OpenSSL's reason (``unable to get local issuer certificate``,
    ``Hostname mismatch``, ``certificate has expired``) and what mends it (``ca_file`` only for
    an issuer not trusted, and only on an origin it would be ``covered``: an upstream's registry,
    token service or ``ca_origins``; on a redirect's host not covered, ``ca_origins`` is what
    would cover it, and on one ``kept_default_by`` upstreams that use it without a ``ca_file``,
    those; it cannot mend a certificate for another name or out of date), never a secret; None
    for any other failure. httpx raises its
    ``ConnectError`` from httpcore's, from the ``ssl`` error: the chain is walked."""
    cause = ssl_cause(exc)
    if not isinstance(cause, ssl.SSLCertVerificationError):
        return None
    reason = (cause.verify_message or cause.reason or "not verified").rstrip(".")
    return (
        f"cannot reach the upstream registry ({host}): its certificate could not be "
        f"verified ({reason}){_remedy(cause.verify_code, host, covered, kept_default_by)}"
    )


def _remedy(code: int, host: str, covered: bool, kept_default_by: tuple[str, ...]) -> str:
    if code in UNKNOWN_ISSUER and kept_default_by:
        return (
            f"; no upstream's ca_file is trusted for {host}: {', '.join(kept_default_by)} "
            f"use{'s' if len(kept_default_by) == 1 else ''} it without one (give "
            f"{'it' if len(kept_default_by) == 1 else 'each'} the same ca_file)"
        )
    if code in UNKNOWN_ISSUER and not covered:
        return (
            "; an upstream's ca_file is trusted for its registry, its token service and its "
            f"ca_origins only, not for {host}: to trust it there, list https://{host} in that "
            "upstream's ca_origins"
        )
    if code in UNKNOWN_ISSUER:
        return "; if a private CA issued it, name that CA's certificate in the upstream's ca_file"
    if code in NAME_MISMATCH:
        return f"; it is not a certificate for {host}"
    if code in OUT_OF_DATE:
        return f"; {RENEW_OR_CLOCK}"
    return ""
