"""The Registry HTTP API v2 routes: the ``/v2/`` challenge, manifests and blobs (read-only).

A content request is parsed into a :class:`~docxy.pull.outcome.Pull`, handed to the blob or manifest
service, and its outcome rendered by ``docxy.http.responses``; a pass-through goes upstream with the
client's own credentials. :func:`_record` is the one place that writes what happened into the
access log's facts and the upstream's health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
from quart import Blueprint, Response, request

from docxy.access.gate import basic_scheme, remembered
from docxy.access.identity import Via, identity_of, set_identity
from docxy.cache.fill import BlobFollower
from docxy.core import jsondoc
from docxy.core.challenge import Challenge, offers_bearer, rewrite_challenges, with_error
from docxy.core.cidr import site_key
from docxy.core.digests import Digest, digest_of
from docxy.core.echoes import Secrets, told_headers
from docxy.core.errors import (
    RELAYED_LIMIT,
    ClientError,
    Denied,
    RegistryError,
    TooManyRequests,
    Unsupported,
    UpstreamAnswered,
    UpstreamError,
    UpstreamUnavailable,
)
from docxy.core.headers import (
    ACCEPT_IDENTITY,
    DIGEST_HEADER,
    content_length,
    kept_retry_after,
    request_headers,
    unsendable,
)
from docxy.core.names import Kind, Reference, parse_v2_path, upstream_name
from docxy.core.ranges import range_asked
from docxy.edge.clients import limit_key, request_address
from docxy.http.middleware import FILL, HANDOVER
from docxy.http.responses import (
    error_response,
    etag_of,
    registry_response,
    relay,
    served_response,
    unauthorized,
    with_cache_status,
)
from docxy.http.state import MirrorState, mirror_state
from docxy.pull.manifests import MANIFEST_TYPES, encoded
from docxy.pull.outcome import BlobContent, Outcome, PassThrough, Pull, Reason, Source
from docxy.shared.tier import ORIGIN as SHARED_ORIGIN
from docxy.upstream.client import (
    MAX_SMALL_BODY,
    SERVER_TROUBLE,
    Upstream,
    read_small,
    request_of,
)
from docxy.upstream.encoding import WBITS
from docxy.upstream.issuers import may_go_to
from docxy.upstream.routing import Route, request_picks
from docxy.upstream.tokens import login_secrets, sent_authorization

log = logging.getLogger(__name__)

blueprint = Blueprint("registry", __name__)

READ_METHODS = ("GET", "HEAD")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
JSON = [("Content-Type", "application/json")]
#: Request facts: the client's Bearer token was kept from the upstream as not its own
#: (``docxy.upstream.issuers``), or not told yet (a pass-through tells).
WITHHELD = "token_withheld"
UNTOLD = "token_untold"


def allowed_methods(path: str, valid: Iterable[str] | None) -> tuple[str, ...]:
    """What a ``405`` to ``path`` names in ``Allow``: ``GET, HEAD`` on the registry's routes,
    whose rules take :data:`ALL_METHODS` only to refuse writes as read-only (each of them is
    a ``405`` itself); elsewhere the methods its rule takes (``valid``, werkzeug's)."""
    if path == "/v2" or path.startswith("/v2/"):
        return READ_METHODS
    return tuple(valid or READ_METHODS)


def request_facts() -> dict[str, Any]:
    """The per-request facts the access log prints (set up by ``middleware.AccessLog``)."""
    facts = request.scope.get("docxy")
    if not isinstance(facts, dict):  # no access log around the app (tests): keep them anyway
        facts = request.scope["docxy"] = {}  # type: ignore[typeddict-unknown-key]
    return facts


def refuse_unsendable() -> None:
    """A header the mirror may forward upstream must be one it can send: else ``400``."""
    name = unsendable(request.headers.items())
    if name is not None:
        raise ClientError(f"the {name} header is not ASCII", {"header": name})


def count_relay(state: MirrorState, *, refuse: bool = True) -> bool:
    """This request is about to be passed upstream with no pull behind it (its ``/v2/``, its
    token): one from its address's bucket (True), or ``429`` (``docxy.edge.relays``); False
    instead of the ``429`` when not ``refuse`` (the caller has an answer of its own). An
    address in ``limits.exempt`` counts nothing and is never refused."""
    address = request_address(request.scope, state.config.server)
    if address in state.config.limits.exempt:
        return True
    site = site_key(address) if address is not None else None
    return state.relays.take(limit_key(None, address), site, refuse=refuse)


def login_client(state: MirrorState) -> tuple[str, str | None]:
    """This request's keys in the failed-login buckets (``docxy.access.logins``): its address,
    never the user name it guesses for, and an IPv6 one's /48."""
    address = request_address(request.scope, state.config.server)
    return limit_key(None, address), (site_key(address) if address is not None else None)


class ClientLogins:
    """The failed-login limit (``docxy.access.logins``) for this request's own Basic login,
    where the mirror sends it upstream: a registry that checks Basic passwords itself (no
    token service) sees every guess come from the mirror's address, as a token service does
    (``docxy.http.auth``). A client out of wrong guesses gets ``429`` and nothing is sent; a
    place is spent when the upstream refused the password (its ``401`` offers no Bearer
    challenge: a token registry answers any Basic login so, right or not). Only where the
    login goes: a cache hit, a fill with the mirror's login, a shared object send none, and
    are never refused for the client's password (a colleague's stale one behind the same
    address empties the bucket). Guesses in flight together may pass the limit by their
    number: charged into debt, waited out before the next one goes. Their number is bounded
    by the address's connections (``limits.connections_per_client`` and their HTTP/2
    streams) only where limits apply: not in ``limits.exempt`` networks."""

    def __init__(self, state: MirrorState) -> None:
        self._state = state
        self._client = login_client(state)

    @staticmethod
    def of(state: MirrorState, authorization: str | None) -> ClientLogins | None:
        """The limit for ``authorization`` when it is a Basic login, decoded here or not (it
        goes upstream as it is: :func:`~docxy.access.gate.basic_scheme`); None: nothing to
        limit."""
        return ClientLogins(state) if basic_scheme(authorization) else None

    def refusal(self) -> TooManyRequests | None:
        """Why this client may send no password now (out of wrong guesses), or None."""
        return self._state.logins.refusal(*self._client)

    def refuse(self) -> None:
        refusal = self.refusal()
        if refusal is not None:
            raise refusal

    def answered(self, status: int, challenges: list[str]) -> None:
        if status == 401 and not offers_bearer(challenges):
            self.charge()

    def charge(self) -> None:
        self._state.logins.charge(*self._client)

    async def asked(
        self, answer: Callable[[], Awaitable[Response]], wrong: Callable[[Response], bool]
    ) -> Response:
        """``answer()``, which sends the password upstream: a place spent when ``wrong`` says
        its answer refused it, or when the client hung up while it was asked (the password may
        have gone, and hanging up must not make guessing free); none when the upstream said
        nothing of it (a :class:`RegistryError`: down, not asked)."""
        try:
            response = await answer()
        except RegistryError:
            raise
        except BaseException:
            self.charge()
            raise
        if wrong(response):
            self.charge()
        return response


async def within_login_limit(
    state: MirrorState, authorization: str | None, answer: Callable[[], Awaitable[Response]]
) -> Response:
    """``answer()``, which sends ``authorization`` upstream, within the failed-login limit
    when it is a Basic password (:class:`ClientLogins`); a client that hung up while it was
    asked is charged too (its password may have gone)."""
    logins = ClientLogins.of(state, authorization)
    if logins is None:
        return await answer()
    logins.refuse()
    return await logins.asked(answer, _refused_basic)


def _refused_basic(response: Response) -> bool:
    """A registry's ``401`` to a Basic password that offers no Bearer challenge: the password
    refused (a token registry answers any Basic login so, right or not)."""
    return response.status_code == 401 and not offers_bearer(
        response.headers.getlist("WWW-Authenticate")
    )


def _raw_path() -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.decode("latin-1")
    return request.path


def _route(state: MirrorState, name: str = "") -> Route:
    """The upstream this request is for (``?ns=``, host name, path prefix): the one place that
    chooses it. An unknown one is refused here, before anything is sent. ``?ns=`` and the host
    are read from the request's bytes as admission reads them (``request_picks``): werkzeug's
    ``args`` decode a raw query as UTF-8, which an h2c ``:path`` may carry, so a name could
    be one upstream here and an unknown one to the access rules."""
    ns, host = request_picks(request.scope)
    return state.route(name, ns=ns, host=host)


@blueprint.route("/v2", methods=ALL_METHODS)
@blueprint.route("/v2/", methods=ALL_METHODS)
async def ping() -> Response:
    """Answer the version check with the upstream's challenge, realm re-pointed at the mirror:
    the one the mirror knows for a client without credentials, else the upstream's own answer
    (a token relay, ``docxy.edge.relays``)."""
    if request.method not in READ_METHODS:
        raise Unsupported(
            "this mirror is read-only", {"method": request.method}, allow=READ_METHODS
        )
    refused = _access(None)
    if refused is not None:
        return refused
    state = mirror_state()
    if state.access is not None and state.access.users_mode:
        return registry_response(b"{}", 200, JSON)  # the mirror is the authority: no upstream
    refuse_unsendable()
    upstream = _route(state).upstream
    realm = state.token_realm_for(upstream)
    sent = await _ping_credentials(state, upstream)
    known = None if sent is not None else state.client.known_challenge(upstream)
    # An upstream without auth: its answer is the version check's.
    is_open = known is None and sent is None and state.client.known_open(upstream)
    if known is None and not is_open:
        count_relay(state)
    elif state.client.challenge_fresh(upstream) or not count_relay(state, refuse=False):
        # The same for every client, and the mirror's own probe saw it: nothing to relay
        # (fresh), or nothing this client may relay now (however old).
        if known is None:  # an upstream without auth: its answer is the version check's
            return registry_response(b"{}", 200, JSON)
        return unauthorized(*rewrite_challenges([known.render()], realm, upstream.library_prefix))
    # docker login's check, a Basic one's: limited as a relayed login (None: none goes)
    return await within_login_limit(state, sent, lambda: _asked_ping(state, upstream, sent))


async def _asked_ping(state: MirrorState, upstream: Upstream, sent: str | None) -> Response:
    """The upstream's own answer to the client's ``/v2/``, asked with its headers (its
    ``Authorization`` only as ``sent``: :func:`_ping_credentials`)."""
    realm = state.token_realm_for(upstream)
    # Read here, not relayed: the shared client's codings (which read_small inflates), not the
    # client's (a browser's br came back as a 502).
    headers = request_headers(request.headers.items())
    dropped = ("accept-encoding",) if sent is not None else ("accept-encoding", "authorization")
    headers = [(k, v) for k, v in headers if k.lower() not in dropped]
    try:
        answer = await state.client.send(upstream, "GET", upstream.url("/v2/"), headers)
        body = await read_small(answer)
        if answer.status_code in SERVER_TROUBLE and state.cache is not None:
            raise UpstreamUnavailable(f"the upstream answered {answer.status_code}")
    except UpstreamError:
        if state.cache is None:
            raise
        # Stale-if-error: keep clients pulling what the cache holds. Tokens come from the
        # mirror's own endpoint, which answers offline too.
        return unauthorized(own_challenge(state, upstream))
    if answer.status_code == 401:
        offered = answer.headers.get_list("www-authenticate")
        return unauthorized(*rewrite_challenges(offered, realm, upstream.library_prefix))
    if answer.status_code >= 400:
        headers = JSON + kept_retry_after(answer.headers.multi_items())
        return registry_response(_error_body(body, answer.status_code), answer.status_code, headers)
    return registry_response(b"{}", 200, JSON)


def own_challenge(state: MirrorState, upstream: Upstream, *, by_prefix: bool = False) -> str:
    """The challenge ``/v2/`` sends for ``upstream`` without asking it: the mirror's token
    endpoint, and the upstream's ``service`` only if it was ever seen, never a guess
    (``/auth/token`` fills it in). ``by_prefix``: for a client that named the upstream by path
    prefix, whose login ``/auth/token`` then keeps from it (``via=prefix``)."""
    known = state.client.known_challenge(upstream)
    params = {"realm": state.token_realm_for(upstream, by_prefix=by_prefix)}
    if known is not None and known.service:
        params["service"] = known.service
    return Challenge("Bearer", params).render()


async def _ping_credentials(state: MirrorState, upstream: Upstream) -> str | None:
    """The client's ``Authorization`` for the upstream's ``/v2/``, when it may go there
    (:func:`~docxy.upstream.issuers.may_go_to`: never a token relayed for another upstream,
    which ``docker login`` or a client reusing it would send); None for none, or one kept
    here: the client is then answered as one without credentials, the upstream's challenge
    saying its token is invalid (:func:`say_withheld`). Whether credentials that go hold,
    only the upstream can say (``docker login`` checks a token so)."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return None
    upstreams = state.upstreams.all()
    if not await may_go_to(state.client, upstream, upstreams, authorization, probe=True):
        request_facts()[WITHHELD] = True
        return None
    return authorization


@blueprint.after_request
async def say_withheld(response: Response) -> Response:
    """A ``401`` to a request whose Bearer token the mirror kept from the upstream: each
    Bearer challenge says ``error="invalid_token"`` (RFC 6750 §3.1). containerd drops the
    token it holds for the mirror's host only on a challenge with an ``error``; without, it
    sends the same token again until its retries run out. A ``401`` to a client that sent
    no token, or whose token went, is left as it is (the start of the token dance)."""
    if response.status_code != 401 or not request_facts().get(WITHHELD):
        return response
    challenges = response.headers.getlist("WWW-Authenticate")
    response.headers.remove("WWW-Authenticate")
    for challenge in challenges:
        response.headers.add("WWW-Authenticate", with_error(challenge, "invalid_token"))
    return response


def _error_body(body: bytes, status: int) -> bytes:
    """The upstream's error body when it is a registry error, else the mirror's own saying the
    status (a proxy's HTML page, labelled JSON, would break the client's error parse)."""
    parsed = jsondoc.object_in(body)
    if parsed is not None and isinstance(parsed.get("errors"), list):
        return body
    return UpstreamError(f"the upstream answered {status} to /v2/", status=status).encoded()


@blueprint.route("/v2/<path:rest>", methods=ALL_METHODS)
async def content(rest: str) -> Response:
    """``/v2/<name>/manifests/<reference>`` and ``/v2/<name>/blobs/<digest>``, GET and HEAD."""
    del rest  # parsed from the raw path, so percent-encoding cannot hide a separator
    if request.method not in READ_METHODS:  # before parsing: pushes to uploads/ are 405 too
        raise Unsupported(
            "this mirror is read-only", {"method": request.method}, allow=READ_METHODS
        )
    reference = parse_v2_path(_raw_path())
    if reference is None:
        return await ping()
    refused = _access(reference.name)
    if refused is not None:
        return refused
    refuse_unsendable()
    state = mirror_state()
    route = _route(state, reference.name)
    pull = await _pull(route, reference)
    return await _content(state, route, pull)


async def _content(state: MirrorState, route: Route, pull: Pull) -> Response:
    """The pull's answer: served by the blob or manifest service, or passed through."""
    reference = pull.reference
    services = state.running
    started = time.monotonic()
    outcome: Outcome | None = None
    try:
        if reference.kind is Kind.BLOB:
            outcome = await services.blobs.get(pull)
        else:
            outcome = await services.manifests.get(pull)
        if not isinstance(outcome, PassThrough):
            response = served_response(outcome)
        elif isinstance(outcome.failed, UpstreamAnswered):  # said no: not asked again
            return with_cache_status(error_response(outcome.failed), outcome)  # fwd-status=
        elif outcome.failed is not None:  # silent, or sent no blob: not asked again
            return error_response(outcome.failed)  # the mirror's own error: no Cache-Status
        elif reference.kind is not Kind.BLOB or pull.head:
            response = await _limited_pass_through(state, pull, route)
        else:
            # Its permit is given back when the relayed body is done.
            try:
                release = await services.blobs.pass_through_permit(outcome)
            except TooManyRequests:
                outcome = None  # refused as a fill is, and logged so: nothing passed through
                raise
            try:
                response = await _limited_pass_through(state, pull, route, release)
            except BaseException:
                release()
                raise
        return with_cache_status(response, outcome)
    finally:
        _record(state, pull, outcome, started)


def _access(repository: str | None) -> Response | None:
    """Who the client is (``docxy.access``), into the request's facts; in ``users`` mode the
    refusal to answer with (``None`` for ``/v2/`` itself)."""
    access = mirror_state().access
    if access is None:
        return None
    known = remembered(request.scope)  # the edge's check of this request, if it ran
    decision = access.check(request.headers.get("Authorization"), repository, known)
    facts = request_facts()
    set_identity(facts, decision.identity)
    facts["forward_credentials"] = decision.forward_credentials
    refusal = decision.refusal
    if refusal is None:
        return None
    return error_response(refusal)


def _range(reference: Reference) -> str | None:
    """The client's ``Range`` of a blob, if its answer honours it (:func:`range_asked`)."""
    if reference.kind is not Kind.BLOB or reference.digest is None:
        return None
    headers = request.headers
    etag = etag_of(reference.digest)
    return range_asked(request.method, headers.get("Range"), headers.get("If-Range"), etag)


async def _pull(route: Route, reference: Reference) -> Pull:
    upstream = route.upstream
    # No probe here: a cache hit must not wait for one (the pass-through tells, if any).
    authorization = await _upstream_authorization(route, probe=False)
    anonymous = mirror_state().client.anonymous_tokens
    return Pull(
        upstream,
        upstream_name(route.name, upstream.library_prefix),
        reference,
        request.method,
        tuple(request.headers.getlist("Accept")),
        _range(reference),
        authorization=authorization,
        anonymous_token=authorization is not None and anonymous.anonymous(authorization),
        untold_token=bool(request_facts().get(UNTOLD)),
        logins=ClientLogins.of(mirror_state(), authorization),
    )


async def _upstream_authorization(route: Route, *, probe: bool = True) -> str | None:
    """The client's ``Authorization``, when it is meant for the upstream: never a token the
    mirror issued itself (users mode), which must not leave the mirror; never a Basic login
    on a route chosen by path prefix (``mirror/lab.example/owner/img``) to an upstream other
    than ``[upstream]``. A client holds that login for the mirror's host name, which stands
    for ``[upstream]`` (Docker Hub), as the token endpoint has it
    (:func:`~docxy.http.auth.credentials_go_to`); containerd and podman answer a relayed Basic
    challenge with it. A Bearer token there is that upstream's own: the token endpoint asked
    it of that upstream, anonymously; never a token the mirror relayed for another upstream
    (:mod:`docxy.upstream.issuers`), which a client that reaches several through one host may
    send with the same scope's request for another; nor, with several upstreams, a token the
    mirror does not know (a restart) unless its JWT claims tell it is this upstream's.
    Kept back, :data:`WITHHELD` is set; not told yet (no ``probe`` of the routed upstream's
    challenge, never seen), :data:`UNTOLD`."""
    if not request_facts().get("forward_credentials", True):
        return None
    given = request.headers.getlist("Authorization")
    if len(given) > 1:  # one credential a request (RFC 9110 §11.6.2): none is told to go
        return None
    authorization = given[0] if given else None
    by_prefix = route.prefix is not None and not route.upstream.is_default
    if by_prefix and (authorization or "").lower().startswith("basic "):
        return None
    if authorization is None:
        return None
    state = mirror_state()
    upstreams = state.upstreams.all()
    verdict = await may_go_to(state.client, route.upstream, upstreams, authorization, probe=probe)
    facts = request_facts()
    facts[UNTOLD] = verdict is None
    facts[WITHHELD] = verdict is False
    if not verdict:
        return None  # another's token (containerd reuses one per scope), or not told whose
    return authorization


async def _limited_pass_through(
    state: MirrorState, pull: Pull, route: Route, release: Callable[[], None] | None = None
) -> Response:
    """:func:`_pass_through` within the failed-login limit (:class:`ClientLogins`; the
    services' checks with the client's login are, through :attr:`Pull.logins`)."""
    return await within_login_limit(
        state, pull.authorization, lambda: _pass_through(state, pull, route, release)
    )


async def _pass_through(
    state: MirrorState, pull: Pull, route: Route, release: Callable[[], None] | None = None
) -> Response:
    """Send the request upstream with the client's own headers; relay the answer.

    An upstream without a token service gets the mirror's own Basic login in place of the
    client's token (which grants nothing there), unless the client sent a Basic login itself.
    A client whose login stays here (``users`` mode: its token is the mirror's) is sent with
    the mirror's own login, as the mirror's fills are: a token upstream (Docker Hub) answers
    nothing without one, public repositories included, and the client cannot hold one there.
    So an upstream ``401`` to that login is no request for the client's: relayed, its challenge
    (re-pointed here) sent clients for another token of the mirror's, a password check that
    changed nothing (containerd: ``insufficient_scope: authorization failed``, docker: ``may
    require 'docker login'``). It is ``403 DENIED`` saying so, but to a certificate client
    under ``auth.upstream_logins``, whom the challenge lets bring its own upstream login.
    """
    headers = _codings_asked(pull, request_headers(request.headers.items(), head=pull.head))
    if not request_facts().get("forward_credentials", True):
        kept = [(k, v) for k, v in headers if k.lower() != "authorization"]
        tokens = state.running.tokens
        answer = await tokens.send(pull.upstream, pull.method, pull.name, pull.path, kept)
        sent = tokens.secrets(pull.upstream, pull.name, [sent_authorization(answer)])
        answer = await _told_without(pull, answer, sent)
        if answer.status_code == 401 and not _brings_upstream_login(state):
            await answer.aclose()
            raise Denied(UPSTREAM_REFUSED_MIRROR.format(name=route.name))
        response = await _relayed(state, pull, route, answer, release)
        if answer.status_code == 401 and "WWW-Authenticate" not in response.headers:
            # The token service refused the mirror itself: a 401 still names where to log in.
            by_prefix = route.prefix is not None
            challenge = own_challenge(state, pull.upstream, by_prefix=by_prefix)
            response.headers["WWW-Authenticate"] = challenge
        return response
    client_login = await _upstream_authorization(route)
    if client_login is None:  # none, or the mirror's own token: it stays here
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
    mirror_login = None
    if not (client_login or "").lower().startswith("basic "):
        mirror_login = await state.running.tokens.basic_login(pull.upstream)
    if mirror_login is not None:
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        headers.append(("Authorization", mirror_login))
    url = pull.upstream.url(pull.path)
    answer = await state.client.send(
        pull.upstream, pull.method, url, headers, mirror_credentials=mirror_login is not None
    )
    if mirror_login is not None:
        answer = await _told_without(pull, answer, login_secrets(pull.upstream, [mirror_login]))
    return await _relayed(state, pull, route, answer, release)


def _codings_asked(pull: Pull, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` for the upstream with the ``Accept-Encoding`` a pass-through asks in.

    Content asked for by digest is checked (:func:`_verified`), so the upstream is asked only
    in codings the mirror can check it in: a manifest in the client's own codings the mirror
    reads (gzip, deflate: :data:`~docxy.upstream.encoding.WBITS`), in its order and weights,
    else ``identity``; held whole and decoded (:func:`_decoded_whole`): one in ``br`` or
    ``zstd``, which ``curl --compressed`` and browsers offer, could not be and was a ``502``.
    A blob ``identity`` whatever the client takes: it is hashed as it is relayed, its bytes as
    they come (a coding of it would go unchecked). Anything else (by tag) in the client's own
    codings, relayed as it comes. A client that names none is asked ``identity``, not httpx's
    own gzip: a client that asked for no coding reads the body as the blob (curl and scripts:
    zipped bytes)."""
    asked = [v for k, v in headers if k.lower() == "accept-encoding"]
    digest, kind = pull.reference.digest, pull.reference.kind
    if digest is None and asked:
        return headers
    headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
    if digest is None or kind is Kind.BLOB:
        return [*headers, ACCEPT_IDENTITY]
    readable: list[tuple[str, float]] = []
    for item in ",".join(asked).split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name in WBITS or (name == "identity" and _weight(params) > 0):
            readable.append((item.strip(), _weight(params)))
    if not any(weight > 0 for _, weight in readable):
        return [*headers, ACCEPT_IDENTITY]
    return [*headers, ("Accept-Encoding", ", ".join(item for item, _ in readable))]


#: A users-mode client's request the upstream answered 401 with the mirror's own login.
UPSTREAM_REFUSED_MIRROR = (
    "the upstream answered 401 to the mirror's own login for {name}: it does not exist there, "
    "or the mirror's upstream account may not pull it; a login to this mirror cannot change that"
)


def _brings_upstream_login(state: MirrorState) -> bool:
    """Whether this client may bring a login of its own for the upstream, which a ``401`` with
    a challenge would make it send: a certificate client under ``auth.upstream_logins``."""
    access = state.access
    identity = identity_of(request.scope)
    return access is not None and access.upstream_logins and identity.via is Via.CERTIFICATE


async def _relayed(
    state: MirrorState,
    pull: Pull,
    route: Route,
    answer: httpx.Response,
    release: Callable[[], None] | None = None,
) -> Response:
    """The upstream's ``answer`` to a request passed through, for the client (``release``:
    :func:`~docxy.http.responses.relay`'s).

    A blob's ``200`` or ``206`` names its digest (``Docker-Content-Digest``), as the registry
    API says and clients read (containerd's resolver and skopeo from a ``HEAD``): a blob
    redirected to a CDN is answered by the CDN, which sends none. The digest the client asked
    for is the only one a content-addressed blob can have; one the upstream sent is kept.
    A manifest's ``200`` that names none is given the digest of its bytes, when the mirror
    holds them whole (:func:`_held_whole`); one it does not hold whole gets none.

    Content asked for by digest is that content or an error (:func:`_verified`): known wrong
    before a byte goes out, ``502`` (:func:`_refuse_wrong`); else a body not held whole is
    hashed as it is relayed, and cut before its last byte if it is not the content."""
    answer, computed = await _held_whole(pull, answer)
    verified = _verified(pull, answer, held=computed is not None)
    if verified is not None:
        await _refuse_wrong(pull, answer, verified, computed)
    streamed = not pull.head and computed is None and _of_its_bytes(pull, answer)
    response = relay(
        answer,
        method=pull.method,
        realm=state.token_realm_for(pull.upstream, by_prefix=route.prefix is not None),
        library_prefix=pull.upstream.library_prefix,
        prefix=route.prefix,
        release=release,
        digest=verified if streamed else None,
    )
    digest = pull.reference.digest
    is_blob = pull.reference.kind is Kind.BLOB and digest is not None
    if is_blob and answer.status_code in (200, 206) and DIGEST_HEADER not in response.headers:
        response.headers[DIGEST_HEADER] = str(digest)
    if computed is not None:
        response.headers[DIGEST_HEADER] = str(computed)
    return response


def _verified(pull: Pull, answer: httpx.Response, *, held: bool = False) -> Digest | None:
    """The digest a ``GET``'s or ``HEAD``'s ``200`` passed through is checked against (a blob's
    or a manifest's, asked for by that digest): a body is verified as a fill's download is,
    hashed as it is relayed (:func:`~docxy.http.responses.relay`) or held whole first (a
    manifest within the cap: :func:`_held_whole`); a ``HEAD`` says only its length, and one of
    ``0`` for content that is not empty is known wrong. None for anything else: asked by tag
    (no digest to check), a ``206`` (a part says nothing of the digest), and a manifest not
    held whole in a content coding the client asked for itself (its bytes are a coding of the
    content, which the client decodes: one of a type not known to be the digest of its bytes).
    A blob is asked ``identity`` whatever the client takes (:func:`_codings_asked`): one coded
    all the same is verified as it comes, as a fill's is (a storage's ``gzip`` label); a
    manifest ``held`` whole, by what :func:`_held_whole` decoded it to."""
    digest = pull.reference.digest
    if digest is None or answer.status_code != 200:
        return None
    is_blob = pull.reference.kind is Kind.BLOB
    if encoded(answer) and "accept-encoding" in request.headers and not (held or is_blob):
        return None
    return digest


def _of_its_bytes(pull: Pull, answer: httpx.Response) -> bool:
    """Whether the digest of the content ``answer`` brings is that of all its bytes: a blob's,
    and a manifest's of the types the mirror caches (a signed schema 1 manifest's is of its
    payload; one of a type not known is not known to be)."""
    return pull.reference.kind is Kind.BLOB or _media_type(answer) in MANIFEST_TYPES


async def _refuse_wrong(
    pull: Pull, answer: httpx.Response, verified: Digest, computed: Digest | None
) -> None:
    """Raise ``502 UNAVAILABLE`` (one WARNING line) for an ``answer`` known not to be the
    content ``verified`` names before a byte of it goes out: a manifest held whole whose bytes
    hash to another digest (``computed``: said as the cached path's
    :class:`~docxy.cache.errors.DigestMismatch` says it), and a ``200`` (a ``GET``'s or a
    ``HEAD``'s) of ``Content-Length: 0`` for a digest that is not the empty content's. Relayed,
    either would be a whole ``200`` of other content; a client asking by digest gets that
    content or an error. (The answer is closed; the caller gives the permit back.)"""
    kind = "blob" if pull.reference.kind is Kind.BLOB else "manifest"
    if computed is not None and computed != verified:
        said = f"{kind} for {verified} hashes to {computed}"
    elif content_length(answer.headers.get("content-length")) == 0 and verified != digest_of(
        b"", verified.algorithm
    ):
        said = f"the upstream answered {verified} with an empty 200"
    else:
        return
    await answer.aclose()
    log.warning("%s %s from upstream does not match its digest: %s", kind, pull.path, said)
    raise UpstreamUnavailable(f"{said}: not the {kind}")


async def _told_without(pull: Pull, answer: httpx.Response, secrets: Secrets) -> httpx.Response:
    """The upstream's ``answer`` to a pass-through sent with the mirror's own credentials, as
    a client may be told it: none of ``secrets`` in its header fields
    (:func:`~docxy.core.echoes.told_headers`: a field repeating one dropped, a challenge's
    parameter too; a ``HEAD``'s as well, whose fields are all it says), and an error's
    (``4xx``/``5xx``) body told as the registry error a client may read
    (:class:`~docxy.core.errors.UpstreamAnswered`): none of ``secrets`` in it, else the
    mirror's own words for its code; one that is no registry error (a proxy's page, or over
    :data:`~docxy.core.errors.RELAYED_LIMIT` bytes), the mirror's own error for its status.
    Any other answer's body, and a ``HEAD``'s (none), as it comes."""
    came = answer.headers.multi_items()
    told = told_headers(came, secrets)
    if answer.status_code < 400 or pull.head:
        if told != came:
            answer.headers = httpx.Headers(told)  # its body is not touched: as it comes
        return answer
    try:
        body = await read_small(answer, RELAYED_LIMIT)  # closes it
    except UpstreamError:  # too large, or broke off: none to tell
        body = b""
    unknown = "BLOB_UNKNOWN" if pull.reference.kind is Kind.BLOB else "MANIFEST_UNKNOWN"
    content = UpstreamAnswered(answer.status_code, body, pull.name, unknown, secrets).encoded()
    headers = [(k, v) for k, v in told if k.lower() not in _FRAMING | {"content-type"}]
    headers += [("Content-Type", "application/json"), ("Content-Length", str(len(content)))]
    stream = httpx.ByteStream(content)  # not read yet: relayed as a streamed answer is
    # (no request: the refusal MirrorTokens.send answers in the upstream's name)
    sent = request_of(answer)
    return httpx.Response(answer.status_code, headers=headers, stream=stream, request=sent)


def _media_type(answer: httpx.Response) -> str:
    media: str = answer.headers.get("content-type", "")
    return media.split(";")[0].strip().lower()


async def _held_whole(pull: Pull, answer: httpx.Response) -> tuple[httpx.Response, Digest | None]:
    """A manifest ``GET``'s ``200`` that names no ``Docker-Content-Digest`` (the registry API's
    SHOULD; a client reads it, ``docker pull``'s ``Digest:`` line by tag), or one asked for by
    digest (named or not: checked against it, :func:`_refuse_wrong`): read whole when its
    length says it is within the manifest cap (as the mirror's own manifest fetch is), and
    answered as read, with the digest of those bytes (sha256, or the algorithm of the digest
    asked for), as Distribution names it. One asked for by digest in a content coding is held
    whole whatever its length (:func:`_decoded_whole`): its digest is that of what it decodes
    to. Any other answer is relayed as it comes, and None: no body held whole (no length, a
    zipped one by tag, a larger one, a ``HEAD``), no digest made up; nor for a type whose
    digest is not that of all its bytes, or not known to be (a signed schema 1 manifest's is
    of its payload)."""
    if (
        pull.reference.kind is not Kind.MANIFEST
        or pull.head
        or answer.status_code != 200
        or (DIGEST_HEADER in answer.headers and pull.reference.digest is None)
        or (encoded(answer) and pull.reference.digest is None)
        or _media_type(answer) not in MANIFEST_TYPES  # schema 1's is not of all its bytes
    ):
        return answer, None
    if pull.reference.digest is not None and encoded(answer):
        return await _decoded_whole(pull, answer, pull.reference.digest)
    length = content_length(answer.headers.get("content-length"))
    if length is None or length > MAX_SMALL_BODY:
        return answer, None
    body = await read_small(answer)  # closes it; a body that breaks off is an UpstreamError
    stream = httpx.ByteStream(body)  # not read yet: relayed as a streamed answer is
    held = httpx.Response(200, headers=answer.headers, stream=stream, request=answer.request)
    asked = pull.reference.digest  # by digest: in the algorithm the client asked in
    return held, digest_of(body, asked.algorithm if asked is not None else "sha256")


async def _decoded_whole(
    pull: Pull, answer: httpx.Response, asked: Digest
) -> tuple[httpx.Response, Digest]:
    """A manifest asked for by ``asked`` whose ``answer`` is in a content coding (``gzip``:
    what Go's clients ask for, docker's and containerd's; or sent though the mirror asked
    ``identity``), held whole and decoded as the mirror's own manifest fetch decodes it
    (:func:`~docxy.upstream.client.read_small`: each within the manifest cap), and the digest
    of what it decodes to (the manifest's digest is of its bytes, not of a coding of them);
    asked only in codings the mirror reads (:func:`_codings_asked`). Answered as it came to a
    client that takes its coding (``Accept-Encoding``), decoded (its own length, no
    ``Content-Encoding``) to one that does not: what it asked for. One larger than the cap,
    in a coding the mirror does not read (``br``, sent though not asked for), or that does
    not decode, cannot be checked: ``502 UNAVAILABLE`` saying why (one WARNING line)."""
    coding = answer.headers.get("content-encoding", "").strip().lower()
    try:
        raw = await read_small(answer, inflate=False)  # closes it
        stream = httpx.ByteStream(raw)
        came = httpx.Response(200, headers=answer.headers, stream=stream, request=answer.request)
        body = await read_small(came)  # decoded, bounded
    except UpstreamUnavailable as exc:  # too large (AnswerTooLarge), corrupt, unknown coding
        said = f"manifest for {asked} came {coding}-encoded and cannot be checked: {exc}"
        log.warning("manifest %s from upstream: %s", pull.path, said)
        raise UpstreamUnavailable(said) from exc
    sent = raw if _takes(coding) else body
    headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _FRAMING]
    if sent is raw:
        headers.append(("Content-Encoding", coding))
    headers.append(("Content-Length", str(len(sent))))
    stream = httpx.ByteStream(sent)  # not read yet: relayed as a streamed answer is
    held = httpx.Response(200, headers=headers, stream=stream, request=answer.request)
    return held, digest_of(body, asked.algorithm)


#: The fields a held answer's body is framed by, set anew for what is relayed.
_FRAMING = {"content-length", "content-encoding", "transfer-encoding"}


def _takes(coding: str) -> bool:
    """Whether this request's ``Accept-Encoding`` takes ``coding`` (named, or ``*``, at a
    weight that is not ``0``); none sent takes none here: the mirror asked ``identity``."""
    for item in request.headers.get("accept-encoding", "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() in (coding, "*"):
            return _weight(params) > 0
    return False


def _weight(params: str) -> float:
    """An ``Accept-Encoding`` item's weight by its parameters (``q=``; none: ``1``); ``0``
    for one that is no number."""
    weight = params.strip().lower().removeprefix("q=").strip() if params else "1"
    try:
        return float(weight or "1")
    except ValueError:
        return 0.0


def _record(state: MirrorState, pull: Pull, outcome: Outcome | None, started: float) -> None:
    """What happened, for the access log (``cache=``, upstream time) and for health."""
    facts = request_facts()
    if outcome is None:  # an error before any outcome: the error response says it all
        return
    if isinstance(outcome, PassThrough):
        facts["cache"] = "bypass" if outcome.reason is Reason.NO_CACHE else "uncached"
        facts["reason"] = outcome.reason.value
    else:
        facts["cache"] = outcome.source.value
        if outcome.not_kept is not None:  # served, not cached (Cache-Status: stored=?0)
            facts["reason"] = outcome.not_kept.value
        content = outcome.content
        stream = content.stream if isinstance(content, BlobContent) else None
        if isinstance(stream, BlobFollower):
            # The rest may come from the upstream yet: the client's own, should the cache give
            # the fill up; the fill's, should a shared store's body break off.
            own = stream.handover
            shared = outcome.source is Source.SHARED
            facts[HANDOVER] = (stream.fill.handover, own) if shared else (own,)
            if stream.fill.origin != SHARED_ORIGIN:  # once the upstream's, whoever gets them
                facts[FILL] = stream.fill
        if outcome.source is Source.STALE:
            state.client.health_of(pull.upstream).served_stale()
        if outcome.source is Source.HIT:
            return
    facts["upstream_ms"] = (time.monotonic() - started) * 1000
