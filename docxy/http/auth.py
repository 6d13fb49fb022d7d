"""``/auth/token``: the mirror's token endpoint, today fronting the upstream's auth service.

Clients are sent here by the challenges the mirror rewrites, with a GET or the OAuth2 POST
form (``docxy.http.token_ask``). The request is forwarded to the upstream's realm (configured,
or discovered from its ``/v2/`` challenge) with ``service``, ``account``, every ``scope``
(``library/`` added on Docker Hub) and the client's Basic credentials (a POSTed password grant
becomes those), so ``docker login`` users pull with their own quota; a POSTed refresh token
is relayed as a POST. A login goes only to the upstream it is for (:func:`credentials_go_to`);
one the upstream refuses is answered with the mirror's own challenge (:func:`refused_login`).

In ``users`` mode (``docxy.access``) the mirror is the authority itself: it checks its own
users' passwords and signs the tokens (``docxy.access.authority``); nothing is forwarded, unless
``auth.upstream_logins`` lets a client-certificate holder's own Docker Hub login through.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import httpx
from quart import Blueprint, Response, request
from werkzeug.datastructures import Headers

from docxy.access.gate import AccessControl, basic_credentials, basic_scheme, users_unreadable
from docxy.access.identity import ClientIdentity, Via, set_identity
from docxy.core import jsondoc
from docxy.core.challenge import rewrite_scope, scope_repository, unprefix_scope
from docxy.core.errors import Denied, NotFound, RegistryError, Unauthorized, UpstreamError
from docxy.core.headers import bearer_token, kept_retry_after
from docxy.core.hosts import url_host
from docxy.http.routes import (
    ClientLogins,
    count_relay,
    login_client,
    own_challenge,
    refuse_unsendable,
    request_facts,
)
from docxy.http.state import mirror_state
from docxy.http.token_ask import TokenAsk, for_post_client, from_form, from_query
from docxy.tasks import spawn
from docxy.upstream.anonymous import OFFLINE_TOKEN as OFFLINE_TOKEN
from docxy.upstream.client import SERVER_TROUBLE, Upstream, clear_realm_remedy, read_small

if TYPE_CHECKING:
    from docxy.access.authority import Issued

log = logging.getLogger(__name__)

blueprint = Blueprint("token", __name__)

OFFLINE_TOKEN_LIFETIME = 60
FORWARDED_PARAMS = frozenset({"service", "scope", "account", "client_id", "offline_token"})
NO_REFRESH_TOKENS = "this mirror issues no refresh tokens: docker login again"


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


class LoginInClear(Denied):
    """An HTTPS upstream's challenge names a plain-HTTP token service: a client's login (a
    password, a refresh token) is not sent there in clear text. Nothing is asked; an
    anonymous ask goes on (:meth:`Upstream.login_may_go_to`). A refusal that stands until
    the operator acts (``403 DENIED``), not an outage a client should retry."""

    def __init__(self, upstream: Upstream, realm: str) -> None:
        super().__init__(
            f"{upstream.host} names a plain-HTTP token service (http://{url_host(realm)}): "
            f"the mirror does not send a login there in clear text ({clear_realm_remedy(realm)})"
        )


def offline_token(reason: str, credentialed: bool) -> Response:
    """A token of the mirror's own while the upstream's auth service is down.

    It grants nothing upstream: the mirror serves public cached content without looking at
    client tokens, and passes anything else through with the client's own token. Only for
    anonymous requests: credentials the mirror cannot check are never answered with a token
    (a wrong password must not make ``docker login`` succeed).
    """
    if credentialed:
        raise CredentialsUncheckable(
            f"cannot check credentials now: the upstream's token service is unavailable ({reason})"
        )
    log.warning("upstream token service unavailable (%s): issuing an offline token", reason)
    return offline_token_body()


def offline_token_body() -> Response:
    # Given only to anonymous asks: pulling with it is pulling as nobody, from the mirror.
    mirror_state().client.anonymous_tokens.remember(OFFLINE_TOKEN, OFFLINE_TOKEN_LIFETIME)
    # No ``issued_at``, as for the mirror's own tokens (docxy.access.authority): a client
    # counts ``expires_in`` from it by its own clock, and one ahead by a minute would take
    # this token for expired on arrival and ask again before every request.
    body = {
        "token": OFFLINE_TOKEN,
        "access_token": OFFLINE_TOKEN,
        "expires_in": OFFLINE_TOKEN_LIFETIME,
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


def refused_login(challenge: str, upstream_body: bytes) -> Response:
    """The upstream's token service answered ``401`` (a wrong password, an expired refresh
    token): the registry's ``401 UNAUTHORIZED`` with ``challenge``, the one the mirror's
    ``/v2/`` sends. A 401 must carry a challenge (RFC 9110), and Docker's client reads it; the
    upstream's own, if it sent one, would name its realm. An upstream body that is a registry
    error is kept; any other lends its words to the message, which the docker CLI prints:
    Docker Hub's ``{"details": ...}``, an OAuth2 error's ``error_description`` or ``error``
    (RFC 6749: what a refused ``POST`` grant gets), or a plain ``{"message": ...}``."""
    parsed = jsondoc.object_in(upstream_body)
    message = "the upstream's token service refused the login"
    words = _refusal_words(parsed) if parsed is not None else None
    if words is not None:
        message = f"{message}: {words}"
    error = Unauthorized(message, challenge)
    kept = isinstance(parsed, dict) and isinstance(parsed.get("errors"), list)
    body = upstream_body if kept else error.encoded()
    return Response(body, status=error.status, headers=Headers(error.headers()))


#: Where token services put the words of a refusal, the most telling first.
REFUSAL_FIELDS = ("details", "error_description", "error", "message")


def _refusal_words(parsed: dict[str, object]) -> str | None:
    """The first field of :data:`REFUSAL_FIELDS` that holds a short printable string."""
    for name in REFUSAL_FIELDS:
        words = parsed.get(name)
        if isinstance(words, str) and 0 < len(words) <= 200 and words.isprintable():
            return words
    return None


def credentials_go_to(upstream: Upstream, ask: TokenAsk) -> bool:
    """Whether the client's login may go to ``upstream``'s token service.

    A client sends the login it holds for the host name it pulls from. The mirror's own name
    stands for ``[upstream]`` (Docker Hub): that login goes there and nowhere else. Another
    upstream gets it only when the client reached it as that upstream itself: through one of
    its ``hosts`` names or containerd's ``?ns=`` (the realm then names it, ``?upstream=``,
    and the scopes name its repositories as it does). A client that names it by path prefix
    (``mirror/ghcr.io/owner/img``) is using the mirror's login, which is not ghcr.io's: that
    token request goes anonymous, whichever realm it came by. The ``/v2/`` one names no
    upstream, and the scopes say ``repository:ghcr.io/owner/img``; the one in ghcr.io's own
    challenge says ``via=prefix``, which holds when that challenge named no scope at all.
    """
    return not asked_by_prefix(upstream, ask)


def asked_by_prefix(upstream: Upstream, ask: TokenAsk) -> bool:
    """Whether ``ask`` is for an upstream the client named by path prefix (never
    ``[upstream]``, which the mirror's own name stands for): it came by the realm of the
    mirror's ``/v2/``, which names no upstream, or by one saying ``via=prefix``, or its scopes
    name the upstream's repositories with its name in front. Such a client's login is the
    mirror's (:func:`credentials_go_to`), and every challenge it gets says ``via=prefix``."""
    if upstream.is_default:
        return False
    if ask.get("upstream") is None or ask.get("via") == "prefix":
        return True
    return any(_by_prefix(s, upstream.name) for s in ask.scopes)


def _by_prefix(scope_text: str, prefix: str) -> bool:
    return any(
        (scope_repository(scope) or "").startswith(prefix + "/") for scope in scope_text.split(" ")
    )


async def read_ask() -> TokenAsk:
    """The request as one :class:`TokenAsk` (the POST form read within the app's body limit)."""
    authorization = request.headers.get("Authorization")
    query = list(request.args.items(multi=True))
    if request.method != "POST":
        return from_query(query, authorization)
    form = await request.form
    return from_form(query, form.items(multi=True), authorization)


@blueprint.route("/auth/token", methods=["GET", "POST"])
async def token() -> Response:
    ask = await read_ask()
    state = mirror_state()
    access = state.access
    if access is not None and access.users_mode:
        forward = access.upstream_logins and access.certificate_client() is not None
        if not forward or _is_mirror_user(ask.authorization) or _is_mirror_token(ask):
            return await _own_token(ask)
    refuse_unsendable()  # what follows may forward the client's Authorization
    upstream = state.upstreams.for_token(ask.get("upstream"), ask.scopes)
    if ask.credentialed and not credentials_go_to(upstream, ask):
        ask = ask.anonymous()
    if basic_scheme(ask.authorization):  # one not decoded here too: it goes as it is
        return await _relayed_login(upstream, ask)
    return await _relay(upstream, ask)


async def _relayed_login(upstream: Upstream, ask: TokenAsk) -> Response:
    """A password for the upstream, relayed within the guessing limit of its client's address
    (``docxy.access.logins``, users mode's buckets): the upstream's token service sees every
    guess come from the mirror's address, and would rate-limit or ban it for every user. A
    client out of wrong guesses gets ``429`` and nothing is sent; a place is spent only when
    the upstream answered ``401``."""
    # No place is held while the upstream is asked (a round trip): held, a dozen right logins
    # at once from one address (compose pulling many images, a CI farm behind one NAT) used
    # up the bucket and got "too many failed logins". Charged after the 401 instead (the
    # overshoot of guesses in flight together: routes.ClientLogins).
    logins = ClientLogins(mirror_state())
    refusal = logins.refusal()
    if refusal is not None:
        return login_refused(refusal)
    return await logins.asked(
        lambda: _relay(upstream, ask), lambda answer: answer.status_code == 401
    )


def login_refused(refusal: RegistryError) -> Response:
    """The token endpoint's ``429`` for a client out of wrong guesses: never stored, as no
    answer of ``/auth/token`` is."""
    response = Response(
        refusal.encoded(), status=refusal.status, headers=Headers(refusal.headers())
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def _relay(upstream: Upstream, ask: TokenAsk) -> Response:
    """The upstream's answer to ``ask`` (its token service's, found through its realm), or
    the mirror's own token when there is none to be had."""
    state = mirror_state()
    # A relay (docxy.edge.relays) is counted once for a request that asks the upstream
    # anything, before the first thing it asks: the realm lookup's /v2/ when the realm is not
    # known, else the token service. A token the mirror answers itself (mirror-only, 404)
    # asks nothing and counts nothing.
    relayed = not state.client.realm_known(upstream)
    if relayed:
        count_relay(state)
    try:
        realm = await state.client.auth_realm(upstream)
    except UpstreamError as exc:
        if state.cache is None:
            raise
        return offline_token(exc.message, ask.credentialed)
    if realm is None and not upstream.is_default:
        return mirror_only_token(upstream.name)
    if realm is None:
        raise NotFound("the upstream registry does not use token authentication")
    if ask.credentialed and not upstream.login_may_go_to(realm):
        refused = LoginInClear(upstream, realm)
        log.info("a client's login was not sent on: %s", refused.message)
        raise refused
    known = state.client.known_challenge(upstream)
    service = known.service if known is not None else None
    # A named upstream's own service replaces the client's, which may be the default's (the
    # mirror's /v2/). Not known (its realm configured, its /v2/ never seen to challenge), a
    # client that reached it as itself holds the one its 401 named: that one goes on.
    own_service = not upstream.is_default and (
        service is not None or asked_by_prefix(upstream, ask)
    )
    params = token_params(
        list(ask.args),
        upstream.library_prefix,
        service,
        prefix=upstream.name,
        own_service=own_service,
    )
    if not relayed:
        count_relay(state)
    try:
        answer = await _ask_upstream(upstream, realm, ask, params)
        body = await read_small(answer)
    except UpstreamError as exc:
        if state.cache is None:
            raise
        return offline_token(exc.message, ask.credentialed)
    if answer.status_code in SERVER_TROUBLE and state.cache is not None:
        reason = f"the upstream's token service answered {answer.status_code}"
        return offline_token(reason, ask.credentialed)
    tokenless = answer.status_code == 200 and not holds_token(body)
    if tokenless and state.cache is not None:
        # A proxy's sign-in page, or JSON without a token: the token service failing, as a
        # 5xx is, not an answer to relay (the client cannot decode it, nor pull with it).
        return offline_token(TOKENLESS, ask.credentialed)
    if answer.status_code == 200:
        # Whoever asked: a client that sends it with a request for another upstream (one
        # mirror host, several ?ns=) has it kept from that one (docxy.upstream.issuers).
        state.client.token_issuers.remember_answer(upstream.host, body)
    if answer.status_code == 200 and not ask.credentialed:
        # A client pulling with this token asks from the mirror's address, as nobody: its
        # rate limit is the mirror's (docxy.upstream.anonymous).
        state.client.anonymous_tokens.remember_answer(body)
    if ask.posted and answer.status_code == 200:
        body = for_post_client(body)
    if answer.status_code == 401:
        # Its challenge names no scope: for a by-prefix ask it must say via=prefix itself, or
        # the login the client holds for the mirror's name, sent with it, went to this upstream.
        challenge = own_challenge(state, upstream, by_prefix=asked_by_prefix(upstream, ask))
        response = refused_login(challenge, body)
    elif tokenless:
        error = UpstreamError(TOKENLESS)
        response = Response(error.encoded(), status=error.status, headers=Headers(error.headers()))
    elif answer.status_code == 200 or _json_object(body):
        content_type = answer.headers.get("content-type", "application/json")
        response = Response(body, status=answer.status_code, content_type=content_type)
    else:  # a proxy's or CDN's HTML page: the client parses error bodies as JSON
        said = f"the upstream's token service answered {answer.status_code}"
        error = UpstreamError(said, status=answer.status_code)
        response = Response(error.encoded(), status=error.status, headers=Headers(error.headers()))
    response.headers["Cache-Control"] = "no-store"
    for name, value in kept_retry_after(answer.headers.multi_items()):
        response.headers[name] = value
    return response


TOKENLESS = "the upstream's token service answered 200 without a token"


def holds_token(body: bytes) -> bool:
    """Whether a token service's ``200`` is a token answer: a JSON object with a ``token`` or
    an ``access_token`` that is a string, not empty (what Docker's clients and
    :class:`~docxy.upstream.tokens.MirrorTokens` take)."""
    parsed = jsondoc.object_in(body)
    if parsed is None:
        return False
    return any(isinstance(parsed.get(f), str) and parsed.get(f) for f in ("token", "access_token"))


def _json_object(body: bytes) -> bool:
    """Whether an error body is a JSON object (a registry's ``errors``, a token service's
    ``details``): relayed as it is."""
    return jsondoc.object_in(body) is not None


async def _ask_upstream(
    upstream: Upstream, realm: str, ask: TokenAsk, params: httpx.QueryParams
) -> httpx.Response:
    """The upstream's token service asked as every one of them takes it: a GET, with the
    client's Basic login if any (a password grant too). Only a refresh token, which only
    the POST form carries, is POSTed (to the service that issued it)."""
    client = mirror_state().client
    if ask.refresh_token is None:
        headers = [] if ask.authorization is None else [("Authorization", ask.authorization)]
        return await client.send(upstream, "GET", realm, headers, params=params, token_service=True)
    form = params.merge({"grant_type": "refresh_token", "refresh_token": ask.refresh_token})
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    # The client's own credential, in the form: its account's answers (a 429) are not the mirror's.
    return await client.send(
        upstream,
        "POST",
        realm,
        headers,
        content=str(form).encode(),
        client_credentials=True,
        token_service=True,
    )


def _is_mirror_user(authorization: str | None) -> bool:
    """Whether Basic credentials name one of the mirror's users (their password is checked
    by the mirror, never sent upstream), in any case: user names are lower case, and a
    user's ``Alice`` is still alice's password (the mirror refuses it; it does not leave).
    While the users file cannot be read nobody can tell: 503, and nothing leaves."""
    access = mirror_state().access
    credentials = basic_credentials(authorization)
    if access is None or credentials is None:
        return False
    from docxy.access.users import UsersFileError  # users mode: loaded with access.users

    try:
        return access.users.exists(credentials[0].lower())
    except UsersFileError as exc:
        log.error("users file: %s", exc)
        raise users_unreadable() from exc


def _is_mirror_token(ask: TokenAsk) -> bool:
    """Whether the request carries a token the mirror issued (valid or not), as a Bearer or
    as an OAuth2 refresh grant's ``refresh_token``: never a login for the upstream's token
    service."""
    access = mirror_state().access
    if access is None:
        return False
    tokens = (bearer_token(ask.authorization), ask.refresh_token)
    return any(token is not None and access.ours(token) for token in tokens)


async def _own_token(ask: TokenAsk) -> Response:
    """Users mode: the mirror is the token authority (``docxy.access.authority``, imported
    here: an open mirror loads neither argon2 nor PyJWT, see ``docxy.access.gate``)."""
    from docxy.access.authority import BASIC_CHALLENGE

    access = mirror_state().access
    assert access is not None
    if ask.refresh_token is not None:
        # The mirror issues no refresh tokens (a login it could not revoke when the users
        # file changes): one from anywhere else gets the way to a password login.
        answer: Issued | RegistryError = Unauthorized(NO_REFRESH_TOKENS, BASIC_CHALLENGE)
    else:
        answer = await _checked_login(access, ask)
    if isinstance(answer, RegistryError):  # the token endpoint's answers carry no API version
        headers = Headers(answer.headers())
        response = Response(answer.encoded(), status=answer.status, headers=headers)
    else:
        body = answer.posted_body() if ask.posted else answer.body
        response = Response(body, status=200, content_type="application/json")
        set_identity(request_facts(), ClientIdentity(Via.TOKEN, answer.user))
    response.headers["Cache-Control"] = "no-store"
    return response


async def _checked_login(access: AccessControl, ask: TokenAsk) -> Issued | RegistryError:
    """The token for the password ``ask`` carries, within the guessing limit of its client's
    address (``docxy.access.logins``): a client out of wrong guesses is not checked at all."""
    from docxy.access.authority import issue_token

    client, site = login_client(mirror_state())  # by address, never by the user name
    if ask.authorization is None:  # no password to check: nothing to count
        return issue_token(access, None, ask.scopes)
    refusal = access.logins.take(client, site)  # before the check: guesses sent at once count too
    if refusal is not None:
        return refusal
    # The check is a task of its own, run to its end once it has a hashing slot, whoever
    # still waits for it: a client that hangs up mid-check (Quart then cancels this handler)
    # must neither get its place back, a free guess, nor leave the hashing slot while its
    # thread still hashes, which let one address queue any number of argon2 runs on the
    # default executor. One still waiting for its slot is dropped with its client, unhashed,
    # its place given back (a password never checked is no guess, and nobody hears of it):
    # kept, such checks piled up outside every connection cap (connect, guess, hang up, from
    # every address of a network), each to be hashed in its turn ahead of later logins.
    hashing = asyncio.Event()
    check = spawn("password-check", _password_check(access, ask, (client, site), hashing))
    try:
        return await asyncio.shield(check)
    except asyncio.CancelledError:
        if not hashing.is_set():
            check.cancel()
        raise


async def _password_check(
    access: AccessControl, ask: TokenAsk, client: tuple[str, str | None], hashing: asyncio.Event
) -> Issued | RegistryError:
    """One password check within the hashing slots (``hashing`` set once it has one); its
    place in the guessing limit goes back unless the password was wrong."""
    from docxy.access.authority import BadCredentials, issue_token

    wrong = False
    try:
        async with access.hashing:  # a password check costs ~64 MiB and a core for a moment
            hashing.set()
            answer = await asyncio.to_thread(issue_token, access, ask.authorization, ask.scopes)
        wrong = isinstance(answer, BadCredentials)
    finally:
        if not wrong:  # a right password, or no answer at all: the place goes back
            access.logins.give_back(*client)
    return answer
