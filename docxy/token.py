"""``/auth/token``: the mirror's token endpoint, today fronting the upstream's auth service.

Clients are sent here by the challenges the mirror rewrites. The request is forwarded to the
upstream's realm (configured, or discovered from its ``/v2/`` challenge) with ``service``,
``account``, every ``scope`` (``library/`` added on Docker Hub) and the client's Basic
credentials, so ``docker login`` users pull with their own quota. This is the one place that
later becomes the mirror's own authority (mirror-issued tokens).
"""

from __future__ import annotations

import httpx
from quart import Blueprint, Response, request

from docxy.challenge import rewrite_scope
from docxy.errors import NotFound
from docxy.proxy import read_small
from docxy.state import mirror_state

blueprint = Blueprint("token", __name__)

FORWARDED_PARAMS = frozenset({"service", "scope", "account", "client_id", "offline_token"})


def token_params(args: list[tuple[str, str]], library_prefix: bool) -> httpx.QueryParams:
    """The query to send to the upstream realm: known parameters only, scopes rewritten."""
    params: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in args:
        if key not in FORWARDED_PARAMS:
            continue
        if key == "scope":
            value = " ".join(rewrite_scope(s, library_prefix) for s in value.split(" ") if s)
        params.append((key, value))
    return httpx.QueryParams(params)


@blueprint.route("/auth/token", methods=["GET"])
async def token() -> Response:
    state = mirror_state()
    upstream = state.upstream_for(request.args.get("ns"))
    realm = await state.http.auth_realm(upstream)
    if realm is None:
        raise NotFound("the upstream registry does not use token authentication")
    headers = []
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        headers.append(("Authorization", authorization))
    params = token_params(list(request.args.items(multi=True)), upstream.library_prefix)
    answer = await state.http.send(upstream, "GET", realm, headers, params=params)
    body = await read_small(answer)
    content_type = answer.headers.get("content-type", "application/json")
    response = Response(body, status=answer.status_code, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
