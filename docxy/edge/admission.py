"""Admission: allow lists, repository rules and per-client limits, before any route runs.

An ASGI layer inside the access log (so every refusal is logged like any request; a WebSocket
upgrade is one, answered with its denial: :mod:`docxy.edge.replies`):

1. the client's address (behind ``server.trusted_proxies``) must be in ``access.allow``, else
   ``403 DENIED``, before any credentials are read (a client off the list costs no token
   parsing or signature check);
2. a ``/v2/<name>/...`` request must name a repository the rules serve, else ``403 DENIED``
   with a message the docker CLI prints (``denied: repository ... is not served``); the name
   is the upstream's, behind the upstream's name unless it is Docker Hub (``ghcr.io/owner/img``),
   however the request picks the upstream;
3. per client (its user when known, else its IP, IPv6 by /64), a request-rate bucket, a
   manifest-fetch bucket (GETs of manifests) and a bandwidth bucket; an empty bucket is
   ``429 TOOMANYREQUESTS`` with ``Retry-After``. A client known by its IPv6 address also
   takes from its /48's buckets, :data:`SITE_FACTOR` times as large and as fast (refused by
   the site, nothing of its own is spent): a home's /56 is 256 /64s and a business's /48
   65536, and each /64 alone had a whole client's share. A manifest GET refused by its own
   bucket gives back the request it took.

An address in ``limits.exempt`` (a NAT-ed office, a CI farm: many clients behind one address,
which per-address buckets cannot tell apart; a broad network there is warned of once at
start-up, :func:`warn_broad_exempt`) passes step 3 untouched, whoever it logged in
as: it takes from no bucket, is never paced, is refused by none of them, and its fills count
towards ``limits.fills_total`` only (:data:`docxy.edge.fills.EXEMPT`). Steps 1 and 2 still
hold: an exempt network is spared limits, not let in. The address is the one step 1 checks
(behind ``server.trusted_proxies``, the one they name).

Bandwidth is charged as body bytes go out: a response whose client is over its rate is paced
(the next chunk waits until the debt is paid), and a new request from a client whose debt is
more than :data:`BANDWIDTH_GRACE` seconds deep is refused. Pacing alone keeps one download at the
limit; the refusal stops a client that opens ever more downloads at once, and downloads it
opened at once (each admitted with no debt yet) send nothing while it is deeper in debt than
that: a burst of first chunks stops at the grace.

ACME HTTP-01 challenges and ``/health`` pass untouched: the CA and health checks come from
addresses no allow list names, and must not be rate limited into failing a renewal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from docxy.config import Config
from docxy.core.cidr import Address, broad, site_key
from docxy.core.errors import Denied, RegistryError, TooManyRequests
from docxy.core.names import Kind, parse_v2_path, upstream_name
from docxy.edge.clients import client_identity, limit_key, request_address
from docxy.edge.fills import CLIENT, EXEMPT
from docxy.edge.limits import Clock, SitedBandwidth, SitedBuckets, retry_after
from docxy.edge.replies import answer_send, send_error
from docxy.upstream.routing import UpstreamUnknown, configured_upstreams, request_picks

if TYPE_CHECKING:
    from docxy.access.gate import AccessControl

log = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/health"})
EXEMPT_PREFIXES = ("/.well-known/acme-challenge/",)
#: A client may be this many seconds of bandwidth in debt before new requests are refused.
BANDWIDTH_GRACE = 10.0
#: An IPv6 /48's requests, manifests and bandwidth, in one client's: ten /64s of a site (each
#: usually a whole LAN already) may use all of theirs at once, and the site no more, where its
#: 256 (a /56) to 65536 /64s each had a client's share (as ``docxy.edge.relays`` and
#: ``docxy.access.logins`` keep sites).
SITE_FACTOR = 10
#: Why a request is refused: the setting that refuses it (``limits.requests_per_minute``), and
#: the error it is answered with.
Refusal = tuple[str, RegistryError]


class Admission:
    def __init__(
        self,
        app: ASGIFramework,
        config: Config,
        access: AccessControl | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self.config = config
        self.access = access
        self.allow = config.access.allow
        self.exempt = config.limits.exempt
        warn_broad_exempt(config)
        self.rules = config.access.rules
        self.upstreams = configured_upstreams(config)
        limits = config.limits
        self.requests = SitedBuckets(limits.requests_per_minute, SITE_FACTOR, clock)
        self.manifests = SitedBuckets(limits.manifests_per_minute, SITE_FACTOR, clock)
        self.bandwidth = SitedBandwidth(limits.bandwidth, SITE_FACTOR, clock)
        self.refused: Counter[str] = Counter()  # by the setting that refused (/metrics)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        address = request_address(scope, self.config.server)
        # the allow list first: a client off it costs no token's parsing or signature check
        refusal = self._allowed(address)
        if refusal is None:
            identity = client_identity(scope, self.access)
            key = limit_key(identity, address)
            exempt = address in self.exempt
            # users mode: the routes refuse a client the mirror does not know (401) whatever
            # it asks for; refusing it a repository first (403) would tell it which are served
            stranger = identity is None and self.access is not None and self.access.users_mode
            # an IPv6 client known by its address only is kept by its /48 too; a user by name
            site = site_key(address) if identity is None and address is not None else None
            refusal = self._admit(scope, None if exempt else key, site, rules=not stranger)
        if refusal is not None:
            setting, error = refusal
            self.refused[setting] += 1
            await send_error(answer_send(scope, send), error)
            return
        # for the fill caps (docxy.edge.fills), in the tasks the request starts
        named = CLIENT.set(EXEMPT if exempt else key)
        try:
            await self._serve(scope, receive, send, None if exempt else key, site)
        finally:
            CLIENT.reset(named)

    async def _serve(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        key: str | None,
        site: str | None = None,
    ) -> None:
        """The request, its body paced to ``key``'s bandwidth and its ``site``'s (``key`` None:
        exempt, never paced; a WebSocket upgrade is answered with a short error, never paced
        either)."""
        if not self.bandwidth or key is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def paced_send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                # Downloads started at once each passed admission with no debt yet: one whose
                # client is deeper in debt than the grace (its others' first chunks) waits
                # until it is not, before it sends.
                debt = self.bandwidth.debt(key, site)
                if debt > BANDWIDTH_GRACE:
                    await asyncio.sleep(debt - BANDWIDTH_GRACE)
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                wait = self.bandwidth.charge(key, len(message["body"]), site)
                if wait > 0 and message.get("more_body", False):
                    await asyncio.sleep(wait)  # pacing: the client's bytes per second

        await self.app(scope, receive, paced_send)

    def refusals(self) -> dict[str, int]:
        """Requests refused so far, by the setting that refused them (``docxy_refused_total``)."""
        return dict(self.refused)

    def _allowed(self, address: Address | None) -> Refusal | None:
        """Step 1, before anything of the request is read: the address is in ``access.allow``
        (when it lists any), else the refusal."""
        if self.allow and address not in self.allow:
            who = address or "this client"
            return "access.allow", Denied(f"access denied: {who} is not allowed to use this mirror")
        return None

    def _admit(
        self, scope: Any, key: str | None, site: str | None = None, *, rules: bool = True
    ) -> Refusal | None:
        """Why an allowed request may not pass (the setting that refuses it, and the error to
        send); None: it may. ``key`` None: a client exempt from the per-client limits; ``site``
        its IPv6 /48 (``docxy.core.cidr.site_key``), whose buckets it takes from too. Not
        ``rules``: the repository rules are left to a later check (the routes refuse this
        client)."""
        name, kind = self._repository(scope)
        if name is not None and self.rules and rules:
            refusal = self.rules.refusal(name)
            if refusal is not None:
                return "access.repositories", Denied(refusal, {"name": name})
        if key is None:
            return None
        wait = self.requests.take_place(key, site)
        if wait > 0:
            return "limits.requests_per_minute", _too_many(
                wait, "too many requests from this client"
            )
        if kind is Kind.MANIFEST and scope.get("method", "GET") == "GET":  # an upgrade's too
            wait = self.manifests.take_place(key, site)
            if wait > 0:  # refused for its manifests: its request budget is not spent
                self.requests.give_place(key, site)
                message = "too many manifest fetches from this client"
                return "limits.manifests_per_minute", _too_many(wait, message)
        debt = self.bandwidth.debt(key, site)
        if debt > BANDWIDTH_GRACE:
            message = "this client is over its bandwidth"
            return "limits.bandwidth", _too_many(debt - BANDWIDTH_GRACE, message)
        return None

    def _repository(self, scope: Any) -> tuple[str | None, Kind | None]:
        raw = scope.get("raw_path") or scope["path"].encode()
        try:
            reference = parse_v2_path(raw.decode("latin-1"))
        except RegistryError:
            return None, None  # not a content path: the routes answer it
        if reference is None:
            return None, None
        return self._rules_name(scope, reference.name), reference.kind

    def _rules_name(self, scope: Any, name: str) -> str:
        """The name the rules match, whichever way the request picks its upstream (``?ns=``,
        host name, path prefix, as the routes do): Docker Hub's with ``library/``, another
        upstream's behind that upstream's name (``ghcr.io/owner/img``)."""
        ns, host = request_picks(scope)
        try:
            return self.upstreams.qualified(name, ns=ns, host=host)
        except UpstreamUnknown:  # the routes refuse it, with nothing sent
            return upstream_name(name, self.upstreams.default.library_prefix)


def warn_broad_exempt(config: Config) -> None:
    """One WARNING at start-up for ``limits.exempt`` networks that are broad
    (:func:`docxy.core.cidr.broad`): ``0.0.0.0/0`` turns the per-client limits off for
    everyone, which is a setting's mistake far more often than its intent."""
    networks = broad(config.limits.exempt)
    if networks:
        log.warning(
            "limits.exempt lists %s (%s): every client in it is spared the per-client limits;"
            " a broad network (wider than a public /8, IPv6 /32) is usually a mistake for a"
            " NAT's or a farm's own network",
            ", ".join(str(network) for network in networks),
            config.sources.get("limits.exempt", "default"),
        )


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


def _too_many(wait: float, message: str) -> TooManyRequests:
    return TooManyRequests(message, {"retry_after": retry_after(wait)})
