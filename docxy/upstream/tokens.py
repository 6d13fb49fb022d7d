"""The mirror's own upstream tokens, kept to itself.

For cache fills and revalidation the mirror does not use the client's token: it asks the
upstream's token service for a pull token of its own — anonymous, or with the configured
``upstream.username``/``upstream.password`` — per repository, and reuses it until shortly
before it expires. Content the mirror can read this way is what it may share from its cache.

Concurrent misses for one repository share one token request: the first starts it as a named
task, the others await it (a client going away cancels only its own wait). A failed request
is not remembered: every waiter gets the error, and the next miss asks again; but a 429 (or
503) with ``Retry-After`` is: no new token is asked of that token service before then.

A token service that refuses the mirror (401/403: its credentials revoked, or no anonymous
tokens) has answered, not failed: :class:`TokenRefused`, and :meth:`MirrorTokens.send` answers
the request with that refusal as the upstream would answer a token it does not accept, so the
pull services pass the content through (or confirm it with the client's credentials) instead
of taking the upstream for down (stale-if-error, health). That answer stands for
``REFUSED_TTL``: the repository's next misses do not ask the token service again.

The mirror's own login is checked as ``docker login`` checks one: the token service asked with
it and no scope (:meth:`MirrorTokens._login_verdict`), once per upstream at a time (concurrent
misses wait for that one verdict), before it goes with a scope, and again when a scope's request
with it is answered ``401``. A token service that answers it with a ``4xx`` that is no verdict
(some answer every scope-less request ``400``) is asked with the miss's repository's scope
instead (for ``REFUSED_TTL`` after a ``400``, or the same other ``4xx`` twice in a row): a token
with the login accepts it, a ``401`` to it where the same scope asked anonymously gets a token
that grants ``pull`` on it refuses it; anything else says nothing
(:meth:`MirrorTokens._scoped_check`). Refused there (``upstream.password`` wrong or revoked),
it stands for the upstream: for ``REFUSED_TTL`` no request carries that login, tokens are asked
for anonymously. Accepted there, a scope's ``401`` is that repository's only (gcr.io and
Artifact Registry answer ``401`` to a good login that may not read one repository). No verdict
there, that repository's ``401`` stands for ``REFUSED_TTL`` too (the login not sent for it
meanwhile), and while the login has no verdict ``NO_VERDICT_SENDS`` token requests go with it
in ``REFUSED_TTL`` at most (:meth:`MirrorTokens._may_send_unvouched`). An acceptance is
trusted for ``LOGIN_TRUSTED``; past ``REFUSED_TTL`` of it, the login goes with one token
request per upstream at a time, the other misses waiting for its outcome
(:meth:`MirrorTokens._login_turn`); a token service that answered it not in time has their
requests time out with it, not sent to wait the timeout again (a check of its ``401`` that
timed out does not: the ``401`` may be its repository's alone).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import time
from collections.abc import Iterable

import httpx

from docxy.core import jsondoc
from docxy.core.bounded import MAX_REPOSITORIES, LruDict
from docxy.core.challenge import Challenge
from docxy.core.echoes import ECHO_RUN, Secrets
from docxy.core.errors import (
    TokenServiceTimeout,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from docxy.core.expiry import token_lifetime
from docxy.core.grants import grants_pull
from docxy.core.headers import retry_after_seconds
from docxy.core.hosts import url_host
from docxy.tasks import Coalesced
from docxy.upstream.client import (
    RATE_LIMIT_HOLD,
    ProbeTrouble,
    Upstream,
    UpstreamClient,
    clear_realm_remedy,
    read_small,
    request_of,
    same_origin,
)

log = logging.getLogger(__name__)

EXPIRY_MARGIN = 30.0
REFUSED_TTL = 60.0  # seconds a repository the mirror's token cannot read is passed through
#: Seconds a login the token service accepted is trusted without another scope-less check
#: (:meth:`MirrorTokens._login_verdict`). The check tells a wrong password from a login that
#: may not read one repository, and a scoped ``401`` with the login checks it again at once:
#: a password revoked meanwhile is found at its first refusal all the same. Checked again
#: after every ``REFUSED_TTL``, each first miss after a quiet minute paid one more token
#: request, on its client's path (a quiet mirror's token requests about doubled). Past
#: ``REFUSED_TTL``, one token request with the login goes at a time per upstream, the other
#: misses waiting for its outcome (:meth:`MirrorTokens._login_turn`): a password revoked in a
#: quiet spell is not sent by every concurrent miss before the first ``401`` comes back.
LOGIN_TRUSTED = 3600.0
#: Seconds the token service is not asked for a new token after a 429 without ``Retry-After``.
REST_WITHOUT_RETRY_AFTER = 5.0
#: Seconds a scope-less login check the token service did not answer in time is remembered:
#: a ``401`` meanwhile is not checked again (:meth:`MirrorTokens._fetch`), it stands for its
#: repository, not the login (the misses that waited for that check would each have waited
#: the timeout of a new one), for that miss only: not remembered for ``REFUSED_TTL`` (a public
#: repository stood refused a minute for a revoked password, the token service answering
#: again a second after its silence), the next miss past the hold checks it.
CHECK_SILENCE_HOLD = 5.0
#: Token requests with the login an upstream is sent in ``REFUSED_TTL`` while the login has
#: no verdict (neither accepted nor refused: :meth:`MirrorTokens._may_send_unvouched`). A token
#: service that gives none (``400`` without a scope, an anonymous token granting nothing for a
#: private name) cannot tell a wrong password from a name the account may not read: each such
#: request may be a failed login on the account, and clients pulling private names one after
#: another sent it without bound. Past it the login is held back (tokens asked anonymously)
#: for the rest of that time; a login once accepted is never held back so.
NO_VERDICT_SENDS = 5
#: The longest a token is kept, whatever its ``expires_in`` says (Docker Hub's last 300 s).
MAX_EXPIRES_IN = 86400.0
#: A token as it may go in ``Authorization: Bearer``: visible ASCII, no space.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def lifetime(expires_in: object) -> float:
    """Seconds a token from the upstream's token service is used: its ``expires_in``, the
    token spec's 60 s for none (or a value that is no length of time), at least those 60 s
    (Docker's least), at most a day."""
    return token_lifetime(expires_in, MAX_EXPIRES_IN)


WITHHELD_LOGGED = 64  # (upstream, token service) pairs remembered as logged, the latest


def _lately(since: float | None, seconds: float = REFUSED_TTL) -> bool:
    """Whether ``since`` (a ``time.monotonic()`` a map remembered, None: nothing) is less than
    ``seconds`` ago."""
    return since is not None and time.monotonic() - since < seconds


class TokenRefused(UpstreamError):
    """The upstream's token service refused the mirror: ``401 UNAUTHORIZED`` or ``403 DENIED``.

    An ``UpstreamError`` so that whoever fetches with the mirror's token gives up the fetch as
    for any upstream error; never an outage (nothing counts it as one, the services are told
    by :meth:`MirrorTokens.send` as an answer).

    ``unchecked``: a ``401`` to the mirror's login taken for its repository's without a check
    of the login, one having gone unanswered lately (``CHECK_SILENCE_HOLD``): not remembered
    (:meth:`MirrorTokens._fetch_and_keep`), the next miss after the hold checks it."""

    def __init__(self, status: int, *, unchecked: bool = False) -> None:
        super().__init__(
            f"the upstream's token service refused the mirror ({status})", status=status
        )
        self.code = "DENIED" if status == 403 else "UNAUTHORIZED"
        self.unchecked = unchecked

    def answer(self) -> httpx.Response:
        """The refusal as the upstream's answer to a request made with the refused token: a
        body not read yet, as the upstream's are (a pass-through relays it as a stream)."""
        headers = {"Content-Type": "application/json"}
        return httpx.Response(self.status, headers=headers, stream=httpx.ByteStream(self.encoded()))


def _carried_login(answer: httpx.Response) -> bool:
    """Whether the request ``answer`` answers (the last hop's, after redirects) carried the
    ``Authorization`` it was sent with (:func:`~docxy.upstream.client.next_hop` drops it on a
    hop to another origin). An answer that names no request (a test's stand-in) did."""
    sent = request_of(answer)
    return sent is None or "authorization" in sent.headers


def _token_in(body: bytes) -> str | None:
    """The token in a token service's answer (``token``, or OAuth2's ``access_token``)."""
    data = jsondoc.object_in(body) or {}
    token = data.get("token") or data.get("access_token")
    return token if isinstance(token, str) and token else None


def basic_authorization(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def sent_authorization(answer: httpx.Response) -> str | None:
    """The ``Authorization`` the request ``answer`` answers carried (its last hop's), if any."""
    sent = request_of(answer)
    return sent.headers.get("authorization") if sent is not None else None


def login_secrets(upstream: Upstream, sent: Iterable[str | None] = ()) -> Secrets:
    """What an upstream's answer to a request sent with the mirror's own credentials must not
    pass on to a client (:class:`~docxy.core.echoes.Secrets`).

    What an echo of the request repeats is its ``Authorization``: the credential of each value
    ``sent`` (the Bearer token, the Basic base64) and the Basic form of the mirror's login for
    ``upstream`` whether sent or not, each looked for as any 12 of its characters (one shorter,
    the value as sent, whole). The login in plain text stands for it but is not what a
    request carries (Basic sends it base64-encoded only): ``user:password`` is looked for
    whole, and no run of the username alone, which names repositories and tags
    (``mycompanyrobot/app:mycompanyrobot-v2``). The password alone only when it is 12
    characters or more, whole: a shorter one may be an ordinary word (``docker``, which every
    Docker Hub rate-limit message holds in ``docker.com``), and its plain text is no echo of
    a header; the Basic form and ``user:password`` still find the request's echo."""
    runs: list[str] = []
    whole: list[str] = []
    for authorization in sent:
        value = (authorization or "").strip()
        credential = value.partition(" ")[2].strip() or value  # a token held: no scheme
        if len(credential) >= ECHO_RUN:
            runs.append(credential)
        elif value:
            whole.append(value)
    if upstream.credentials is not None:
        user, password = upstream.credentials
        runs.append(basic_authorization(user, password).partition(" ")[2])
        whole.append(f"{user}:{password}")
        if len(password.strip()) >= ECHO_RUN:
            whole.append(password)
    return Secrets(runs, whole)


class MirrorTokens:
    """Pull tokens the mirror holds for itself, per (upstream, repository)."""

    def __init__(self, client: UpstreamClient, capacity: int = MAX_REPOSITORIES) -> None:
        self.client = client
        self._tokens: LruDict[tuple[str, str], tuple[float, str]] = LruDict(capacity)
        self._refused: LruDict[tuple[str, str], float] = LruDict(capacity)
        #: repositories the token service itself refused the mirror: (when, 401 or 403)
        self._denied: LruDict[tuple[str, str], tuple[float, int]] = LruDict(capacity)
        #: repositories whose last token request was refused unchecked (:class:`TokenRefused`'s
        #: ``unchecked``): since when; their refusal answered not marked (:meth:`mark_refused`)
        self._unchecked: LruDict[tuple[str, str], float] = LruDict(capacity)
        #: upstream hosts whose token service refused the mirror's login (401): since when.
        #: Not sent again before ``REFUSED_TTL`` is over: its tokens are asked anonymously.
        self._login_refused: LruDict[str, float] = LruDict(WITHHELD_LOGGED)
        #: upstream hosts whose token service last accepted the mirror's login: since when
        self._login_accepted: LruDict[str, float] = LruDict(WITHHELD_LOGGED)
        #: scope-less login checks in flight, one per upstream host (:meth:`_login_verdict`)
        self._checking: Coalesced[str, bool | None] = Coalesced(UpstreamError)
        #: upstream hosts whose token service answered a scope-less check ``400`` ("scope
        #: required"): since when (:meth:`_wants_scope`)
        self._scope_required: LruDict[str, float] = LruDict(WITHHELD_LOGGED)
        #: upstream hosts whose last scope-less check was answered a ``4xx`` that is no verdict
        #: nor a ``400``: when, and that status (:meth:`_note_scopeless`)
        self._scopeless_seen: LruDict[str, tuple[float, int]] = LruDict(WITHHELD_LOGGED)
        #: repositories whose ``401`` to the login a scoped check found no verdict in (the
        #: anonymous token grants nothing there): since when (:meth:`_said_nothing`)
        self._no_verdict: LruDict[tuple[str, str], float] = LruDict(capacity)
        #: upstream hosts: the start of the ``REFUSED_TTL`` the requests sent with a login of
        #: no verdict are counted in, how many, and whether holding it back was logged
        self._unvouched: LruDict[str, tuple[float, int, bool]] = LruDict(WITHHELD_LOGGED)
        #: upstream hosts whose login check (after a scoped ``401``) timed out: since when
        #: (``CHECK_SILENCE_HOLD``)
        self._check_silent: LruDict[str, float] = LruDict(WITHHELD_LOGGED)
        #: upstream hosts with a token request in flight that carries a login accepted more
        #: than ``REFUSED_TTL`` ago, done when its outcome is known (:meth:`_login_turn`): the
        #: timeout it ended in, if the token service did not answer it
        self._vouching: dict[str, asyncio.Future[UpstreamTimeout | None]] = {}
        #: (upstream host, realm) pairs whose withheld login was logged (:meth:`_login_withheld`)
        self._withheld: LruDict[tuple[str, str], bool] = LruDict(WITHHELD_LOGGED)
        #: upstream hosts whose token service answered 429 (or 503) with a Retry-After: until
        #: when no new token is asked of it, and what the misses meanwhile are told
        self._resting: LruDict[str, tuple[float, str]] = LruDict(capacity)
        #: token requests in flight, one per (upstream, repository); as many as clients waiting
        self._fetching: Coalesced[tuple[str, str], str] = Coalesced(UpstreamError)

    def __len__(self) -> int:
        """Repositories the mirror remembers something about (a token, a refusal)."""
        return len(self._tokens) + len(self._refused) + len(self._denied)

    def refused(self, upstream: Upstream, repository: str) -> bool:
        """Whether the upstream refused the mirror's token for ``repository`` lately."""
        return _lately(self._refused.get((upstream.host, repository)))

    def mark_refused(self, upstream: Upstream, repository: str) -> None:
        """Private to the mirror's token: pass it through a while instead of asking twice.
        Not while its token request's last refusal was an unchecked ``401`` (the pull services
        mark the refusal :meth:`send` answered with): it stood for ``REFUSED_TTL``, a public
        repository refused a minute for a password revoked, after a check that timed out."""
        key = (upstream.host, repository)
        if _lately(self._unchecked.get(key), CHECK_SILENCE_HOLD):
            return
        self._refused.set(key, time.monotonic())

    def secrets(
        self, upstream: Upstream, repository: str, sent: Iterable[str | None] = ()
    ) -> Secrets:
        """:func:`login_secrets` for the mirror's request to ``repository``, with the token the
        mirror holds for it now besides those ``sent`` (an answer names the request of its
        last hop only)."""
        held = self._tokens.get((upstream.host, repository))
        return login_secrets(upstream, [*sent, held[1] if held is not None else None])

    async def headers(self, upstream: Upstream, repository: str) -> list[tuple[str, str]]:
        """``Authorization`` for the mirror's own requests to ``repository`` (maybe none)."""
        key = (upstream.host, repository)
        challenge = await self._challenge(upstream, key)
        if challenge is None and upstream.auth_realm is None:
            if upstream.credentials is not None and not await self._basic_held(upstream):
                return [("Authorization", basic_authorization(*upstream.credentials))]
            return []
        # A configured ``auth_realm`` is the upstream's token service even when its ``/v2/``
        # names none (answers 200): the clients' tokens come from it (``docxy.http.auth``),
        # and so do the mirror's. Its ``service`` is then not known: none is sent.
        service = challenge.service if challenge is not None else None
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return [("Authorization", f"Bearer {cached[1]}")]
        denied = self._denied.get(key)
        if denied is not None and time.monotonic() - denied[0] < REFUSED_TTL:
            raise TokenRefused(denied[1])  # its answer stands a while: not asked again at once
        resting = self._resting.get(upstream.host)
        if resting is not None and time.monotonic() < resting[0]:
            raise UpstreamUnavailable(resting[1])  # it asked for rest: not asked before then
        token = await self._shared_fetch(upstream, repository, service)
        return [("Authorization", f"Bearer {token}")]

    async def _challenge(self, upstream: Upstream, key: tuple[str, str]) -> Challenge | None:
        """The upstream's challenge (:meth:`UpstreamClient.challenge`, asked again past its
        ``REALM_TTL``). A ``/v2/`` that answers that probe 429 or 5xx says nothing of its auth:
        the answer last seen stands, until a probe succeeds, for a request it lets go on as it
        is: one with a token the mirror holds for ``key`` now, or to an upstream without token
        auth. One that needs a new token fails, as before (its trouble is the caller's)."""
        try:
            return await self.client.challenge(upstream)
        except ProbeTrouble:
            if not self.client.probed(upstream):
                raise
            known = self.client.known_challenge(upstream)
            cached = self._tokens.get(key)
            tokens = known is not None or upstream.auth_realm is not None
            if tokens and (cached is None or cached[0] <= time.monotonic()):
                raise
            return known

    @property
    def followers_joined(self) -> int:
        """Misses that waited for another's token request instead of sending their own."""
        return self._fetching.joined

    async def _shared_fetch(self, upstream: Upstream, repository: str, service: str | None) -> str:
        """The token of the request in flight for ``repository``, started if none is."""
        key = (upstream.host, repository)
        name = f"token {upstream.host} {repository}"
        return await self._fetching.run(
            key, name, lambda: self._fetch_and_keep(key, upstream, repository, service)
        )

    async def _fetch_and_keep(
        self, key: tuple[str, str], upstream: Upstream, repository: str, service: str | None
    ) -> str:
        """One token request; the token kept, a refusal remembered a while."""
        try:
            token, expires_in = await self._fetch(upstream, repository, service)
        except TokenRefused as exc:
            if exc.unchecked:  # no word on the login: the next miss past the hold asks again
                self._unchecked.set(key, time.monotonic())
                raise
            self._unchecked.pop(key)
            self._denied.set(key, (time.monotonic(), exc.status))
            self.mark_refused(upstream, repository)
            raise
        self._unchecked.pop(key)
        self._tokens.set(key, (time.monotonic() + max(expires_in - EXPIRY_MARGIN, 1.0), token))
        return token

    async def send(
        self,
        upstream: Upstream,
        method: str,
        repository: str,
        path: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        """Send with the mirror's token; on a 401 fetch a fresh token and try once more.

        A 401 to the mirror's own token most often means it expired early upstream, not that
        the repository is private; a second 401 is the upstream's answer. A token service
        refusing the mirror is answered here as the registry would answer (401/403).
        """
        for attempt in (1, 2):
            try:
                own = await self.headers(upstream, repository)
            except TokenRefused as refused:
                return refused.answer()
            answer = await self.client.send(
                upstream,
                method,
                upstream.url(path),
                own + list(extra or []),
                mirror_credentials=True,
            )
            if (
                answer.status_code != 401
                or attempt == 2
                or not self.refused_token(upstream, repository, own)
            ):
                return answer
            await answer.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def basic_login(self, upstream: Upstream) -> str | None:
        """The mirror's own Basic login for an upstream without a token service, which its
        clients cannot hold a login of theirs for (they get a token that grants nothing
        upstream): what a request passed through for them goes with. None for an upstream
        with token auth (an ``auth_realm`` configured is, whatever its ``/v2/`` says: the
        clients' tokens are that token service's) or without credentials, or whose ``/v2/``
        cannot say now and never said (one that answers a probe ``429`` or ``5xx`` after
        answering one before is taken at its last word, as for the mirror's own requests,
        :meth:`_challenge`: a pass-through went without the login meanwhile, ``401`` for a
        private repository)."""
        if upstream.credentials is None or upstream.auth_realm is not None:
            return None
        try:
            challenge = await self.client.challenge(upstream)
        except ProbeTrouble:
            if not self.client.probed(upstream):
                return None
            challenge = self.client.known_challenge(upstream)
        except UpstreamError:
            return None
        if challenge is not None or await self._basic_held(upstream):
            return None
        return basic_authorization(*upstream.credentials)

    async def _basic_held(self, upstream: Upstream) -> bool:
        """Whether the Basic-only upstream refused the mirror's login less than
        ``REFUSED_TTL`` ago: not sent before then (as a token service's refusal); past it,
        whether ``GET /v2/`` with it still refuses it (one that says nothing holds it back
        another ``REFUSED_TTL`` too: :meth:`UpstreamClient.basic_login_withheld`)."""
        assert upstream.credentials is not None
        login = basic_authorization(*upstream.credentials)
        return await self.client.basic_login_withheld(upstream, login, REFUSED_TTL)

    def _login_withheld(self, upstream: Upstream, realm: str) -> None:
        """One WARNING per upstream and token service: the mirror's token is asked for
        anonymously (what its login would have read, private repositories, is then refused)."""
        if (upstream.host, realm) in self._withheld:
            return
        self._withheld.set((upstream.host, realm), True)
        log.warning(
            "%s names a plain-HTTP token service (http://%s): the mirror's login for it is not "
            "sent there in clear text, its tokens are asked for anonymously (%s)",
            upstream.host,
            url_host(realm),
            clear_realm_remedy(realm),
        )

    def login_refused(self, upstream: Upstream) -> bool:
        """Whether the upstream's token service refused the mirror's login (``401``) less
        than ``REFUSED_TTL`` ago: it is not sent again before then."""
        return _lately(self._login_refused.get(upstream.host))

    async def _login_verdict(
        self,
        upstream: Upstream,
        realm: str,
        service: str | None,
        repository: str,
        since: float | None = None,
        *,
        known_401: bool = False,
    ) -> bool | None:
        """Whether the token service accepts the mirror's login, as ``docker login`` asks it:
        with the login and no scope. Known for ``REFUSED_TTL`` if refused, ``LOGIN_TRUSTED``
        if accepted (or accepted since ``since`` if given: a verdict older than a ``401`` says
        nothing of it); else asked,
        one request per upstream at a time, the misses meanwhile waiting for its verdict (each
        sent the login, a failed login on the account each). None: it could not say (not
        200, 401 nor 403, and :meth:`_scoped_check` with ``repository``'s scope could not
        either; ``known_401``: that scope's request with the login was just answered ``401``)."""
        if self.login_refused(upstream):
            return False
        accepted = self._login_accepted.get(upstream.host)
        if accepted is not None:
            fresh = time.monotonic() - accepted < LOGIN_TRUSTED
            if (since is None and fresh) or (since is not None and accepted >= since):
                return True
        name = f"login check {upstream.host}"
        return await self._checking.run(
            upstream.host,
            name,
            lambda: self._check_login(upstream, realm, service, repository, known_401),
        )

    async def _login_turn(
        self, upstream: Upstream, realm: str, service: str | None, repository: str
    ) -> tuple[bool | None, asyncio.Future[UpstreamTimeout | None] | None]:
        """The login's verdict (:meth:`_login_verdict`) for a token request about to go, and
        whether this request goes first for the others (a future to end with
        :meth:`_vouched` once its outcome is known).

        An acceptance older than ``REFUSED_TTL`` (trusted still, not checked again) may be
        stale: a password revoked in a quiet spell was sent by every concurrent miss of
        another repository before the first ``401`` came back, a failed login on the account
        each (Docker Hub may lock it). Then one token request with the login per upstream
        goes at a time: the others wait for its outcome, and are told the verdict it left (a
        ``200`` renewed the acceptance; a ``401`` was checked: refused, they go anonymously;
        accepted, that ``401`` was its repository's). A fresher acceptance makes no one wait.
        Raises what the check raises on a timeout, and :class:`UpstreamUnavailable` while
        the token service asked for rest (the check, or the request waited for, told so). A
        request waited for that the token service never answered ends its waiters with its
        timeout: each sent its own then, and waited the timeout again (twice the timeout for
        every client). Not when only its check of a ``401`` timed out: that ``401`` may be its
        repository's alone (a private one), and the waiters' repositories readable (they were
        answered 504 where their own requests got 200); they send theirs, and a ``401`` of
        theirs is not checked again while that check's silence is fresh
        (``CHECK_SILENCE_HOLD``)."""
        lead: asyncio.Future[UpstreamTimeout | None] | None = None
        waited = False
        verdict = await self._verdict_or_none(upstream, realm, service, repository)
        accepted = self._login_accepted.get(upstream.host)
        stale = accepted is not None and time.monotonic() - accepted >= REFUSED_TTL
        if verdict is True and stale:
            pending = self._vouching.get(upstream.host)
            if pending is None:
                lead = asyncio.get_running_loop().create_future()
                self._vouching[upstream.host] = lead
            else:
                # a waiter going away cancels its wait only
                silence = await asyncio.shield(pending)
                if silence is not None:  # not answered in time: nor would this one be
                    raise type(silence)(silence.message)
                waited = True
                # Its verdict now (once: a request that failed, 5xx or timeout, said nothing
                # of the login, which stays trusted as before).
                verdict = await self._verdict_or_none(upstream, realm, service, repository)
        resting = self._resting.get(upstream.host)
        if (verdict is None or (waited and verdict)) and resting is not None:
            if time.monotonic() < resting[0]:
                raise UpstreamUnavailable(resting[1])  # told to rest: no request
        return verdict, lead

    async def _verdict_or_none(
        self, upstream: Upstream, realm: str, service: str | None, repository: str
    ) -> bool | None:
        try:
            return await self._login_verdict(upstream, realm, service, repository)
        except UpstreamTimeout:
            raise  # a token service that does not answer: the scoped request would not
        except UpstreamError:
            return None  # the check broke (a reset): no word; this request goes on

    async def _checked_401(
        self, upstream: Upstream, realm: str, service: str | None, repository: str, sent: float
    ) -> bool | None:
        """The login's verdict after a scoped ``401`` to a request sent at ``sent``
        (:meth:`_login_verdict`); None without a check while one lately went unanswered
        (``CHECK_SILENCE_HOLD``), and remembered so when this one does not answer in time.
        That timeout is no answer to the scoped request, which was answered."""
        if self._check_held(upstream):
            return False if self.login_refused(upstream) else None  # known without asking
        try:
            return await self._login_verdict(
                upstream, realm, service, repository, since=sent, known_401=True
            )
        except UpstreamTimeout:
            self._check_silent.set(upstream.host, time.monotonic())
            raise

    def _check_held(self, upstream: Upstream) -> bool:
        """Whether a login check went unanswered less than ``CHECK_SILENCE_HOLD`` ago: a
        ``401`` is not checked (:meth:`_checked_401`), nor remembered (:class:`TokenRefused`'s
        ``unchecked``)."""
        return _lately(self._check_silent.get(upstream.host), CHECK_SILENCE_HOLD)

    def _vouched(
        self,
        upstream: Upstream,
        lead: asyncio.Future[UpstreamTimeout | None] | None,
        silence: UpstreamTimeout | None = None,
    ) -> None:
        """The outcome of the token request that went first with the login is known (or it
        failed): the misses waiting for it (:meth:`_login_turn`) go on, or end with
        ``silence``, the timeout it ended in (the token service silent to it)."""
        if lead is None or lead.done():
            return
        if self._vouching.get(upstream.host) is lead:
            del self._vouching[upstream.host]
        lead.set_result(silence)

    async def _check_login(
        self,
        upstream: Upstream,
        realm: str,
        service: str | None,
        repository: str,
        known_401: bool = False,
    ) -> bool | None:
        """One scope-less token request with the mirror's login (:meth:`_login_verdict`);
        answered with a ``4xx`` that is no verdict, :meth:`_scoped_check` of ``repository``
        (at once while such an answer is fresh: :meth:`_wants_scope`)."""
        assert upstream.credentials is not None
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        headers = [("Authorization", basic_authorization(*upstream.credentials))]
        if self._wants_scope(upstream):
            return await self._scoped_check(upstream, realm, headers, params, repository, known_401)
        answer, _ = await self._ask(upstream, realm, headers, params)
        if not _carried_login(answer):
            # A redirect to another origin dropped the login: its last hop's answer is to a
            # request without it (a 401 there was taken for the password refused).
            return None
        if answer.status_code in (200, 401, 403):
            self._scopeless_seen.pop(upstream.host)  # a verdict: a one-off before it stays one
        if answer.status_code in (200, 403):  # 403: the login known, denied, not refused
            self._accept_login(upstream)
            return True
        if answer.status_code == 401:
            self._refuse_login(upstream, realm)
            return False
        if 400 <= answer.status_code < 500 and answer.status_code != 429:
            # Some token services answer every scope-less request 400 ("scope required"):
            # without a verdict each scoped 401 stood for its repository, a wrong password
            # sent with every miss (a failed login each). Taking the 400 for a refusal
            # (df98667, reverted) refused a right password. A scope gets a verdict.
            self._note_scopeless(upstream, answer.status_code)
            return await self._scoped_check(upstream, realm, headers, params, repository, known_401)
        said = f"the upstream's token service refused the mirror ({answer.status_code})"
        self._rest(upstream, answer, said)
        return None

    def _note_scopeless(self, upstream: Upstream, status: int) -> None:
        """A scope-less check answered ``status``, a ``4xx`` that is no verdict: remembered
        as "scope required" (:meth:`_wants_scope`) if a ``400``, or if the check before it was
        answered the same less than ``REFUSED_TTL`` ago. A ``404`` or ``408`` once is no such
        answer (a path a proxy lost a moment, a request timed out): the scope-less check is
        the better one (a private repository's scope gives no verdict), the next check asks
        so again. But one that answers every check ``404`` was asked twice a miss, with the
        login (four requests with it a miss for a name a right login may not read)."""
        now = time.monotonic()
        last = self._scopeless_seen.get(upstream.host)
        self._scopeless_seen.set(upstream.host, (now, status))
        again = last is not None and last[1] == status and now - last[0] < REFUSED_TTL
        if status == 400 or again:
            self._scope_required.set(upstream.host, now)

    def _wants_scope(self, upstream: Upstream) -> bool:
        """Whether the token service answered a scope-less check "scope required" (a ``400``,
        or another ``4xx`` twice in a row: :meth:`_note_scopeless`) less than ``REFUSED_TTL``
        ago: not asked so again meanwhile (each asking sent the login for nothing, a failed
        login on the account with a wrong password)."""
        return _lately(self._scope_required.get(upstream.host))

    async def _scoped_check(
        self,
        upstream: Upstream,
        realm: str,
        headers: list[tuple[str, str]],
        params: list[tuple[str, str | int | float | bool | None]],
        repository: str,
        known_401: bool,
    ) -> bool | None:
        """The login's verdict from a token service that gives none without a scope: asked
        (``params``, the ``service``) with ``repository``'s scope, with the login
        (``headers``; not when ``known_401``, that request just answered ``401``) and,
        answered ``401``, without. A token (or a ``403``) got with it accepts it; a ``401`` to
        it where the anonymous token grants ``pull`` on that repository refuses it (a right
        password reads what anonymous reads). An anonymous token is no such evidence by
        itself: many token services give one for any scope, granting nothing (Docker Hub;
        gcr.io answers a good login ``401`` for a repository it may not read), and a right
        password was refused for any name a client pulled. Granting nothing, opaque, or a
        ``401``: the repository's answer (private, another account's), no verdict."""
        params = [*params, ("scope", f"repository:{repository}:pull")]
        if not known_401:
            if not self._may_send_unvouched(upstream):
                return None  # held back: no request with it, no word on it
            answer, _ = await self._ask(upstream, realm, headers, params)
            if not _carried_login(answer):
                return None  # its last hop went without the login: no word on it
            if answer.status_code in (200, 403):
                self._accept_login(upstream)
                return True
            if answer.status_code != 401:
                said = f"the upstream's token service refused the mirror ({answer.status_code})"
                self._rest(upstream, answer, said)
                return None
        anonymous, body = await self._ask(upstream, realm, [], params)
        token = _token_in(body) if anonymous.status_code == 200 else None
        if token is None or not grants_pull(token, repository):
            # No word on the login, but one on this repository: its 401 to the login stands
            # a while (:meth:`_said_nothing`), the login not sent for it again meanwhile.
            self._no_verdict.set((upstream.host, repository), time.monotonic())
            return None
        self._refuse_login(upstream, realm)
        return False

    def _said_nothing(self, upstream: Upstream, repository: str, since: float) -> bool:
        """Whether a scoped check found no verdict in ``repository``'s ``401`` to the login
        (:meth:`_scoped_check`) at ``since`` or after, less than ``REFUSED_TTL`` ago: that
        ``401`` is the repository's answer for that time, as a ``401`` to an accepted login
        is (its misses answered ``401`` without asking, :class:`TokenRefused`). It stood for
        its miss only, and every miss sent the login again: with a wrong password on a token
        service that gives no verdict, a failed login on the account each (two a miss)."""
        checked = self._no_verdict.get((upstream.host, repository))
        now = time.monotonic()
        return checked is not None and checked >= since and now - checked < REFUSED_TTL

    def _may_send_unvouched(self, upstream: Upstream) -> bool:
        """Whether a token request may go with a login of no verdict (neither accepted nor
        refused lately): ``NO_VERDICT_SENDS`` in each ``REFUSED_TTL`` (counted as they go:
        concurrent misses are held to it too), then held back for the rest of it, with one
        WARNING. A wrong password cannot be told from names the account may not read when the
        token service gives no verdict (see :meth:`_scoped_check`), so it is not judged
        refused; but clients pulling private names one after another sent it once each, a
        failed login on the account each, without bound (an account that locks after N)."""
        now = time.monotonic()
        start, sent, logged = self._unvouched.get(upstream.host) or (now, 0, False)
        if now - start >= REFUSED_TTL:
            start, sent, logged = now, 0, False
        if sent < NO_VERDICT_SENDS:
            self._unvouched.set(upstream.host, (start, sent + 1, logged))
            return True
        if not logged:
            assert upstream.credentials is not None
            log.warning(
                "the token service of %s has given no verdict on the mirror's login (%s), "
                "and %d token requests went with it this minute (a wrong password cannot be "
                "told from names the account may not read, nor a check that failed from "
                "either): the login is held back for %.0fs, tokens asked anonymously",
                upstream.host,
                upstream.credentials[0],
                sent,
                start + REFUSED_TTL - now,
            )
        self._unvouched.set(upstream.host, (start, sent, True))
        return False

    def _hold_left(self, upstream: Upstream) -> float:
        """Seconds left of the hold :meth:`_may_send_unvouched` put the login under."""
        start, _, _ = self._unvouched.get(upstream.host) or (time.monotonic(), 0, False)
        return max(start + REFUSED_TTL - time.monotonic(), 0.0)

    async def _ask(
        self,
        upstream: Upstream,
        realm: str,
        headers: list[tuple[str, str]],
        params: list[tuple[str, str | int | float | bool | None]],
    ) -> tuple[httpx.Response, bytes]:
        """One request to the token service, and its body (read, the answer closed)."""
        try:
            answer = await self.client.send(
                upstream,
                "GET",
                realm,
                headers,
                params=httpx.QueryParams(params),
                mirror_credentials=True,
                token_service=True,
            )
            body = await read_small(answer)
        except UpstreamTimeout as exc:
            if same_origin(realm, upstream.registry):  # on the registry's host: its silence
                raise
            said = exc.message.replace("the upstream registry", "the upstream's token service", 1)
            raise TokenServiceTimeout(said) from exc  # elsewhere: see TokenServiceTimeout
        return answer, body

    def _accept_login(self, upstream: Upstream) -> None:
        """The token service accepted the mirror's login (a check, or a token got with it):
        trusted for ``LOGIN_TRUSTED``; one INFO line if it was refused before."""
        self._login_accepted.set(upstream.host, time.monotonic())
        if self.client.health_of(upstream).login_judged(True) == "refused":
            assert upstream.credentials is not None
            log.info(
                "the token service of %s accepted the mirror's login (%s) again: its tokens "
                "are asked with it",
                upstream.host,
                upstream.credentials[0],
            )

    def _refuse_login(self, upstream: Upstream, realm: str) -> None:
        """The token service answered ``401`` to the mirror's login (``upstream.password``
        wrong or revoked). It was remembered per repository, and every other repository sent
        the bad login once more: a failed login counted against the account each (Docker Hub
        may lock it). Now it stands for the upstream: tokens asked anonymously until
        ``REFUSED_TTL`` is over, then the login checked again. One WARNING and one entry among
        the status page's recent errors when it comes to be refused (it was accepted, or not
        known); DEBUG at each check that finds it still refused (a WARNING each minute, and
        the recent errors pushed off by this one, for as long as the password stays wrong)."""
        self._login_refused.set(upstream.host, time.monotonic())
        self._login_accepted.pop(upstream.host)
        assert upstream.credentials is not None
        said = (
            f"the token service of {upstream.host} ({url_host(realm)}) refused the mirror's "
            f"login ({upstream.credentials[0]}): its password is wrong or revoked; tokens are "
            f"asked for anonymously, and the login tried again in {REFUSED_TTL:g}s"
        )
        health = self.client.health_of(upstream)
        if health.login_judged(False) == "refused":
            log.debug("%s (still)", said)
            return
        log.warning("%s", said)
        health.recent_failures.append((health.clock(), "login_refused", said))

    def refused_token(
        self, upstream: Upstream, repository: str, sent: list[tuple[str, str]]
    ) -> bool:
        """The registry answered 401 to a request with the mirror's headers ``sent`` (from
        :meth:`headers`): whether they carried a token of the mirror's, worth one more try
        with a fresh one. That token is forgotten, but not one fetched since: requests that
        sent the same stale token at once get their 401s at once, and the fresh token the
        first of them fetches serves the others too. (Each dropped whatever token was held
        by then: one token request per 401, and a 401 that came while the first was fetching
        found no token held and was taken for the upstream's answer.)"""
        authorization = next((v for k, v in sent if k.lower() == "authorization"), "")
        if not authorization.startswith("Bearer "):
            return False  # no token (Basic, or none): the 401 is the upstream's answer
        key = (upstream.host, repository)
        held = self._tokens.get(key)
        if held is not None and hmac.compare_digest(f"Bearer {held[1]}", authorization):
            self._tokens.pop(key)
        return True

    def _rest(self, upstream: Upstream, answer: httpx.Response, said: str) -> None:
        """A token service's 429 (or 503) with ``Retry-After``: no new token is asked of it
        until then (:data:`RATE_LIMIT_HOLD` at most). It was forgotten, and every miss of any
        repository asked it again at once, as many requests as misses to a service that asked
        for rest; a 429 without one waits :data:`REST_WITHOUT_RETRY_AFTER`."""
        status = answer.status_code
        wait = retry_after_seconds(answer.headers.get("retry-after"), time.time())
        if wait is None and status == 429:
            wait = REST_WITHOUT_RETRY_AFTER
        if wait is None or status not in (429, 503):
            return
        wait = min(wait, RATE_LIMIT_HOLD)
        told = f"{said}; it asked for {wait:g}s of rest, and is not asked for a token before then"
        self._resting.set(upstream.host, (time.monotonic() + wait, told))

    async def _fetch(
        self, upstream: Upstream, repository: str, service: str | None
    ) -> tuple[str, float]:
        realm = await self.client.auth_realm(upstream)
        if realm is None:
            raise UpstreamUnavailable("the upstream's token service is unknown")
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("scope", f"repository:{repository}:pull")
        ]
        if service:
            params.insert(0, ("service", service))
        headers = []
        login = upstream.credentials is not None and upstream.login_may_go_to(realm)
        if upstream.credentials is not None and not login:
            self._login_withheld(upstream, realm)
        lead: asyncio.Future[UpstreamTimeout | None] | None = None
        silence: UpstreamTimeout | None = None  # the token service's, for the waiters
        held_back = False  # the login of no verdict held back (:meth:`_may_send_unvouched`)
        if login:
            verdict, lead = await self._login_turn(upstream, realm, service, repository)
            if verdict is False:
                login = False  # refused (lately): not sent again (:meth:`_refuse_login`)
            elif verdict is None and self._said_nothing(upstream, repository, since=0.0):
                raise TokenRefused(401)  # its check was just answered 401: not asked again
            elif verdict is None and not self._may_send_unvouched(upstream):
                login = False  # as for a login refused, for the rest of the minute
                held_back = True
        try:
            if login and upstream.credentials is not None:
                headers.append(("Authorization", basic_authorization(*upstream.credentials)))
            sent = time.monotonic()
            answer, body = await self._ask(upstream, realm, headers, params)
            unchecked = False
            if login and not _carried_login(answer):
                # A redirect to another origin dropped the login: its answer says nothing of
                # it (neither a token got with it, nor a 401 to it), its 401 not remembered.
                login = False
                unchecked = answer.status_code == 401
            if answer.status_code == 401 and login:
                # The login refused, or this one repository? As ``docker login`` asks it.
                try:
                    verdict = await self._checked_401(upstream, realm, service, repository, sent)
                except UpstreamError:
                    verdict = None  # no word on the login: the 401 stands for this repository
                # ... for this miss only, not remembered: no check (the hold), or its own or
                # the one it joined said nothing (timed out, broke, another repository's);
                # remembered when its check of this repository found no verdict in it
                unchecked = verdict is None and not self._said_nothing(upstream, repository, sent)
                if verdict is False:
                    self._vouched(upstream, lead)  # the others go anonymously at once
                    return await self._fetch(upstream, repository, service)  # anonymously
            if answer.status_code == 403 and login:
                self._accept_login(upstream)  # known, denied this repository: not refused
            if answer.status_code in (401, 403):
                raise TokenRefused(answer.status_code, unchecked=unchecked)
            if answer.status_code != 200:
                said = f"the upstream's token service refused the mirror ({answer.status_code})"
                self._rest(upstream, answer, said)
                raise UpstreamUnavailable(said)
            if login:
                self._accept_login(upstream)
        except UpstreamTimeout as exc:
            silence = exc
            raise
        finally:
            self._vouched(upstream, lead, silence)
        data = jsondoc.object_in(body) or {}
        token = data.get("token") or data.get("access_token")
        expires_in = data.get("expires_in")
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable("the upstream's token service sent no token")
        if not _TOKEN.fullmatch(token):
            # A line break or a non-ASCII character would fail the header it goes in (with an
            # error no caller maps to the registry's), not the upstream's request.
            raise UpstreamUnavailable(
                "the upstream's token service sent a token that cannot go in a header"
            )
        if held_back:
            # An anonymous token got while the login is held back is used no longer than the
            # hold: concurrent misses held back while a blip (a 5xx to the check) left the
            # login without a verdict kept theirs for its whole life (300 s on Docker Hub, up
            # to a day), pulling on the anonymous quota though the login was accepted since.
            return token, min(lifetime(expires_in), self._hold_left(upstream) + EXPIRY_MARGIN)
        return token, lifetime(expires_in)
