"""The Registry HTTP API v2 routes: the ``/v2/`` challenge, manifests and blobs (read-only)."""

from __future__ import annotations

import json
import time
from typing import Any

from quart import Blueprint, Response, request
from werkzeug.datastructures import Headers

from docxy.blobcache import serve_from_disk
from docxy.cache.digests import Digest
from docxy.challenge import Challenge, rewrite_challenge
from docxy.errors import Unsupported, UpstreamError, UpstreamUnavailable
from docxy.headers import request_headers
from docxy.names import Kind, parse_v2_path, upstream_name
from docxy.proxy import API_VERSION_HEADER, read_small, relay
from docxy.state import MirrorState, mirror_state
from docxy.upstream import SERVER_TROUBLE, Upstream

blueprint = Blueprint("registry", __name__)

READ_METHODS = ("GET", "HEAD")
UNAUTHORIZED = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def request_facts() -> dict[str, Any]:
    """The per-request facts the access log prints (set up by ``middleware.AccessLog``)."""
    facts = request.scope.get("docxy")
    return facts if isinstance(facts, dict) else {}


def _raw_path() -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.decode("latin-1")
    return request.path


@blueprint.route("/v2", methods=ALL_METHODS)
@blueprint.route("/v2/", methods=ALL_METHODS)
async def ping() -> Response:
    """Answer the version check; relay the upstream's challenge, realm re-pointed at the mirror."""
    if request.method not in READ_METHODS:
        raise Unsupported("this mirror is read-only", {"method": request.method})
    state = mirror_state()
    upstream = state.upstream_for(request.args.get("ns"))
    headers = [API_VERSION_HEADER, ("Content-Type", "application/json")]
    try:
        answer = await state.http.send(
            upstream, "GET", upstream.url("/v2/"), request_headers(request.headers.items())
        )
        body = await read_small(answer)
        if answer.status_code in SERVER_TROUBLE and state.cache is not None:
            raise UpstreamUnavailable(f"the upstream answered {answer.status_code}")
    except UpstreamError:
        if state.cache is None:
            raise
        # Stale-if-error: keep clients pulling what the cache holds. Tokens come from the
        # mirror's own endpoint, which answers offline too.
        # The upstream's service name only if it was ever seen: never a guess (a token for
        # the wrong service fails once the upstream is back); /auth/token fills it in.
        known = state.http.known_challenge(upstream)
        params = {"realm": state.token_realm}
        if known is not None and known.service:
            params["service"] = known.service
        challenge = Challenge("Bearer", params)
        headers.append(("WWW-Authenticate", challenge.render()))
        return Response(json.dumps(UNAUTHORIZED), status=401, headers=Headers(headers))
    if answer.status_code == 401:
        challenge = answer.headers.get("www-authenticate")
        if challenge is not None:
            realm = state.token_realm
            headers.append(
                ("WWW-Authenticate", rewrite_challenge(challenge, realm, upstream.library_prefix))
            )
        return Response(json.dumps(UNAUTHORIZED), status=401, headers=Headers(headers))
    if answer.status_code >= 400:
        return Response(body or b"{}", status=answer.status_code, headers=Headers(headers))
    return Response(b"{}", status=200, headers=Headers(headers))


@blueprint.route("/v2/<path:rest>", methods=ALL_METHODS)
async def content(rest: str) -> Response:
    """``/v2/<name>/manifests/<reference>`` and ``/v2/<name>/blobs/<digest>``, GET and HEAD."""
    del rest  # parsed from the raw path, so percent-encoding cannot hide a separator
    if request.method not in READ_METHODS:  # before parsing: pushes to uploads/ are 405 too
        raise Unsupported("this mirror is read-only", {"method": request.method})
    reference = parse_v2_path(_raw_path())
    if reference is None:
        return await ping()
    state = mirror_state()
    upstream = state.upstream_for(request.args.get("ns"))
    name = upstream_name(reference.name, upstream.library_prefix)
    facts = request_facts()
    if reference.kind is Kind.BLOB and reference.digest is not None:
        cached = await _blob_from_cache(state, upstream, name, reference.digest)
        if cached is not None:
            return cached
    elif state.manifests is not None:
        started = time.monotonic()
        accept = request.headers.getlist("Accept")
        served = await state.manifests.serve(upstream, name, reference, request.method, accept)
        if served is not None:
            facts["cache"] = served[1]
            if served[1] == "stale":
                state.http.health_of(upstream).served_stale()
            if served[1] != "hit":
                facts["upstream_ms"] = (time.monotonic() - started) * 1000
            return served[0]
    path = f"/v2/{name}/{reference.kind.value}/{reference.ref}"
    started = time.monotonic()
    answer = await state.http.send(
        upstream, request.method, upstream.url(path), request_headers(request.headers.items())
    )
    facts["upstream_ms"] = (time.monotonic() - started) * 1000
    facts.setdefault("cache", "bypass")
    return relay(
        answer,
        method=request.method,
        realm=state.token_realm,
        library_prefix=upstream.library_prefix,
    )


async def _blob_from_cache(
    state: MirrorState, upstream: Upstream, name: str, digest: Digest
) -> Response | None:
    """A hit from disk, or a miss streamed through one shared fill; ``None``: pass through."""
    if state.cache is None or state.filler is None:
        return None
    facts = request_facts()
    range_header = request.headers.get("Range")
    hit = serve_from_disk(state.cache.blobs, digest, request.method, range_header)
    if hit is not None:
        facts["cache"] = "hit"
        return hit
    if request.method != "GET" or range_header:
        return None
    started = time.monotonic()
    followed = await state.filler.follow(upstream, name, digest)
    if followed is None:
        facts["cache"] = "uncached"  # private to the mirror's token, or the disk is failing
        return None
    facts["cache"] = "miss"
    facts["upstream_ms"] = (time.monotonic() - started) * 1000
    return followed
