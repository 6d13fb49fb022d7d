"""``/auth/token``: the mirror's token endpoint, today fronting the upstream's auth service.

Clients are sent here by the challenges the mirror rewrites. The request is forwarded to the
upstream's realm (configured, or discovered from its ``/v2/`` challenge) with ``service``,
``account``, every ``scope`` (``library/`` added on Docker Hub) and the client's Basic
credentials, so ``docker login`` users pull with their own quota.

In ``users`` mode (``docxy.access``) the mirror is the authority itself: it checks its own
users' passwords and signs the tokens (``docxy.access.authority``); nothing is forwarded, unless
``auth.upstream_logins`` lets a client-certificate holder's own Docker Hub login through.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import httpx
from quart import Blueprint, Response, request
from werkzeug.datastructures import Headers

from docxy.access.authority import Issued, issue_token
from docxy.access.gate import basic_credentials
from docxy.access.identity import ClientIdentity, Via, set_identity
from docxy.core.challenge import rewrite_scope, unprefix_scope
from docxy.core.errors import NotFound, RegistryError, UpstreamError
from docxy.http.routes import refuse_unsendable, request_facts
from docxy.http.state import mirror_state
from docxy.upstream.client import Upstream, read_small

log = logging.getLogger(__name__)

blueprint = Blueprint("token", __name__)

OFFLINE_TOKEN = "docxy-offline"
OFFLINE_TOKEN_LIFETIME = 60
AUTH_TROUBLE = frozenset({429, 500, 502, 503, 504})
FORWARDED_PARAMS = frozenset({"service", "scope", "account", "client_id", "offline_token"})


def token_params(
    args: list[tuple[str, str]],
    library_prefix: bool,
    service: str | None = None,
    *,
    prefix: str | None = None,
    own_service: bool = False,
) -> httpx.QueryParams:
    """The query to send to the upstream realm: known parameters only, scopes rewritten.

    ``service`` (the upstream's own, from its challenge) is added when the client sent none:
    a challenge the mirror answered offline, before it ever saw the upstream, names none.
    ``own_service`` puts it in place of the client's (which may be another upstream's, from
    the mirror's ``/v2/``). ``prefix`` (the upstream's name) comes off scope names first.
    """
    params: list[tuple[str, str | int | float | bool | None]] = []
    if service and (own_service or not any(key == "service" for key, _ in args)):
        params.append(("service", service))
    for key, value in args:
        if key not in FORWARDED_PARAMS or (key == "service" and own_service):
            continue
        if key == "scope":
            value = " ".join(
                rewrite_scope(unprefix_scope(s, prefix) if prefix else s, library_prefix)
                for s in value.split(" ")
                if s
            )
        params.append((key, value))
    return httpx.QueryParams(params)


class CredentialsUncheckable(UpstreamError):
    """The upstream's token service is down and the client sent credentials only it can check."""

    status = 503


def offline_token(reason: str) -> Response:
    """A token of the mirror's own while the upstream's auth service is down.

    It grants nothing upstream: the mirror serves public cached content without looking at
    client tokens, and passes anything else through with the client's own token. Only for
    anonymous requests: credentials the mirror cannot check are never answered with a token
    (a wrong password must not make ``docker login`` succeed).
    """
    if request.headers.get("Authorization") is not None:
        raise CredentialsUncheckable(
            f"cannot check credentials now: the upstream's token service is unavailable ({reason})"
        )
    log.warning("upstream token service unavailable (%s): issuing an offline token", reason)
    return offline_token_body()


def offline_token_body() -> Response:
    issued = datetime.now(UTC)
    body = {
        "token": OFFLINE_TOKEN,
        "access_token": OFFLINE_TOKEN,
        "expires_in": OFFLINE_TOKEN_LIFETIME,
        "issued_at": issued.isoformat().replace("+00:00", "Z"),
    }
    response = Response(json.dumps(body), status=200, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def mirror_only_token(name: str) -> Response:
    """For an upstream without token auth, reached through a challenge that asks for a token
    (the mirror's ``/v2/`` speaks for ``[upstream]``): a token that grants nothing upstream,
    so the client goes on and the mirror fetches with its own credentials."""
    log.info("token asked for %s, which has no token service: a mirror-only token", name)
    return offline_token_body()


def credentials_go_to(upstream: Upstream, named: str | None) -> bool:
    """Whether the client's credentials may go to ``upstream``'s token service.

    Only to the upstream whose challenge sent the client here: the one its realm names
    (``?upstream=``), or ``[upstream]`` for the plain realm. A client pulling
    ``mirror/ghcr.io/owner/img`` got the plain realm from the mirror's ``/v2/``, and its login
    for the mirror's name is not ghcr.io's: that token request goes anonymous.
    """
    return named is not None or upstream.is_default


@blueprint.route("/auth/token", methods=["GET"])
async def token() -> Response:
    state = mirror_state()
    access = state.access
    if access is not None and access.users_mode:
        forward = access.upstream_logins and access.certificate_client() is not None
        if not forward or _is_mirror_user(request.headers.get("Authorization")):
            return await _own_token(request.headers.get("Authorization"))
    refuse_unsendable()  # what follows may forward the client's Authorization
    named = request.args.get("upstream")
    upstream = state.upstreams.for_token(named, request.args.getlist("scope"))
    try:
        realm = await state.client.auth_realm(upstream)
    except UpstreamError as exc:
        if state.cache is None:
            raise
        return offline_token(exc.message)
    if realm is None and not upstream.is_default:
        return mirror_only_token(upstream.name)
    if realm is None:
        raise NotFound("the upstream registry does not use token authentication")
    headers = []
    authorization = request.headers.get("Authorization")
    if authorization is not None and credentials_go_to(upstream, named):
        headers.append(("Authorization", authorization))
    known = state.client.known_challenge(upstream)
    params = token_params(
        list(request.args.items(multi=True)),
        upstream.library_prefix,
        known.service if known is not None else None,
        prefix=upstream.name,
        own_service=not upstream.is_default,
    )
    try:
        answer = await state.client.send(upstream, "GET", realm, headers, params=params)
        body = await read_small(answer)
    except UpstreamError as exc:
        if state.cache is None:
            raise
        return offline_token(exc.message)
    if answer.status_code in AUTH_TROUBLE and state.cache is not None:
        return offline_token(f"the upstream's token service answered {answer.status_code}")
    content_type = answer.headers.get("content-type", "application/json")
    response = Response(body, status=answer.status_code, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def _is_mirror_user(authorization: str | None) -> bool:
    """Whether Basic credentials name one of the mirror's users (their password is checked
    by the mirror, never sent upstream)."""
    access = mirror_state().access
    credentials = basic_credentials(authorization)
    return access is not None and credentials is not None and access.users.exists(credentials[0])


async def _own_token(authorization: str | None) -> Response:
    """Users mode: the mirror is the token authority (``docxy.access.authority``)."""
    access = mirror_state().access
    assert access is not None
    scopes = request.args.getlist("scope")
    async with access.hashing:  # a password check costs ~64 MiB and a core for a moment
        answer = await asyncio.to_thread(issue_token, access, authorization, scopes)
    if isinstance(answer, RegistryError):  # the token endpoint's answers carry no API version
        headers = Headers(answer.headers())
        response = Response(answer.encoded(), status=answer.status, headers=headers)
    else:
        assert isinstance(answer, Issued)
        response = Response(answer.body, status=200, content_type="application/json")
        set_identity(request_facts(), ClientIdentity(Via.TOKEN, answer.user))
    response.headers["Cache-Control"] = "no-store"
    return response
