"""Pure header policy: what crosses the mirror in each direction."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC
from email.utils import format_datetime, parsedate_to_datetime

# Every answer of the registry API carries it (the app's and the edge's refusals alike).
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
# The digest of the content a manifest's or a blob's answer carries.
DIGEST_HEADER = "Docker-Content-Digest"

# RFC 9110 §7.6.1 connection-specific headers, plus the ones the mirror recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Asks for a body's own bytes: httpx asks for gzip by default and unzips it (a blob's length
#: and digest are of the bytes as stored), and a relayed body goes to the client as it came.
ACCEPT_IDENTITY = ("Accept-Encoding", "identity")

# Request headers forwarded from the client to the upstream registry.
FORWARD_REQUEST = frozenset(
    {
        "accept",
        "accept-encoding",  # a body passed through is relayed as it comes: as the client asked
        "authorization",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
    }
)

# Response headers the mirror never relays: hop-by-hop, the upstream's cookies and server
# identity, headers it rewrites itself (``www-authenticate``, ``location``), and the policy an
# upstream (or its CDN) sets for its own origin, which a client would take for the mirror's:
# HSTS would pin the mirror's domain and subdomains to HTTPS, Alt-Svc send clients to an
# HTTP/3 port it does not serve, CORS open it to other sites' scripts. A browser's policy
# too: CSP, X-Frame-Options, Permissions-Policy (Feature-Policy before it), cross-origin
# isolation (COOP, COEP, CORP) and Origin-Agent-Cluster are the upstream's choice for its own
# pages, and NEL, Report-To, Reporting-Endpoints and the report-only policies make a browser
# send reports about the mirror's origin (the URLs its users fetch) to the upstream's
# collector. Only relayed answers lose them: the mirror's own (its errors, /status) are
# built by the mirror and never pass here. Kept: what says how to read this one answer
# (``X-Content-Type-Options``, ``Cache-Control``, ``Content-Type``).
_DROP_RESPONSE = HOP_BY_HOP | {
    "set-cookie",
    "server",
    "date",
    "www-authenticate",
    "location",
    "docker-distribution-api-version",
    "strict-transport-security",
    "alt-svc",
    "public-key-pins",
    "public-key-pins-report-only",
    "expect-ct",
    "clear-site-data",
    "content-security-policy",
    "content-security-policy-report-only",
    "x-frame-options",
    "permissions-policy",
    "feature-policy",
    "origin-agent-cluster",
    "nel",
    "report-to",
    "reporting-endpoints",
}
# Whole families of such origin policy: every CORS answer header (``access-control-*``), and
# cross-origin isolation's (``cross-origin-{opener,embedder,resource}-policy``, the first two
# with ``-report-only`` twins).
_DROP_RESPONSE_PREFIXES = ("access-control-", "cross-origin-")


def unsendable(headers: Iterable[tuple[str, str]]) -> str | None:
    """The name of the first header the mirror would forward whose value is not ASCII: HTTP/1.1
    lets a client send such bytes (obs-text), and the upstream client cannot send them on."""
    return next((k for k, v in headers if k.lower() in FORWARD_REQUEST and not v.isascii()), None)


# A range asked for: a HEAD's is not forwarded, as the mirror's own HEAD ignores it.
_RANGE_REQUEST = frozenset({"range", "if-range"})


def request_headers(
    headers: Iterable[tuple[str, str]], *, head: bool = False
) -> list[tuple[str, str]]:
    """Client request headers to send upstream (every ``Accept`` value kept). ``head``: for a
    HEAD, whose ``Range`` the mirror ignores (a hit answers ``200`` with the whole length), so
    none goes upstream either: a registry answers a HEAD's range ``206`` with its length."""
    sent = FORWARD_REQUEST - _RANGE_REQUEST if head else FORWARD_REQUEST
    return [(k, v) for k, v in headers if k.lower() in sent]


def response_headers(
    headers: Iterable[tuple[str, str]], *, head: bool = False
) -> list[tuple[str, str]]:
    """Upstream response headers to relay to the client, hop-by-hop and rewritten ones dropped.
    ``head``: the answer to a HEAD, which has no body for a Transfer-Encoding to frame."""
    connection_named = set()
    pairs = list(headers)
    for key, value in pairs:
        if key.lower() == "connection":
            connection_named |= {token.strip().lower() for token in value.split(",")}
    if not head and _transfer_coded(pairs):
        # Its Content-Length is not its body's (RFC 9112 6.3: an intermediary that forwards
        # such an answer drops it): relayed, it said another length than the bytes sent. A
        # HEAD's has no body to misframe: its Content-Length (the blob's) is kept.
        connection_named.add("content-length")
    return [(k, v) for k, v in pairs if _may_relay(k.lower()) and k.lower() not in connection_named]


def _may_relay(name: str) -> bool:
    """Whether a response header (``name`` in lower case) may cross to the client."""
    return name not in _DROP_RESPONSE and not name.startswith(_DROP_RESPONSE_PREFIXES)


def _transfer_coded(pairs: Iterable[tuple[str, str]]) -> bool:
    return any(k.lower() == "transfer-encoding" for k, _ in pairs)


def body_length(headers: Iterable[tuple[str, str]]) -> int | None:
    """The length an upstream answer's headers give its body: its ``Content-Length``
    (:func:`content_length`), unless it has a ``Transfer-Encoding``, which overrides it (RFC
    9112 6.3; both HTTP clients then read the body by its chunks): such a length is not the
    body's (a smuggling sign), and the body's length is unknown until its end."""
    pairs = list(headers)
    if _transfer_coded(pairs):
        return None
    return content_length(next((v for k, v in pairs if k.lower() == "content-length"), None))


def kept_retry_after(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``Retry-After`` of an upstream answer the mirror passes on in a response of its own
    making (a relayed token answer, a ``/v2/`` error): a ``429`` or ``503`` says how long to
    wait, and the client should hear that too. Empty when the upstream gave none, or none
    that reads as one. Said again as read, never as it came: delay-seconds, or the HTTP-date
    anew (the date parser takes text after the date), so that a field an upstream filled
    with what the mirror's request carried (its ``Authorization``: the answer to a fill's GET
    is told to clients without credentials) cannot pass it on."""
    for key, value in headers:
        if key.lower() == "retry-after":
            return _retry_after_again(value)
    return []


def _retry_after_again(value: str) -> list[tuple[str, str]]:
    text = value.strip()
    if text.isascii() and text.isdigit():
        return [("Retry-After", text)]
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return []
    if when.tzinfo is None:  # as retry_after_seconds takes it: GMT
        when = when.replace(tzinfo=UTC)
    return [("Retry-After", format_datetime(when.astimezone(UTC), usegmt=True))]


def redirect_headers(headers: list[tuple[str, str]], same_origin: bool) -> list[tuple[str, str]]:
    """Headers for the next hop of an upstream redirect: ``Authorization`` stays on one origin
    (``same_origin``: the caller's verdict, which takes its upgrade to HTTPS for the same)."""
    if same_origin:
        return headers
    return [(k, v) for k, v in headers if k.lower() != "authorization"]


def content_length(value: str | None) -> int | None:
    """An answer's ``Content-Length`` (None: absent, or not a number of ASCII digits).
    ``str.isdigit`` alone takes ``²`` (a Latin-1 byte the HTTP clients hand over as it is)
    for a digit, which ``int`` then refuses."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """How long a ``Retry-After`` (RFC 9110 §10.2.3) asks to wait from ``now`` (epoch seconds):
    its delay-seconds, or its HTTP-date less ``now`` (0 when past). None when absent or not
    one of the two."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a date without a zone is taken as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def bearer_token(authorization: str | None) -> str | None:
    """The token of a ``Bearer`` ``Authorization`` (the scheme in any case, spaces around it
    and the token dropped), else None: no header, another scheme, or no token after it. The
    one reading of it, for the access check and for the upstream's anonymous tokens alike."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def split_quoted(text: str, separator: str) -> list[str] | None:
    """``text`` cut at each ``separator`` outside a quoted-string (RFC 9110's and RFC 8941's
    ``"..."``, where ``\\`` escapes the next character), the parts as they are (not
    stripped); None when a quoted-string does not end (what to make of it is the caller's)."""
    parts, start, quoted, escaped = [], 0, False, False
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:at])
            start = at + 1
    if quoted:
        return None
    parts.append(text[start:])
    return parts


def unquoted(value: str) -> str:
    """A quoted-string's text, without its quotes and escapes (``"a\\"b"`` is ``a"b``)."""
    return re.sub(r"\\(.)", r"\1", value[1:-1])
