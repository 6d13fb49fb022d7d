"""What a running mirror holds: its config, its upstreams and the shared upstream client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quart import Quart, current_app

from docxy.blobcache import BlobFiller
from docxy.cache import Cache
from docxy.config import Config
from docxy.manifestcache import ManifestCache
from docxy.upstream import Upstream, UpstreamClient
from docxy.upstream_auth import MirrorTokens


@dataclass
class MirrorState:
    config: Config
    upstream: Upstream
    client: UpstreamClient | None = None
    cache: Cache | None = None
    tokens: MirrorTokens | None = None
    filler: BlobFiller | None = None
    manifests: ManifestCache | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def token_realm(self) -> str:
        """The realm the mirror advertises: always built from the configured public URL."""
        return self.config.server.public_url + "/auth/token"

    def upstream_for(self, namespace: str | None = None) -> Upstream:
        """The upstream serving a request. One today; chosen by host, prefix or ``?ns=`` later."""
        del namespace
        return self.upstream

    @property
    def http(self) -> UpstreamClient:
        if self.client is None:
            raise RuntimeError("the upstream client is opened when the app starts serving")
        return self.client


def mirror_state(app: Quart | None = None) -> MirrorState:
    state = (app or current_app).extensions["docxy"]
    assert isinstance(state, MirrorState)
    return state
