"""What a running mirror holds: its config, its upstreams, and the services of the pull path.

The services need the shared upstream client, which exists only while the app is serving:
:meth:`MirrorState.open` builds them once it does, and reading them earlier is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from quart import Quart, current_app

from docxy.access.gate import AccessControl
from docxy.access.logins import FailedLogins
from docxy.cache import Cache
from docxy.cache.pairings import BlobPairings
from docxy.config import Config
from docxy.edge.fills import FillPermits
from docxy.edge.relays import TokenRelays
from docxy.pull.blobs import BlobService
from docxy.pull.manifests import ManifestService
from docxy.shared.tier import SharedTier
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.routing import Route, Upstreams
from docxy.upstream.tokens import MirrorTokens


@dataclass(frozen=True, slots=True)
class Services:
    """The pull path, built around one upstream client."""

    client: UpstreamClient
    tokens: MirrorTokens
    blobs: BlobService
    manifests: ManifestService


@dataclass
class MirrorState:
    config: Config
    upstream: Upstream
    cache: Cache | None = None
    services: Services | None = None
    access: AccessControl | None = None  # users mode or client certificates (docxy.access)
    extras: dict[str, Any] = field(default_factory=dict)
    upstreams: Upstreams = field(init=False)
    #: ``/v2/`` and token requests passed upstream, per client address (docxy.edge.relays)
    relays: TokenRelays = field(init=False)
    #: wrong upstream passwords relayed per client address without ``access`` (open mode)
    open_logins: FailedLogins = field(init=False)

    def __post_init__(self) -> None:
        others = [Upstream.from_config(named) for named in self.config.upstreams]
        self.upstreams = Upstreams(self.upstream, others)
        self.relays = TokenRelays(self.config.limits.token_relays_per_minute)
        self.open_logins = FailedLogins(self.config.limits.failed_logins_per_minute)

    @property
    def logins(self) -> FailedLogins:
        """The wrong-password buckets (``docxy.access.logins``): the mirror's own users' and
        the upstream logins it relays share one per client, so a guesser gets its limit once,
        whichever it guesses for."""
        return self.access.logins if self.access is not None else self.open_logins

    @property
    def token_realm(self) -> str:
        """The realm the mirror advertises: always built from the configured public URL."""
        return self.config.server.public_url + "/auth/token"

    def token_realm_for(self, upstream: Upstream, *, by_prefix: bool = False) -> str:
        """The realm for one upstream's challenges: the same endpoint, naming the upstream,
        and saying so (``via=prefix``) when the client named it by path prefix: that client's
        login is the mirror's, which ``/auth/token`` then keeps from it (``credentials_go_to``)."""
        if upstream.is_default:
            return self.token_realm
        realm = f"{self.token_realm}?upstream={quote(upstream.name, safe='')}"
        return realm + "&via=prefix" if by_prefix else realm

    def route(self, name: str, *, ns: str | None, host: str | None) -> Route:
        """The upstream for a request: by ``?ns=``, the mirror host name, or a path prefix."""
        return self.upstreams.route(name, ns=ns, host=host)

    def open(self, client: UpstreamClient, shared: SharedTier | None = None) -> Services:
        """Build the pull path around ``client`` (when the app starts serving)."""
        tokens = MirrorTokens(client)
        cache = self.cache
        self.services = Services(
            client,
            tokens,
            BlobService(
                cache.blobs if cache is not None else None,
                tokens,
                BlobPairings(cache.manifests if cache is not None else None),
                FillPermits(self.config.limits.fills_per_client, self.config.limits.fills_total),
                shared,
            ),
            ManifestService(cache.manifests if cache is not None else None, tokens),
        )
        return self.services

    @property
    def running(self) -> Services:
        if self.services is None:
            raise RuntimeError("the pull path is built when the app starts serving")
        return self.services

    @property
    def client(self) -> UpstreamClient:
        return self.running.client


def mirror_state(app: Quart | None = None) -> MirrorState:
    state = (app or current_app).extensions["docxy"]
    assert isinstance(state, MirrorState)
    return state
