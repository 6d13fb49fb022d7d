"""Which CAs an upstream connection trusts (an upstream's ``ca_file``), per origin: for the shared
httpx client's pool (:func:`trusting_transport`) and the fills' direct GETs alike."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import httpcore
import httpx

from docxy.config import CaFile
from docxy.core.hosts import origin
from docxy.upstream.redirects import DelegatingConnection, GuardedPool, guarded_transport

if TYPE_CHECKING:
    from docxy.upstream.client import Upstream

log = logging.getLogger(__name__)


#: (scheme, host as :func:`host_key` has it, port: the scheme's default filled in)
TrustOrigin = tuple[str, str, int | None]


def origin_of(url: str) -> TrustOrigin | None:
    """``url``'s origin as :class:`UpstreamTrust` keys it; None for one without a host or
    with a bad port."""
    try:
        scheme, host, port = origin(url)
    except ValueError:
        return None
    return (scheme.lower(), host_key(host), port) if host else None


def host_key(host: str) -> str:
    """``host`` as httpx sends it, and so as httpcore's origin has it: in lower case, a name
    that is not ASCII (an IDN, ``bücher.example``) in its ASCII form (``xn--bcher-kva...``),
    an IPv6 address in its one short form (``0:0::1`` and ``::1`` are one origin)."""
    host = host.lower()
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host.strip("[]")))
        except ValueError:
            return host
    if host.isascii():
        return host
    try:
        return httpx.URL(scheme="https", host=host).raw_host.decode("ascii")
    except httpx.InvalidURL:
        return host  # httpx refuses it: no connection is made to it


def _shown(origin: TrustOrigin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


class UpstreamTrust:
    """Which CAs an upstream connection trusts: certifi's (:attr:`default`), and on an
    upstream's own origins the CAs of its ``ca_file`` too.

    A private registry whose certificate an internal CA issued is set up with ``ca_file``, as
    Docker's ``/etc/docker/certs.d/<host>/ca.crt`` and containerd's ``ca = "..."`` are, per
    registry. Its CAs are trusted, besides certifi's, for the origins (scheme, host, port) that
    upstream uses: its registry's, and its token service's, the ``auth_realm`` it is configured
    with or else the realm its ``/v2/`` challenge names (:meth:`learned`, told by
    :meth:`UpstreamClient._probe`, the one place realms are found), and the origins its
    ``ca_origins`` lists (the storage its blobs redirect to, behind the same CA), which it
    claims as it claims the registry's. Every other origin (a CDN a blob's redirect leads to,
    another upstream) is verified with the default context alone.

    Each upstream that uses an origin claims it. Its context trusts the CAs of all of them,
    but only while every one has a ``ca_file``: an upstream without one that uses the origin
    too (a registry that names a public token service, ``auth.docker.io``, as its realm, which
    Docker Hub uses) keeps it on certifi's CAs alone, so no upstream's CA vouches for a host
    another upstream trusts certifi for. That takes nothing from the first: a host the second
    reaches with certifi's CAs has a certificate the default context verifies.

    One object serves both paths to an upstream: the shared httpx client, whose one pool makes
    each new connection with its origin's context (:func:`trusting_transport`), and the fills'
    direct GETs (``docxy.upstream.direct``), which pick it per connection too. Contexts come
    from the factory the default does (``upstream_ssl_context``: the same verify flags), one
    per set of CAs. Readers may be worker threads (the direct GETs): a change replaces whole
    dict entries, on the event loop."""

    def __init__(
        self, upstreams: Iterable[Upstream], new_context: Callable[[], ssl.SSLContext]
    ) -> None:
        self._new_context = new_context
        self.default = new_context()
        #: origin → {claimant: its CAs, None for none}; a claimant is an upstream's host and
        #: what it uses the origin for
        self._claims: dict[TrustOrigin, dict[str, CaFile | None]] = {}
        self._learned: dict[str, TrustOrigin] = {}  # upstream host → the realm its challenge named
        self._contexts: dict[TrustOrigin, ssl.SSLContext] = {}  # origins not on the default
        self._made: dict[frozenset[CaFile], ssl.SSLContext] = {}
        self._warned: set[TrustOrigin] = set()  # origins whose claims disagree, told once
        self.extends = False  # whether any upstream has a ca_file
        keyed: set[Path] = set()  # ca_files with a private key in them, told once each
        for upstream in upstreams:
            self.extends = self.extends or upstream.ca_file is not None
            if upstream.ca_file is not None and upstream.ca_file.keys:
                keyed.add(upstream.ca_file.path)
            self._claim(upstream.registry, f"{upstream.host} registry", upstream.ca_file)
            if upstream.auth_realm is not None:
                self._claim(upstream.auth_realm, f"{upstream.host} realm", upstream.ca_file)
            for url in upstream.ca_origins:
                self._claim(url, f"{upstream.host} ca_origins", upstream.ca_file)
        for claimed in list(self._claims):
            self._settle(claimed)
        for path in sorted(keyed):
            log.warning(
                "upstream trust: %s holds a private key besides its certificates: the key is "
                "left out (ca_file takes CA certificates alone; a key does not belong in a file "
                "others read)",
                path,
            )

    def context_for(self, origin: TrustOrigin) -> ssl.SSLContext:
        """The context a new connection to ``origin`` verifies its certificate with."""
        scheme, host, port = origin
        return self._contexts.get((scheme.lower(), host_key(host), port), self.default)

    def context_for_url(self, url: str) -> ssl.SSLContext:
        found = origin_of(url)
        return self.default if found is None else self.context_for(found)

    def covers(self, url: str) -> bool:
        """Whether ``url``'s origin is an upstream's registry, token service or one of its
        ``ca_origins``, one its ``ca_file`` is or would be trusted for: every upstream using
        it has one, or none has yet (not another redirect's host: a CDN, a bucket no
        ``ca_origins`` lists; nor one some upstreams use with a ``ca_file`` and others without:
        :meth:`kept_default_by`)."""
        found = origin_of(url)
        claims = self._claims.get(found, {}) if found is not None else {}
        with_file = [ca is not None for ca in claims.values()]
        return bool(claims) and (all(with_file) or not any(with_file))

    def kept_default_by(self, url: str) -> tuple[str, ...]:
        """Who keeps ``url``'s origin on certifi's CAs alone though another upstream's
        ``ca_file`` claims it (the upstreams that use it without one, as the warning names
        them); empty where no ``ca_file`` claims it, or every claim has one."""
        found = origin_of(url)
        claims = self._claims.get(found, {}) if found is not None else {}
        if all(ca is None for ca in claims.values()):
            return ()
        return tuple(sorted(c for c, ca in claims.items() if ca is None))

    def learned(self, upstream: Upstream, realm: str | None) -> None:
        """``upstream``'s ``/v2/`` challenge named ``realm`` (None: no token service): its
        token service's origin, unless ``auth_realm`` is configured (then that one is)."""
        if upstream.auth_realm is not None:
            return
        claimant = f"{upstream.host} learned realm"
        found = origin_of(realm) if realm is not None else None
        before = self._learned.get(upstream.host)
        if found == before:
            return
        if before is not None:
            self._claims.get(before, {}).pop(claimant, None)
            self._settle(before)
            del self._learned[upstream.host]
        if found is not None:
            self._learned[upstream.host] = found
            self._claims.setdefault(found, {})[claimant] = upstream.ca_file
            self._settle(found)

    def _claim(self, url: str, claimant: str, ca_file: CaFile | None) -> None:
        found = origin_of(url)
        if found is not None:
            self._claims.setdefault(found, {})[claimant] = ca_file

    def _settle(self, origin: TrustOrigin) -> None:
        """Make ``origin``'s context what its claims say."""
        claims = self._claims.get(origin, {})
        files = [ca for ca in claims.values() if ca is not None]
        if not files:
            self._contexts.pop(origin, None)
            return
        if len(files) < len(claims):
            self._contexts.pop(origin, None)
            if origin not in self._warned:
                self._warned.add(origin)
                without = sorted(c for c, ca in claims.items() if ca is None)
                log.warning(
                    "upstream trust: %s is verified with the default CAs only, no ca_file: "
                    "%s use%s it without one",
                    _shown(origin),
                    ", ".join(without),
                    "s" if len(without) == 1 else "",
                )
            return
        key = frozenset(files)
        context = self._made.get(key)
        if context is None:
            context = self._new_context()
            for ca in sorted(key, key=lambda ca: str(ca.path)):
                context.load_verify_locations(cadata=ca.pem)
            self._made[key] = context
        if self._contexts.get(origin) is not context:
            self._contexts[origin] = context
            paths = ", ".join(sorted({str(ca.path) for ca in key}))
            log.info(
                "upstream trust: %s is verified with %s besides the default CAs",
                _shown(origin),
                paths,
            )


class _TrustingPool(GuardedPool):
    """httpx's connection pool, each new connection made with the context of its origin. One
    pool: the shared client's limits (connections at once, idle ones kept) stay as they are.

    httpcore makes a connection in :meth:`create_connection` with the pool's ``_ssl_context``;
    it is set to the origin's for that call (synchronous: nothing runs in between). The
    connection is reused only while its origin's context is still the one it verified with
    (:class:`_Verified`)."""

    def __init__(self, trust: UpstreamTrust, limits: httpx.Limits) -> None:
        super().__init__(trust.default, limits)
        self._trust = trust

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        chosen = self._trust.context_for(_trust_origin(origin))
        kept, self._ssl_context = self._ssl_context, chosen
        try:
            made = super().create_connection(origin)
        finally:
            self._ssl_context = kept
        return _Verified(made, self._trust, origin, chosen)


def _trust_origin(origin: httpcore.Origin) -> TrustOrigin:
    return (origin.scheme.decode("ascii"), origin.host.decode("ascii"), origin.port)


class _Verified(DelegatingConnection):
    """A pooled connection and the context it verified its origin with: once the origin's
    context is another (a realm moved, another upstream without a ca_file uses the origin too),
    it takes no more requests and, idle, is closed as expired. Kept, it would still carry
    requests to that origin over a TLS session an upstream's CAs vouched for."""

    def __init__(
        self,
        connection: httpcore.AsyncConnectionInterface,
        trust: UpstreamTrust,
        origin: httpcore.Origin,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(connection)
        self._trust = trust
        self._origin = _trust_origin(origin)
        self._context = context

    def _current(self) -> bool:
        return self._trust.context_for(self._origin) is self._context

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self._connection.can_handle_request(origin) and self._current()

    def has_expired(self) -> bool:
        stale = not self._current() and self._connection.is_idle()
        return stale or self._connection.has_expired()


def trusting_transport(trust: UpstreamTrust, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport over a :class:`_TrustingPool` with ``limits``
    (:func:`~docxy.upstream.redirects.guarded_transport`)."""
    return guarded_transport(trust.default, limits, _TrustingPool(trust, limits))
