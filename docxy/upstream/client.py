"""The upstream registry: who it is (a value) and how the mirror talks to it (one shared client).

``Upstream`` is a frozen value passed to every route, never a global: several upstreams
(ghcr.io, quay.io, ...) become several values chosen per request. ``UpstreamClient`` owns the
single ``httpx.AsyncClient``: its timeouts, its User-Agent, redirect following and the mapping
of transport failures to registry errors (502/504), and it remembers how the upstream is doing
for ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpcore
import httpx

from docxy import __version__
from docxy.config import CaFile, NamedUpstreamConfig, UpstreamConfig
from docxy.core.challenge import Challenge, bearer_challenge
from docxy.core.errors import (
    HopTimeout,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from docxy.core.headers import redirect_headers, retry_after_seconds
from docxy.core.hosts import canonical_url, origin, url_host
from docxy.core.stamps import utc_stamp
from docxy.tasks import Coalesced
from docxy.upstream.anonymous import AnonymousTokens
from docxy.upstream.encoding import ACCEPTED, Inflater
from docxy.upstream.failures import failure, upstream_certificate_refused
from docxy.upstream.framing import unread_coding
from docxy.upstream.issuers import TokenIssuers
from docxy.upstream.outage import Outages
from docxy.upstream.presets import DEFAULT_NAME
from docxy.upstream.redirects import (
    HOP_GUARD,
    NonPublicOnly,
    RegistryVerdicts,
    downgrade,
    guarded_transport,
    hop_guard,
    hop_refusal,
    may_look_up,
    on_registry_host,
)
from docxy.upstream.trust import UpstreamTrust, trusting_transport

if TYPE_CHECKING:
    from docxy.upstream.direct import DirectSettings

log = logging.getLogger(__name__)

USER_AGENT = f"docxy/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
#: Seconds the redirect rule may spend looking the upstream's host up, without a connect timeout.
LOOKUP_SECONDS = 5.0
REALM_TTL = 600.0
#: Seconds after a failed ``/v2/`` probe before a request may ask :meth:`UpstreamClient.
#: challenge_unless_failed` to probe that upstream again (the background probe still runs):
#: a down upstream costs the requests that need its challenge one connect timeout, not each.
PROBE_RETRY = 30.0
MAX_SMALL_BODY = 4 * 1024 * 1024
#: Bytes of a repository's ``401`` to the mirror's Basic login read before its login check
#: (:func:`held_answer`: its connection goes back to the pool first); a larger body is dropped
#: (as one that stalls or breaks off).
MAX_HELD_BODY = 64 * 1024
#: Answers that mean "the upstream is in trouble, try later": the routes serve stale on them,
#: and /health counts them as failures. A 429, and every 5xx: a CDN front's own (Cloudflare's
#: 520-524 and 530: the origin down, unreachable, timing out or unresolved) as much as a
#: 500-504; no 5xx says anything of the content asked (as a 404 does), so a cached copy is
#: never contradicted by serving it. (A status past 599 is no HTTP status, nor a success.)
SERVER_TROUBLE = frozenset({429, *range(500, 1000)})
#: Seconds the mirror's own rate limit is taken to stand after a 429 without ``Retry-After``,
#: and at most with one (Docker Hub's pull window is 6 hours).
RATE_LIMIT_HOLD = 600.0
RATE_LIMIT_MAX = 6 * 3600.0
#: Methods sent once more when their connection broke before any answer (:meth:`UpstreamClient.
#: _sent`): nothing was asked of the upstream that a second try would do twice.
RETRIED_METHODS = frozenset({"GET", "HEAD"})
#: httpx's errors for a connection that broke before an answer's headers came: closed
#: unanswered, reset, or refusing the request's bytes.
BROKE_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: In a request's ``extensions``: it is made with a client's credentials.
CLIENT_CREDENTIALS = "docxy.client_credentials"
#: In a request's ``extensions``: the path its first hop asked, redirects followed since (what
#: a CDN's answer is counted as: its URL names no manifest or blob).
ASKED_PATH = "docxy.asked_path"
PULL_PATH = re.compile(r"/v2/.+/(manifests|blobs)/[^/]+$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream registry, as configured."""

    registry: str
    auth_realm: str | None = None
    library_prefix: bool = True
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    name: str = DEFAULT_NAME  # the path prefix and ?ns= that pick it; [upstream] is docker.io
    hosts: tuple[str, ...] = ()  # mirror host names that pick it
    #: CAs its registry and token service are verified with besides certifi's (UpstreamTrust)
    ca_file: CaFile | None = None
    #: more origins (``https://HOST[:PORT]``) its ca_file is trusted for: the storage its
    #: blobs redirect to
    ca_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: UpstreamConfig | NamedUpstreamConfig) -> Upstream:
        credentials = None
        if config.username is not None and config.password is not None:
            credentials = (config.username, config.password)
        if isinstance(config, NamedUpstreamConfig):
            return cls(
                config.registry,
                config.auth_realm,
                config.library_prefix,
                credentials,
                config.name,
                config.hosts,
                config.ca_file,
                config.ca_origins,
            )
        return cls(
            config.registry,
            config.auth_realm,
            config.library_prefix,
            credentials,
            ca_file=config.ca_file,
            ca_origins=config.ca_origins,
        )

    @property
    def is_default(self) -> bool:
        """``[upstream]``: what a request naming no upstream gets."""
        return self.name == DEFAULT_NAME

    @property
    def host(self) -> str:
        """The upstream's identity in logs, health and cache keys: ``registry-1.docker.io``
        (lower case, no default port: ``docxy.core.hosts``)."""
        return url_host(self.registry)

    def url(self, path: str) -> str:
        return self.registry + path

    def login_may_go_to(self, realm: str) -> bool:
        """Whether a login (the mirror's own, a client's password or refresh token) may be
        sent to the token service ``realm``: an HTTPS one; or a plain-HTTP one for a
        plain-HTTP registry, whose tokens travel in clear anyway; or the ``auth_realm`` the
        operator configured. An HTTPS registry whose challenge names a plain-HTTP token
        service (a misconfigured registry, or an answer changed on the way) does not get a
        login sent in clear text on its word."""
        scheme = urlsplit(realm).scheme.lower()
        if scheme == "https" or realm == self.auth_realm:
            return True
        return urlsplit(self.registry).scheme.lower() == "http"


def clear_realm_remedy(realm: str) -> str:
    """What an operator can do about a plain-HTTP token service an HTTPS registry names (no
    query, no login in it: for logs and error bodies)."""
    parts = urlsplit(canonical_url(realm))
    secure = urlunsplit(("https", parts.netloc, parts.path, "", ""))
    clear = urlunsplit(("http", parts.netloc, parts.path, "", ""))
    return (
        f"if it answers over HTTPS, set the upstream's auth_realm to {secure}; set it to "
        f"{clear} to send logins in clear text anyway"
    )


class ProbeTrouble(UpstreamUnavailable):
    """The upstream's ``/v2/`` answered a probe 429 or 5xx: trouble of its own, which says
    nothing of its auth (the challenge it last answered with may well stand)."""


class AnswerTooLarge(UpstreamUnavailable):
    """An answer :func:`read_small` read to its bound and no further (a manifest over 4 MiB):
    no trouble of the upstream's, but one the mirror does not hold (its client's own request
    may get it, relayed)."""


@dataclass(slots=True)
class UpstreamHealth:
    """What the mirror last saw of an upstream."""

    last_ok: float | None = None
    last_error: float | None = None
    last_error_message: str | None = None
    ratelimit_limit: str | None = None
    ratelimit_remaining: str | None = None
    reachable: bool | None = None  # None until tried; then whether the latest attempt got through
    # See the property: None until tried; False after a failure or a 429/5xx answer
    _healthy: bool | None = None
    stale_served: int = 0
    last_stale: float | None = None
    #: by kind: timeout, unreachable, rate_limited (429), server_error (5xx), broke_off (a
    #: blob's body that kept breaking off: docxy.pull.blobs), bad_answer (one not read)
    failures: Counter[str] = field(default_factory=Counter)
    recent_failures: deque[tuple[float, str, str]] = field(
        default_factory=lambda: deque(maxlen=20)
    )  # (when, kind, message), for the status page

    #: whether the mirror's own latest answer was a 429 (its own account's, or its address's,
    #: rate limit), which only its own requests can tell is over, or the time it stands
    _limited: bool = False
    last_limited: float | None = None  # when the mirror's own request was last answered 429
    limited_until: float | None = None  # when its limit is taken to be over (while it stands)
    #: what the upstream's ``/v2/`` said when it last answered as no registry does (neither
    #: 200 nor 401, nor a 429/5xx, trouble of their own): a wrong ``upstream.registry``, a web
    #: site's 404. It stands until a ``/v2/`` answers as a registry (:meth:`probed`): the
    #: pulls' own answers then (a 404 each) say nothing of it.
    not_registry: str | None = None
    #: the mirror's own login (``upstream.username``), as the token service last judged it:
    #: ``accepted``, ``refused``, or None (no login, or not asked yet); and since when it has
    #: been refused (:meth:`login_judged`)
    login: str | None = None
    login_refused_since: float | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    @property
    def healthy(self) -> bool | None:
        """None until tried; False after a failure or a 429/5xx answer, until an answer that
        gets through, or the end of the mirror's own rate limit (:attr:`limited`); False while
        the upstream's ``/v2/`` answers as no registry does (:attr:`not_registry`)."""
        self._limit_over()
        return False if self.not_registry is not None else self._healthy

    @healthy.setter
    def healthy(self, value: bool | None) -> None:
        self._healthy = value

    @property
    def limited(self) -> bool:
        """Whether the mirror's own rate limit stands: from its own 429 until an own pull gets
        through, or until the time the 429's ``Retry-After`` gave (:data:`RATE_LIMIT_HOLD`
        without one; :data:`RATE_LIMIT_MAX` at most). Nothing asks the upstream to find out:
        an idle mirror spends no pull of its quota, and is not "degraded" for ever."""
        self._limit_over()
        return self._limited

    def _limit_over(self) -> None:
        if not self._limited or self.limited_until is None or self.clock() < self.limited_until:
            return
        self._limited, self.limited_until = False, None
        if self.last_error == self.last_limited:  # the 429 was the last trouble: it is over
            self._healthy = True

    def _limit(self, retry_after: str | None) -> None:
        now = self.clock()
        wait = retry_after_seconds(retry_after, now)
        hold = RATE_LIMIT_HOLD if wait is None else min(wait, RATE_LIMIT_MAX)
        self._limited, self.last_limited, self.limited_until = True, now, now + hold

    def ok(self) -> None:
        self.last_ok = self.clock()
        self.reachable = self.healthy = True

    def answered(
        self, status: int, own: bool = True, pull: bool = True, retry_after: str | None = None
    ) -> None:
        """An answer came back: a 429/5xx (:data:`SERVER_TROUBLE`) is an outage for the
        routes, which serve stale on it, so for health too.

        Not ``own`` (made with a client's credentials): its 429 is that client's account's
        rate limit, which says nothing about the mirror's, so it only says the upstream
        answered; and a success does not end the mirror's own rate limit. Nor does an answer
        that is not to a ``pull`` (a manifest or blob request): ``/v2/`` and the token service
        answer whatever the pull limit. A 5xx is the upstream's trouble whoever asked.
        ``retry_after``: the answer's ``Retry-After``, how long an own 429's limit stands."""
        if status == 429 and not own:
            self.reachable = True
            return
        if status in SERVER_TROUBLE:  # docxy_upstream_errors_total, under this upstream
            self.failures["rate_limited" if status == 429 else "server_error"] += 1
            self.reachable = True
            self.healthy = False
            self.last_error = self.clock()
            self.last_error_message = f"the upstream answered {status}"
            if own and status == 429:
                self._limit(retry_after)
                self.last_error = self.last_limited
            return  # a 5xx says nothing of the limit: it stands (:attr:`limited`)
        if own and pull:
            self._limited, self.limited_until = False, None
        if self.limited:  # a client's login got through, or /v2/ answered: the limit stands
            self.reachable = True
            self.last_ok = self.clock()
        else:
            self.ok()

    def probed(self, status: int, host: str | None = None) -> None:
        """The mirror's own ``/v2/`` was answered ``status`` (:meth:`answered` has it too).
        An answer as no registry gives is one of the status page's recent errors (kind
        ``not_registry``, naming ``host``) when it starts, or changes: not again at each
        probe that finds it so (they would push every other error off the list)."""
        if status in (200, 401):
            self.not_registry = None
        elif status not in SERVER_TROUBLE:
            said = f"the upstream answered {status} on /v2/"
            now = self.clock()
            if said != self.not_registry:
                where = host or "the upstream"
                message = f"{where} answered {status} on /v2/, as no registry does"
                self.recent_failures.append((now, "not_registry", message))
            self.not_registry = said
            self.last_error, self.last_error_message = now, said

    def login_judged(self, accepted: bool) -> str | None:
        """The token service accepted the mirror's login, or refused it: what it was before
        (``refused`` twice in a row keeps the first time as :attr:`login_refused_since`)."""
        before = self.login
        self.login = "accepted" if accepted else "refused"
        if accepted:
            self.login_refused_since = None
        elif before != "refused":
            self.login_refused_since = self.clock()
        return before

    def served_stale(self) -> None:
        """The cache answered for an upstream that failed (stale-if-error)."""
        self.stale_served += 1
        self.last_stale = self.clock()

    def saw(self, headers: httpx.Headers) -> None:
        """The rate-limit headers of an answer to the mirror's own request."""
        if "ratelimit-remaining" in headers:
            self.ratelimit_remaining = headers["ratelimit-remaining"]
            self.ratelimit_limit = headers.get("ratelimit-limit")

    def answered_badly(self, message: str) -> None:
        """The upstream answered, in a way the mirror cannot read (a transfer coding but
        ``chunked``): reached, but failing, as a 5xx is: degraded until its next good
        answer, counted (kind ``bad_answer``), one of the status page's recent errors. Never
        ``unreachable``: docxy_upstream_up stays 1."""
        self.reachable, self.healthy = True, False
        self.last_error, self.last_error_message = self.clock(), message
        self.failures["bad_answer"] += 1
        self.recent_failures.append((self.last_error, "bad_answer", message))

    def failed(self, message: str, kind: str = "unreachable") -> None:
        self.last_error = self.clock()
        self.last_error_message = message
        self.reachable = self.healthy = False
        self.failures[kind] += 1
        self.recent_failures.append((self.last_error, kind, message))

    def as_dict(self) -> dict[str, object]:
        return {
            "reachable": self.reachable,
            "last_ok": utc_stamp(self.last_ok),
            "last_error": utc_stamp(self.last_error),
            "last_error_message": self.last_error_message,
            "ratelimit_limit": self.ratelimit_limit,
            "ratelimit_remaining": self.ratelimit_remaining,
            "rate_limited_until": utc_stamp(self.limited_until if self.limited else None),
            "last_rate_limited": utc_stamp(self.last_limited),
            "stale_served": self.stale_served,
            "last_stale": utc_stamp(self.last_stale),
            "login": self.login,
            "login_refused_since": utc_stamp(self.login_refused_since),
        }


def is_pull(url: str) -> bool:
    """Whether ``url`` asks for a manifest or a blob (what a registry's pull limit counts),
    not ``/v2/`` or a token."""
    return PULL_PATH.search(urlsplit(url).path) is not None


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port (``https://x`` is ``https://x:443``)."""
    return origin(a) == origin(b)


def upgraded(a: str, b: str) -> bool:
    """Whether ``b`` is ``a``'s own origin upgraded to HTTPS: ``http://`` to ``https://`` on
    the same host, each on its scheme's default port or both on the same one (a token service
    or registry sending its plain-HTTP URL to its TLS self). Never HTTPS to plain HTTP, nor
    another host or port. Raises ValueError for a port out of range."""
    scheme_a, host_a, port_a = origin(a)
    scheme_b, host_b, port_b = origin(b)
    if (scheme_a, scheme_b) != ("http", "https") or host_a is None or host_a != host_b:
        return False
    return port_a == port_b or (port_a == 80 and port_b == 443)


def next_hop(
    url: str, location: str | None, headers: list[tuple[str, str]]
) -> tuple[str, list[tuple[str, str]]]:
    """Where a redirect from ``url`` leads, and the headers to send there.

    ``Authorization`` is dropped on a hop to another origin, but for the same one upgraded to
    HTTPS (:func:`upgraded`: Docker's client keeps it on a redirect to the same host; dropped
    there, a token service redirecting its ``http://`` realm to its ``https://`` self never
    saw the mirror's login, and its ``401`` to the request without it was taken for the
    password refused). Raises :class:`UpstreamUnavailable` for a missing, malformed or
    non-HTTP ``Location``.
    """
    if not location:
        raise UpstreamUnavailable("the upstream sent a redirect without a Location")
    try:
        next_url = urljoin(url, location)
        kept_login = same_origin(url, next_url) or upgraded(url, next_url)
    except ValueError:  # e.g. a port out of range
        raise UpstreamUnavailable("the upstream redirected to a malformed URL") from None
    if urlsplit(next_url).scheme not in ("http", "https"):
        raise UpstreamUnavailable("the upstream redirected to a non-HTTP URL")
    return next_url, redirect_headers(headers, kept_login)


class HeadersTimeout(httpx.ReadTimeout):
    """An answer's status line and headers did not come whole by :func:`headers_deadline`."""


def headers_deadline(timeout: httpx.Timeout) -> float | None:
    """How long a request may wait for its answer's headers, whole: its client's timeouts
    added up (a free connection, the connect, the request's write, the answer's first read);
    None when one of them is unbounded. httpx applies each to one step or one read only, and
    a registry sending its headers a byte at a time, each byte inside the read timeout, held
    the request (a manifest's fetch, a token's: shared by every miss that wants it) as long
    as it kept on."""
    parts = (timeout.pool, timeout.connect, timeout.write, timeout.read)
    return None if any(part is None for part in parts) else sum(p or 0.0 for p in parts)


#: Bytes asked of an upstream connection per read. httpcore asks for 64 KiB, and each read costs
#: a trip through anyio, httpcore and h11 on the event loop: on a cold pull that was the
#: bottleneck (#12). Asking for more lets one read take whatever the event loop's transport
#: holds (up to 256 KiB on plain HTTP; a TLS upstream still yields one 16 KiB record per read).
UPSTREAM_READ_SIZE = 1024 * 1024


def upstream_ssl_context() -> ssl.SSLContext:
    """The TLS settings of every upstream connection: httpx's defaults (certifi's CAs,
    verification and hostname checks on), made once so that the fills' direct GETs use the very
    same context, with the same verify flags on every Python.

    Python 3.13's ``ssl.create_default_context`` (which httpx calls) sets
    ``VERIFY_X509_STRICT`` and ``VERIFY_X509_PARTIAL_CHAIN``; 3.11 and 3.12 set neither. Strict
    refuses chains Docker's Go client accepts, such as a hand-made certificate without an
    Authority Key Identifier, or any chain to a root without a Subject Key Identifier (one of
    certifi's own, TWCA Global Root CA, has none), so a registry worked through the mirror on
    one Python and not on another: it is cleared, and the mirror accepts what Docker accepts.
    Partial chains are
    allowed everywhere, as Go does: any certificate in the store is a trust anchor, self-signed
    or not. For a chain that ends in one of certifi's roots (self-signed, every one) that
    changes nothing; clearing it instead would change 3.13's behaviour for no gain.
    """
    context = httpx.create_ssl_context(trust_env=False)
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


#: Connections the shared client holds open at once, across upstreams: a request past them
#: waits up to the connect timeout for one (then 503: the mirror's limit, not the upstream's).
MAX_CONNECTIONS = 200
#: Seconds between two log lines saying so.
POOL_FULL_LOG_EVERY = 60.0


def make_http_client(
    config: UpstreamConfig,
    transport: httpx.AsyncBaseTransport | None = None,
    ssl_context: ssl.SSLContext | None = None,
    trust: UpstreamTrust | None = None,
) -> httpx.AsyncClient:
    """The shared upstream client. ``trust`` (when an upstream has a ``ca_file``): each new
    connection verifies with the context of its origin (:class:`UpstreamTrust`), in the
    one pool; each connection of a redirect's hop to a host name is made under the hop's
    guard (:class:`~docxy.upstream.redirects.GuardedPool`: a public upstream's hop connects
    only to public addresses); ``transport`` (tests' fakes) replaces the network, and with it
    any of that."""
    # httpcore has no setting for its read size; its class attribute is the knob (process-wide,
    # and this is the process's one upstream client).
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = UPSTREAM_READ_SIZE
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.read_timeout,
        pool=config.connect_timeout,
    )
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=50)
    verify = ssl_context if ssl_context is not None else upstream_ssl_context()
    if transport is None and trust is not None and trust.extends:
        transport = trusting_transport(trust, limits)
    elif transport is None:
        transport = guarded_transport(verify, limits)
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        # Only the codings read_small inflates with a bound (httpx would add br and zstd
        # once their packages are installed).
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPTED},
        limits=limits,
        trust_env=False,
        verify=verify,
        transport=transport,
        # Keeps no cookie: one client carries every client's requests and the mirror's own,
        # so a cookie set for one (a session after someone's login) would ride on all of them.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


class UpstreamClient:
    """Sends requests upstream through the shared client; maps failures to registry errors.

    ``direct`` set: cache fills make their blob GET with ``http.client`` and read the body in a
    worker thread (:mod:`docxy.upstream.direct`); None: everything goes through ``http``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        direct: DirectSettings | None = None,
        trust: UpstreamTrust | None = None,
    ) -> None:
        self.http = http
        self.direct = direct
        #: told the realm each probe finds, for the CAs its origin is verified with
        self.trust = trust
        self.health: dict[str, UpstreamHealth] = {}
        #: origins that failed at the connection lately: requests to them fail fast
        self.outages = Outages()
        #: Basic-only upstream hosts whose registry refused the mirror's own Basic login (a
        #: ``401`` to ``GET /v2/`` with it; a repository's ``401`` is not the login's): when
        #: (:meth:`basic_login_withheld`)
        self._basic_refused: dict[str, float] = {}
        #: Whether each upstream's own host is non-public (the redirect rule's), kept a few
        #: minutes; the direct GETs' own, when they have settings, so one lookup serves both.
        self.verdicts = direct.verdicts if direct is not None else RegistryVerdicts()
        #: Told ``(url, status, asked)`` of every answer a direct GET got, each redirect hop
        #: included, ``asked`` the URL of its first hop (the httpx client's own ``response``
        #: event hooks see the rest).
        self.direct_listeners: list[Callable[[str, int, str], None]] = []
        self._realms: dict[str, tuple[float, Challenge | None]] = {}
        self._open: set[str] = set()  # hosts whose last probe got 200: no auth at all
        self._probes: Coalesced[str, Challenge | None] = Coalesced(UpstreamError)
        self._probe_failed: dict[str, float] = {}  # host: monotonic time of its latest failure
        #: ``GET /v2/`` with the mirror's Basic login in flight, one per host: is a
        #: repository's ``401`` the login's? (:meth:`_basic_login_answered`)
        self._basic_checks: Coalesced[str, None] = Coalesced(UpstreamError)
        #: Tokens the mirror's token endpoint relayed for anonymous pulls: a request carrying
        #: one is the mirror's own as far as the upstream's health goes.
        self.anonymous_tokens = AnonymousTokens()
        #: Every token the mirror's token endpoint relayed, with the upstream it was for: one
        #: is never passed through to another upstream (:mod:`docxy.upstream.issuers`).
        self.token_issuers = TokenIssuers()
        self._pool_full_logged = -POOL_FULL_LOG_EVERY  # monotonic time of the last such line
        self._pool_full_unlogged = 0  # 503s for a full pool since that line
        self._pool_full_said = ""  # the latest of them: which request, which wait
        self._pool_full_due: asyncio.TimerHandle | None = None  # their line, if none follows

    def health_of(self, upstream: Upstream) -> UpstreamHealth:
        return self.health.setdefault(upstream.host, UpstreamHealth())

    async def send(
        self,
        upstream: Upstream,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        *,
        params: httpx.QueryParams | None = None,
        content: bytes | None = None,
        mirror_credentials: bool = False,
        client_credentials: bool = False,
        token_service: bool = False,
    ) -> httpx.Response:
        """Send and follow redirects (where :mod:`docxy.upstream.redirects` lets them lead:
        never from HTTPS to plain HTTP, nor from a public upstream to a non-public address);
        the caller must ``aclose()`` the response.

        ``Authorization`` is dropped on a hop to another origin (a CDN's signed URL refuses
        it); ``Range`` and the other headers are kept. ``params`` go with the first hop only.
        ``content`` (a token form) goes on with a ``307`` or ``308`` on the same origin, which
        keep the method and its body (RFC 9110 15.4.8); a ``303``, or a ``301``/``302`` of a
        ``POST``, makes the next hop a ``GET`` without it, and no hop to another origin gets it.

        ``client_credentials`` says the request carries a client's credential elsewhere (a
        refresh token in its form). Else an ``Authorization`` is a client's unless
        ``mirror_credentials`` says it is the mirror's own (:mod:`docxy.upstream.tokens`) or
        it carries a token the mirror's token endpoint handed out for an anonymous pull
        (:mod:`docxy.upstream.anonymous`: the mirror's address asks then). The answers to a
        client's credentials tell the upstream's health only what is not about that client's
        account (its rate limit, and the ``ratelimit-*`` headers, are not the mirror's).

        ``token_service``: ``url`` is the upstream's token service (from
        :meth:`auth_realm`). Unless the operator set it (``auth_realm``), the realm came from
        the upstream's ``/v2/`` challenge, and is judged as a redirect hop from the registry
        (:mod:`docxy.upstream.redirects`): a public upstream's realm at a non-public address
        (or a name resolving only there) is not asked, nor an HTTPS registry's plain-HTTP
        realm but between non-public hosts or on the registry's own host (any port: Harbor
        behind a TLS-terminating proxy names ``http://<its host>/service/token``; asked
        anonymously there, the login withheld by the callers, its redirect to https followed).
        It was asked wherever it pointed (a metadata service, the mirror's admin port), its
        answer's errors relayed.

        Not sent while ``url``'s origin is taken to be down (:mod:`docxy.upstream.outage`)
        and another request is its probe: the failure that marked it down is raised again.
        """
        health = self.health_of(upstream)
        with self.outages.attempt(upstream.host, url, health.failed):
            return await self._send(
                upstream,
                method,
                url,
                headers,
                params=params,
                content=content,
                mirror_credentials=mirror_credentials,
                client_credentials=client_credentials,
                token_service=token_service,
            )

    async def _send(
        self,
        upstream: Upstream,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        *,
        params: httpx.QueryParams | None,
        content: bytes | None,
        mirror_credentials: bool,
        client_credentials: bool,
        token_service: bool,
    ) -> httpx.Response:
        """:meth:`send`'s hops, its first one's failure at the connection or answer told to
        :attr:`outages`."""
        health = self.health_of(upstream)
        own = not client_credentials and (mirror_credentials or self._anonymous(headers))
        pull = is_pull(url)
        current_headers = headers
        marks: dict[str, object] = {ASKED_PATH: urlsplit(url).path}  # for the response hooks
        if not own:
            marks[CLIENT_CREDENTIALS] = True
        first = url
        over_https = False  # some hop went over HTTPS: none goes to plain HTTP (redirects)
        if token_service and url != upstream.auth_realm:  # a challenge's: a hop from /v2/
            # On the registry's own host (Harbor behind a TLS proxy names its inner http://
            # realm) it is judged from a plain-HTTP start: asked anonymously (the caller
            # withholds the login, Upstream.login_may_go_to), never inside for a public one.
            over_https = urlsplit(upstream.registry).scheme.lower() == "https"
            over_https = over_https and not on_registry_host(url, upstream.registry)
            await self._guard_first(upstream, url, over_https, marks)
        for hop in range(MAX_REDIRECTS + 1):
            try:
                response = await self._sent(method, url, current_headers, params, content, marks)
            except httpx.PoolTimeout as exc:
                # Every connection is busy with other answers (a crowd of pass-through
                # streams): the mirror's own limit. The upstream is no less healthy for it
                # (one that stalls those answers is found out by their read timeouts).
                said = failure(f"{method} {url_host(url)}", exc)
                self._log_pool_full(said)
                raise UpstreamBusy(
                    f"all {MAX_CONNECTIONS} of the mirror's connections to the upstream are in "
                    f"use ({said}): try again"
                ) from exc
            except httpx.TimeoutException as exc:
                said = failure(f"{method} {url_host(url)}", exc)  # which wait, how long
                health.failed(said, "timeout")
                if hop == 0 and isinstance(exc, httpx.ConnectTimeout):  # no connection
                    self.outages.failed(upstream.host, url, said, timeout=True)
                silent = UpstreamTimeout if same_origin(url, first) else HopTimeout
                raise silent(f"the upstream registry did not answer in time ({said})") from exc
            except NonPublicOnly as exc:  # a hop's name resolved inside: a bad redirect
                raise UpstreamUnavailable(str(exc)) from exc
            except (httpx.TransportError, httpx.InvalidURL, ssl.SSLError) as exc:
                unread = unread_coding(exc)  # h11 refused the answer: it came, badly
                if unread is not None:
                    said = f"the upstream registry's answer ({url_host(url)}) has a "
                    said += f"Transfer-Encoding which is not read (only chunked is): {unread}"
                    health.answered_badly(said)
                    raise UpstreamUnavailable(said) from exc
                # ssl.SSLError: httpcore before 1.0.6 let a handshake's own error through
                refused = upstream_certificate_refused(url, exc, self.trust)
                health.failed(refused or f"{type(exc).__name__} talking to {url_host(url)}")
                if hop == 0 and isinstance(exc, httpx.ConnectError):  # refused, unreachable
                    said = refused or failure(f"{method} {url_host(url)}", exc)
                    self.outages.failed(upstream.host, url, said, timeout=False)
                if refused is not None:
                    raise UpstreamUnavailable(refused) from exc
                raise UpstreamUnavailable(
                    f"cannot reach the upstream registry ({url_host(url)}): {type(exc).__name__}"
                ) from exc
            if hop == 0:
                self.outages.answered(upstream.host, url)
            health.answered(response.status_code, own, pull, response.headers.get("retry-after"))
            if own:
                health.saw(response.headers)
            if response.status_code not in REDIRECT_STATUSES:
                if mirror_credentials and not token_service:
                    return await self._basic_login_answered(
                        upstream, first, current_headers, response
                    )
                return response
            location = response.headers.get("location")
            await response.aclose()
            previous = url
            url, current_headers = next_hop(url, location, current_headers)
            over_https = over_https or urlsplit(previous).scheme.lower() == "https"
            refused = await self._hop_refused(upstream, url, over_https)
            if refused is not None:
                raise UpstreamUnavailable(refused)
            lookup = self.http.timeout.connect or LOOKUP_SECONDS
            guard = hop_guard(
                url,
                registry=upstream.registry,
                listed=upstream.ca_origins,
                lookup_seconds=lookup,
                verdicts=self.verdicts,
                over_https=over_https,
            )
            marks.pop(HOP_GUARD, None)
            if guard is not None:  # its connection goes only where the guard allows
                marks[HOP_GUARD] = guard
            status = response.status_code
            if status == 303 or (status in (301, 302) and method == "POST"):
                # RFC 9110 15.4: a GET then (a POST after a 301 or 302, as every client does)
                method = "GET" if method != "HEAD" else "HEAD"
                content = None
            elif not same_origin(previous, url):
                content = None  # a form (a password, a refresh token) stays on its origin
            params = None  # the Location carries its own query
        raise UpstreamUnavailable(f"the upstream redirected more than {MAX_REDIRECTS} times")

    async def _guard_first(
        self, upstream: Upstream, realm: str, over_https: bool, marks: dict[str, object]
    ) -> None:
        """The token service ``realm`` a challenge named, judged as a hop from the registry
        (``over_https``: the registry is HTTPS): refused (:class:`UpstreamUnavailable`, saying
        what the operator can do), or its :class:`~docxy.upstream.redirects.HopGuard` put in
        ``marks`` for its connection. Nothing is sent when refused, and the upstream's health
        hears nothing of it."""
        refused = await self._hop_refused(upstream, realm, over_https, realm=True)
        if refused is not None:
            if downgrade(realm, over_https):
                refused = f"{refused}; {clear_realm_remedy(realm)}"
            raise UpstreamUnavailable(refused)
        guard = hop_guard(
            realm,
            registry=upstream.registry,
            listed=upstream.ca_origins,
            lookup_seconds=self.http.timeout.connect or LOOKUP_SECONDS,
            verdicts=self.verdicts,
            over_https=over_https,
            realm=True,
        )
        if guard is not None:
            marks[HOP_GUARD] = guard

    async def _hop_refused(
        self, upstream: Upstream, url: str, over_https: bool, *, realm: bool = False
    ) -> str | None:
        """Why a redirect to ``url`` is not followed (:func:`~docxy.upstream.redirects.
        hop_refusal`), or None. Off the event loop when the rule may look the upstream's host
        name up (a hop to a non-public address, or to plain HTTP after HTTPS, whose upstream's
        verdict is not kept yet)."""
        lookup = self.http.timeout.connect or LOOKUP_SECONDS
        refusal = partial(
            hop_refusal,
            url,
            over_https=over_https,
            registry=upstream.registry,
            listed=upstream.ca_origins,
            lookup_seconds=lookup,
            verdicts=self.verdicts,
            realm=realm,
        )
        if may_look_up(url, over_https) and self.verdicts.known(upstream.registry) is None:
            return await asyncio.to_thread(refusal)
        return refusal()

    async def _sent(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        params: httpx.QueryParams | None,
        content: bytes | None,
        marks: dict[str, object],
    ) -> httpx.Response:
        """One hop's request; a ``GET`` or ``HEAD`` whose connection broke before any answer
        is sent once more. httpx takes a kept connection from its pool, and a server whose
        keep-alive timeout ran out as the request came closes it unanswered: httpx raises
        (``Server disconnected without sending a response``) and never retries, so a pull was
        answered 502 and the upstream counted unreachable for a race every keep-alive server
        has. The second try finds that connection gone (a new one, or another kept one the
        server has not closed); a second failure is the caller's."""
        within = headers_deadline(self.http.timeout)
        for attempt in (1, 2):
            request = self.http.build_request(
                method, url, headers=headers, params=params, content=content, extensions=marks
            )
            try:
                async with asyncio.timeout(within):
                    return await self.http.send(request, stream=True)
            except TimeoutError as exc:  # asyncio.timeout's: the headers trickled
                assert within is not None
                said = f"the answer's headers did not come whole within {within:g}s"
                raise HeadersTimeout(said, request=request) from exc
            except BROKE_BEFORE_ANSWER as exc:
                # Not once the client is closed (the mirror stopping cut the connection): the
                # second try raised httpx's RuntimeError, a traceback in the stop's log.
                if attempt == 2 or method not in RETRIED_METHODS or self.http.is_closed:
                    raise
                if unread_coding(exc) is not None:  # an answer, not a broken connection
                    raise
                log.debug("upstream: %s, sent again", failure(f"{method} {url_host(url)}", exc))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _basic_login_answered(
        self,
        upstream: Upstream,
        first: str,
        headers: list[tuple[str, str]],
        response: httpx.Response,
    ) -> httpx.Response:
        """The registry's answer to a request of the mirror's own with its Basic login (an
        upstream without a token service: :meth:`MirrorTokens.headers`, or ``basic_login``
        for a request passed through), ``headers`` those its last hop carried (a redirect's
        ``3xx`` says nothing of the login; a hop to another origin went without it).
        :attr:`UpstreamHealth.login` says on ``/health`` what it told: a ``2xx`` let the login
        in; a ``401`` to ``GET /v2/`` (``first``) refused it (``upstream.password`` wrong or
        revoked). A ``401`` to a repository may be that repository's only (one the account
        may not read, or a name the registry hides behind ``401``): it was taken for the login
        refused, and ``/health`` flapped between accepted and refused with each pull, a
        WARNING each time. It is asked of ``/v2/`` with the login now, one request per
        upstream at a time (:meth:`_check_basic_login`), unless the login stands refused
        already. One WARNING and one recent error when it comes to be refused, one INFO line
        when accepted again. (The token service's verdicts are :mod:`docxy.upstream.tokens`'.)

        Returns ``response``, or the same answer read (:func:`held_answer`) when a check
        went: the ``401`` held its connection through the check, which needs one of its own
        (on a full pool each ``401`` waited the pool timeout, and got no verdict), and a
        client gone meanwhile left it open for good, lost to the pool."""
        status = response.status_code
        if upstream.credentials is None:
            return response
        sent = next((v for k, v in headers if k.lower() == "authorization"), "")
        if not sent.lower().startswith("basic "):
            return response
        health = self.health_of(upstream)
        user = upstream.credentials[0]
        if status == 401 and first != upstream.url("/v2/"):
            if health.login != "refused":  # a wrong login's, or this repository's: ask /v2/
                response = await held_answer(response)  # its connection free for the check
                name = f"basic login check {upstream.host}"
                check = partial(self._check_basic_login, upstream, sent)
                try:
                    await self._basic_checks.run(upstream.host, name, check)
                except UpstreamError:
                    pass  # no word on the login: the 401 stands for the repository
                except BaseException:  # the client gone (cancelled), or a fault
                    await response.aclose()
                    raise
        elif status == 401:
            self._basic_refused[upstream.host] = time.monotonic()  # held: basic_login_withheld
            if health.login_judged(False) == "refused":
                log.debug(
                    "%s answered 401 to the mirror's own Basic login (%s) still",
                    upstream.host,
                    user,
                )
                return response
            said = (
                f"{upstream.host} answered 401 to the mirror's own Basic login ({user}): its "
                "password is wrong or revoked"
            )
            log.warning("%s", said)
            health.recent_failures.append((health.clock(), "login_refused", said))
        elif 200 <= status < 300:
            self._basic_refused.pop(upstream.host, None)
            if health.login_judged(True) == "refused":
                log.info("%s accepted the mirror's own Basic login (%s) again", upstream.host, user)
        return response

    async def basic_login_withheld(self, upstream: Upstream, login: str, hold: float) -> bool:
        """Whether the mirror's own Basic ``login`` is kept from a Basic-only upstream now: its
        registry refused it (:meth:`_basic_login_answered`) less than ``hold`` seconds ago.
        It went with every request, a failed login on the account each (Nexus, Artifactory
        lock one). Past the hold, ``GET /v2/`` with it is the next check, one per upstream at
        a time (:meth:`_check_basic_login`), the requests meanwhile waiting for its verdict:
        a ``401`` holds it back again, a ``2xx`` lets it go with them all; a check that says
        nothing (``5xx``, no answer in time, a broken connection) holds it back another
        ``hold`` too (the registry may have counted it a failed login: a slow login backend
        answered every few seconds would lock the account), and they go without it. The
        check itself marks that, as it ends, so that no request between its end and its
        waiters' turn starts another."""
        host = upstream.host
        since = self._basic_refused.get(host)
        if since is None:
            return False
        if time.monotonic() - since < hold:
            return True

        async def check() -> None:
            try:
                await self._check_basic_login(upstream, login)
            finally:
                if self._basic_refused.get(host) == since:  # neither refused again nor accepted
                    self._basic_refused[host] = time.monotonic()

        try:
            await self._basic_checks.run(host, f"basic login check {host}", check)
        except UpstreamError:
            pass  # no word on the login: held back still
        return host in self._basic_refused

    async def _check_basic_login(self, upstream: Upstream, login: str) -> None:
        """``GET /v2/`` with the mirror's Basic ``login``: judged as it is answered
        (:meth:`_basic_login_answered`: ``401`` refused, ``2xx`` accepted)."""
        answer = await self.send(
            upstream,
            "GET",
            upstream.url("/v2/"),
            [("Authorization", login)],
            mirror_credentials=True,
        )
        await answer.aclose()

    def _log_pool_full(self, said: str) -> None:
        """One WARNING a minute at most: a crowd that fills the pool would write one a request.
        A line tells one refusal and how many more there were since the line before; a
        refusal held back has its line at the end of the minute (from a timer, with the latest
        reason) if no refusal after that minute has told it first, and at :meth:`close`."""
        now = time.monotonic()
        self._pool_full_said = said
        if now - self._pool_full_logged >= POOL_FULL_LOG_EVERY:
            self._write_pool_full(now)
            return
        self._pool_full_unlogged += 1
        if self._pool_full_due is None:
            wait = self._pool_full_logged + POOL_FULL_LOG_EVERY - now
            loop = asyncio.get_running_loop()
            self._pool_full_due = loop.call_later(wait, self._pool_full_minute_over)

    def _pool_full_minute_over(self) -> None:
        self._pool_full_due = None
        if self._pool_full_unlogged:
            self._pool_full_unlogged -= 1  # the latest is the line's own
            self._write_pool_full(time.monotonic())

    def _write_pool_full(self, now: float) -> None:
        since = ""
        if self._pool_full_unlogged:
            since = f"; {self._pool_full_unlogged} more refused since the last such line"
        self._pool_full_logged, self._pool_full_unlogged = now, 0
        if self._pool_full_due is not None:  # told here
            self._pool_full_due.cancel()
            self._pool_full_due = None
        log.warning(
            "upstream: all %d connections in use, requests refused with 503 (%s)%s",
            MAX_CONNECTIONS,
            self._pool_full_said,
            since,
        )

    def close(self) -> None:
        """The app stops: refusals not told yet are told now (no timer outlives the app)."""
        if self._pool_full_due is not None:
            self._pool_full_due.cancel()
            self._pool_full_minute_over()

    def _anonymous(self, headers: list[tuple[str, str]]) -> bool:
        """Whether a request with ``headers`` asks as nobody in particular: without
        ``Authorization``, or with an anonymous token of the mirror's endpoint."""
        sent = [value for key, value in headers if key.lower() == "authorization"]
        return all(self.anonymous_tokens.holds(value) for value in sent)

    async def challenge(self, upstream: Upstream, *, refresh: bool = False) -> Challenge | None:
        """The upstream's own ``/v2/`` Bearer challenge (cached), or ``None`` if it has none.

        Concurrent callers share one probe (a cold start's first misses ask once, not once
        each); a failure reaches them all and is not remembered.
        """
        cached = self._realms.get(upstream.host)
        if cached is not None and time.monotonic() - cached[0] < REALM_TTL and not refresh:
            return cached[1]
        host = upstream.host
        try:
            return await self._probes.run(host, f"probe {host}", lambda: self._probe(upstream))
        except UpstreamError:
            self._probe_failed[host] = time.monotonic()
            raise

    async def challenge_unless_failed(self, upstream: Upstream) -> bool:
        """Probe the upstream's ``/v2/`` unless a probe failed within :data:`PROBE_RETRY`:
        whether it answered (:meth:`probed` then says so). For a request that would like its
        challenge but can go on without it."""
        failed = self._probe_failed.get(upstream.host)
        if failed is not None and time.monotonic() - failed < PROBE_RETRY:
            return False
        try:
            await self.challenge(upstream)
        except UpstreamError:
            return False
        return True

    @property
    def probes_joined(self) -> int:
        """Callers that waited for another's ``/v2/`` probe instead of sending their own."""
        return self._probes.joined

    async def _probe(self, upstream: Upstream) -> Challenge | None:
        """One ``/v2/`` GET; its challenge kept (a failure raises, and is not kept)."""
        now = time.monotonic()
        response = await self.send(upstream, "GET", upstream.url("/v2/"), [])
        await response.aclose()
        self.health_of(upstream).probed(response.status_code, upstream.host)
        if response.status_code not in (200, 401):
            # Not an answer about auth (429/5xx, odd 4xx): try again next time.
            said = f"the upstream answered {response.status_code} on /v2/"
            if response.status_code in SERVER_TROUBLE:
                raise ProbeTrouble(said)
            raise UpstreamUnavailable(said)
        found = None
        if response.status_code == 401:  # the Bearer one, beside Basic or alone
            found = bearer_challenge(response.headers.get_list("www-authenticate"))
            self._open.discard(upstream.host)
        else:
            self._open.add(upstream.host)
        if self.trust is not None:
            self.trust.learned(upstream, found.realm if found is not None else None)
        self._realms[upstream.host] = (now, found)
        return found

    def probed(self, upstream: Upstream) -> bool:
        """Whether a ``/v2/`` probe of the upstream ever got an answer about its auth (200 or
        401): :meth:`known_challenge` and :meth:`known_open` then say what it was."""
        return upstream.host in self._realms

    def known_challenge(self, upstream: Upstream) -> Challenge | None:
        """The last challenge seen from the upstream, however old (for answering offline)."""
        cached = self._realms.get(upstream.host)
        return cached[1] if cached is not None else None

    def known_open(self, upstream: Upstream) -> bool:
        """Whether the upstream's ``/v2/`` answered the last probe ``200``: it asks for no
        credentials at all (a plain private registry), however old that answer is."""
        return upstream.host in self._open

    def challenge_fresh(self, upstream: Upstream) -> bool:
        """Whether the mirror's own ``/v2/`` probe of the upstream answered within
        :data:`REALM_TTL` (what :meth:`known_challenge` says is then current)."""
        cached = self._realms.get(upstream.host)
        return cached is not None and time.monotonic() - cached[0] < REALM_TTL

    def realm_known(self, upstream: Upstream) -> bool:
        """Whether :meth:`auth_realm` answers without asking the upstream's ``/v2/``: the realm
        is configured, or the mirror's last look at its challenge is fresh."""
        return upstream.auth_realm is not None or self.challenge_fresh(upstream)

    async def auth_realm(self, upstream: Upstream) -> str | None:
        if upstream.auth_realm is not None:
            return upstream.auth_realm
        found = await self.challenge(upstream)
        return found.realm if found is not None else None


def request_of(answer: httpx.Response) -> httpx.Request | None:
    """The request ``answer`` answers (its last hop's, after redirects); None for an answer
    the mirror made itself (:meth:`TokenRefused.answer`) or a test's stand-in: httpx raises
    for one with no request set."""
    try:
        return answer.request
    except RuntimeError:
        return None


def _read_timeout(upstream: httpx.Response) -> float | None:
    """The read timeout the answer's request was sent with (httpx's, per read); None for an
    answer the mirror made itself (no request: :meth:`TokenRefused.answer`)."""
    sent = request_of(upstream)
    if sent is None:
        return None
    timeout = sent.extensions.get("timeout")
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return float(read) if isinstance(read, int | float) else None


async def read_small(
    upstream: httpx.Response, limit: int = MAX_SMALL_BODY, *, inflate: bool = True
) -> bytes:
    """Read a small body (token, manifest, ``/v2/`` answer) with a bound; always closes it.
    ``inflate=False``: its bytes as they came (a ``Content-Encoding`` kept), for an answer
    that is relayed (:func:`held_answer`).

    A body that stalls or breaks off raises :class:`UpstreamTimeout` or
    :class:`UpstreamUnavailable`, as a failure before the headers does; so does one that does
    not come whole within the read timeout. httpx applies that timeout to each read: a body
    trickling a byte at a time, each inside it, read on for as long as the sender liked, and a
    token request is shared by every miss of its repository (they all waited on it)."""
    chunks: list[bytes] = []
    size = 0
    within = _read_timeout(upstream)

    def take(pieces: Iterable[bytes]) -> None:
        nonlocal size
        for piece in pieces:
            size += len(piece)
            if size > limit:
                raise AnswerTooLarge(f"the upstream's answer exceeded {limit} bytes")
            chunks.append(piece)

    try:
        # The raw bytes, inflated here with a bound: httpx inflates each read whole, and a read
        # of gzip can come to a thousand times its size before a check after it.
        if upstream.is_stream_consumed:  # read whole already (a transport that answered so)
            take([upstream.content])
        else:
            coding = upstream.headers.get("content-encoding") if inflate else None
            inflater = Inflater.of(coding)
            async with asyncio.timeout(within):
                async for raw in upstream.aiter_raw():
                    take([raw] if inflater is None else inflater.feed(raw, limit - size))
            if inflater is not None:
                take([inflater.end(limit - size)])
    except TimeoutError as exc:  # the whole answer's deadline (asyncio.timeout's)
        whole = "not whole" if within is None else f"not whole within {within:g}s"
        said = f"{upstream.request.method} {upstream.url.host}: {whole}"
        raise UpstreamTimeout(f"the upstream registry's answer came too slowly ({said})") from exc
    except httpx.TimeoutException as exc:
        said = failure(f"{upstream.request.method} {upstream.url.host}", exc)
        raise UpstreamTimeout(f"the upstream registry stopped sending in time ({said})") from exc
    except httpx.RequestError as exc:
        raise UpstreamUnavailable(
            f"the upstream registry's answer broke off: {type(exc).__name__}"
        ) from exc
    finally:
        await upstream.aclose()
    return b"".join(chunks)


async def held_answer(upstream: httpx.Response, limit: int = MAX_HELD_BODY) -> httpx.Response:
    """``upstream`` (a small answer: a ``401``) read with a bound and closed, its connection
    back to the pool; the answer returned streams the same bytes (as they came, its headers
    kept) to whoever relays it. A body over ``limit`` is dropped: the answer goes with none
    (``Content-Length: 0``). One a transport read whole already holds no connection: as is.
    A body that stalls or breaks off goes so too: it raised :func:`read_small`'s
    :class:`UpstreamTimeout` or :class:`UpstreamUnavailable` out of ``send``, the client was
    answered 504 or 502 for the registry's ``401``, and the login check never went."""
    if upstream.is_stream_consumed:
        return upstream
    headers = upstream.headers
    try:
        body = await read_small(upstream, limit, inflate=False)
    except (AnswerTooLarge, UpstreamTimeout, UpstreamUnavailable):
        dropped = ("content-length", "content-encoding", "transfer-encoding")
        headers = httpx.Headers([(k, v) for k, v in headers.multi_items() if k not in dropped])
        headers["Content-Length"] = "0"
        body = b""
    return httpx.Response(
        upstream.status_code,
        headers=headers,
        stream=httpx.ByteStream(body),  # the bytes read, streamed again to the relay
        request=upstream.request,
        extensions=upstream.extensions,
    )
