"""The Quart application: routes, error rendering, lifecycle of the shared upstream client."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from docxy.access.gate import AccessControl
from docxy.cache import Cache, CacheInUse, open_configured
from docxy.config import Config
from docxy.core.errors import (
    ConfigError,
    NotFound,
    RegistryError,
    RequestTooLarge,
    StreamCut,
    Unsupported,
)
from docxy.http import acme, auth, health, routes, setup_script
from docxy.http.middleware import CUT
from docxy.http.responses import error_response
from docxy.http.state import MirrorState
from docxy.shared.objects import require_signer
from docxy.shared.tier import SHARED_CONNECT, SHARED_READ, SharedTier, open_tier
from docxy.tasks import spawn
from docxy.upstream.client import (
    Upstream,
    UpstreamClient,
    make_http_client,
    upstream_ssl_context,
)
from docxy.upstream.direct import direct_settings
from docxy.upstream.routing import configured_upstreams
from docxy.upstream.trust import UpstreamTrust

log = logging.getLogger(__name__)

#: A ``cache.max_size`` below this is warned of at start: most likely a unit left off.
TINY_CACHE = 1024 * 1024

#: How long a stop waits for the syncs of blobs that verified (their clients are done) before
#: it gives them up: within the 3 s the supervisor leaves after hypercorn's graceful 10 s.
KEEP_VERIFIED = 2.0

ASGIHandler = Callable[[Any, Any, Any], Awaitable[None]]


async def keep_verified(state: MirrorState, within: float) -> None:
    """At a stop, let the fills whose blob verified finish their commit (the sync, then the
    rename) instead of losing the blob: up to ``within`` seconds, then they are cancelled
    with the rest of the fills, and one INFO line says how many blobs were not kept."""
    if state.cache is None:
        return
    try:
        await asyncio.wait_for(state.cache.blobs.commits_done(), within)
    except TimeoutError:
        log.info(
            "stopping: %d verified blob(s) still syncing after %g s are not kept",
            state.cache.blobs.verified_open,
            within,
        )


class CutStreams:
    """ASGI layer: a body that raised :class:`StreamCut` is left unended, without a traceback.

    The server then closes the connection mid-body, which is what the client must see; the
    reason was already logged in one line where the stream broke. The request's facts say so,
    for the access log (``cut``, not a client that left) and the metrics.
    """

    def __init__(self, app: ASGIHandler) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except StreamCut:
            facts = scope.get("docxy")
            if isinstance(facts, dict):
                facts[CUT] = True


def open_store(config: Config) -> Cache:
    """Open the cache: leftover temp files removed, index rebuilt from disk."""
    root = config.cache.dir
    if config.cache.max_size < TINY_CACHE:
        log.warning(
            "cache.max_size is %d bytes (%s): a size without a unit is in bytes (write 20G for "
            "20 GiB); no blob larger than that is kept",
            config.cache.max_size,
            config.sources.get("cache.max_size", "default"),
        )
    try:
        # One made here is its user's alone (README: threat model); what stops making it is
        # said below.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return open_configured(config)
    except CacheInUse as exc:  # a second mirror on one cache.dir: refused, not a traceback
        source = config.sources.get("cache.dir", "default")
        raise ConfigError(f"cache.dir: {exc} ({source})") from exc
    except OSError as exc:
        source = config.sources.get("cache.dir", "default")
        raise ConfigError(
            f"cache.dir: cannot use {root}: {exc.strerror or exc} ({source})"
        ) from exc


def _open_shared(
    state: MirrorState, transport: httpx.AsyncBaseTransport | None, ssl_context: ssl.SSLContext
) -> tuple[httpx.AsyncClient | None, SharedTier | None]:
    """The shared tier and its own client, if ``[shared]`` is set and the cache is on. Its own
    client: the object store's answers must not count as the upstream's (health, metrics)."""
    config = state.config
    if not config.shared.enabled or state.cache is None:
        return None, None
    timeouts = replace(config.upstream, connect_timeout=SHARED_CONNECT, read_timeout=SHARED_READ)
    http = make_http_client(timeouts, transport, ssl_context)
    shared = open_tier(config.shared, state.cache.blobs, http)
    state.extras.setdefault("health", {})["shared"] = shared.report
    state.extras.setdefault("health_public", {})["shared"] = lambda _whole: shared.public_report()
    log.info(
        "shared store: %s bucket %s%s",
        config.shared.endpoint,
        config.shared.bucket,
        " (read-only: shared.uploads = 0, no uploads)" if config.shared.read_only else "",
    )
    return http, shared


#: The longest a request body may take (Quart's ``BODY_TIMEOUT``), whatever idle_timeout is.
MAX_BODY_SECONDS = 30.0


def create_app(
    config: Config, *, probe: bool = True, transport: httpx.AsyncBaseTransport | None = None
) -> Quart:
    """Build the app. ``transport`` replaces the network for tests (``httpx.MockTransport``)."""
    app = Quart("docxy", static_folder=None)  # no /static/<path> route: a registry serves no files
    app.asgi_app = CutStreams(app.asgi_app)  # type: ignore[method-assign]
    # No werkzeug redirect for ``//`` (an HTML 308 to a URL built from ``Host``): such a path
    # gets the registry's JSON error like any other bad one. Before the rules are added.
    app.url_map.merge_slashes = False
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streamed blobs take as long as they take
        # a request body (a POST /auth/token form; at most MAX_CONTENT_LENGTH) may take as
        # long as a request head: a fixed 30 s held slow clients past a lowered idle_timeout;
        # never more than those 30 s (a raised idle_timeout is for idle keep-alive, not bodies)
        BODY_TIMEOUT=min(config.limits.idle_timeout, MAX_BODY_SECONDS),
        MAX_CONTENT_LENGTH=64 * 1024,  # a read-only mirror takes no uploads
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    state = MirrorState(config, Upstream.from_config(config.upstream))
    if config.cache.enabled:
        state.cache = open_store(config)
    if config.shared.enabled:
        require_signer()
    if config.auth.mode == "users" or config.auth.client_certs:
        state.access = AccessControl(config)
        state.access.prepare()
    app.extensions["docxy"] = state
    for blueprint in (
        routes.blueprint,
        auth.blueprint,
        health.blueprint,
        acme.blueprint,
        setup_script.blueprint,
    ):
        app.register_blueprint(blueprint)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        # One context per set of CAs: certifi's (the default, also the shared store's, which
        # is no upstream), and certifi's with an upstream's ca_file on its origins.
        trust = UpstreamTrust(configured_upstreams(config).all(), upstream_ssl_context)
        ssl_context = trust.default
        http = make_http_client(config.upstream, transport, ssl_context, trust)
        direct = direct_settings(config.upstream, ssl_context, transport, trust)
        shared_http, shared = _open_shared(state, transport, ssl_context)
        upstream = UpstreamClient(http, direct, trust)
        state.open(upstream, shared)
        probe_task = spawn("upstream-probe", health.probe_upstream(state)) if probe else None
        try:
            yield
        finally:
            if probe_task is not None:
                probe_task.cancel()
            await keep_verified(state, KEEP_VERIFIED)
            await http.aclose()
            upstream.close()  # after the last request that could be refused
            if shared is not None:
                shared.uploads.cancel()  # before their client closes
            if shared_http is not None:
                await shared_http.aclose()
            if direct is not None:
                direct.idle.close()

    @app.errorhandler(RegistryError)
    async def registry_error(error: RegistryError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if error.code == 405:
            allowed = routes.allowed_methods(request.path, getattr(error, "valid_methods", None))
            return error_response(Unsupported("method not allowed", allow=allowed))
        if error.code == 404:
            return error_response(NotFound("unknown path"))
        if error.code == 413:  # over MAX_CONTENT_LENGTH: said as the other size refusals are
            return error_response(RequestTooLarge("request body too large", status=413))
        return error_response(
            RegistryError(error.description or "bad request", status=error.code or 400)
        )

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error", exc_info=error)
        return error_response(RegistryError("internal error in the mirror"))

    return app
