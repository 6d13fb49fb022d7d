"""The access check of ``/v2/`` requests, and the mirror's access state.

:class:`AccessControl` holds the users file, the signing keys and the client CA. For each
request :meth:`AccessControl.check` decides who the client is (a client certificate from the
mirror's CA, a token the mirror issued, or nobody) and, in ``users`` mode, whether it may go on:
no credentials, a bad token or a token for another repository is ``401`` with the mirror's own
challenge (its realm and service, the scope the request needs, and for a token that lacks it
``error="insufficient_scope"``, as Distribution answers).

The check has a costly half, :meth:`AccessControl.identify` (a token's signature, the client
certificate, the users file), and a cheap one, :meth:`AccessControl.decide` (the repository).
The edge identifies a request first, for its limits, and leaves the result in the ASGI scope
(:func:`remember`); the route's check reuses it (:func:`remembered`): one verification a request.

What checks credentials is imported when a mode needs it: the users file (argon2, bcrypt), the
signing keys and tokens (cryptography, PyJWT) in ``users`` mode, the client CA (cryptography)
with ``auth.client_certs``. An open mirror without TLS loads none of them (~10 MiB at rest).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import ipaddress
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from docxy.access.identity import ANONYMOUS, ClientIdentity, Via
from docxy.access.logins import FailedLogins
from docxy.access.peer import peer_certificate
from docxy.access.scopes import Access, allows
from docxy.config import Config, loopback_host
from docxy.core.challenge import Challenge
from docxy.core.cidr import Network, parse_address
from docxy.core.errors import ConfigError, MirrorUnavailable, RegistryError, Unauthorized
from docxy.core.headers import bearer_token
from docxy.core.names import upstream_name

if TYPE_CHECKING:
    from docxy.access.clientca import ClientCA
    from docxy.access.keys import KeyRing, TokenKeyError
    from docxy.access.tokens import TokenSpec
    from docxy.access.users import UsersFile

log = logging.getLogger(__name__)

PASSWORD_CHECKS = 2


USERS_UNREADABLE = "the mirror cannot read its users file"
KEY_UNREADABLE = "the mirror cannot read its token signing key"
#: names docxy.access.clientca.CLIENTS (a test holds them equal; importing it loads cryptography)
CLIENTS_UNREADABLE = "the mirror cannot read its client list (clients.json)"


def users_unreadable() -> MirrorUnavailable:
    """The users file cannot be read or parsed (edited by hand?): nobody's password or token
    can be checked, so nothing is served; the log says why."""
    return MirrorUnavailable(USERS_UNREADABLE)


def key_unreadable(exc: TokenKeyError) -> MirrorUnavailable:
    """The token signing key cannot be read (``token-key.pem`` broken, or not readable by the
    mirror's user): no token can be checked or issued; the log says why."""
    log.error("%s", exc)
    return MirrorUnavailable(KEY_UNREADABLE)


@dataclass(frozen=True, slots=True)
class Identified:
    """Who a request's credentials say the client is, before any repository is considered."""

    identity: ClientIdentity
    #: what the mirror's token grants (None: no token of the mirror's decides, e.g. a
    #: certificate client, or open mode)
    granted: tuple[Access, ...] | None = None
    #: the client's own Authorization may go upstream on a pass-through
    forward: bool = False
    #: why the credentials are refused (401), and the challenge's ``error``
    problem: str | None = None
    error: str | None = None
    #: why nobody can be checked now (the users file or the signing key cannot be read): 503
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    identity: ClientIdentity
    #: the registry error to answer with (401 with the mirror's challenge, 503), if any
    refusal: RegistryError | None = None
    #: the client's own Authorization may go upstream on a pass-through (open mode, or
    #: ``auth.upstream_logins`` for a certificate client whose token is not the mirror's)
    forward_credentials: bool = True
    #: what the check found out about the credentials, for another check of the same request
    identified: Identified | None = None


#: Where the edge leaves what it learned of a request's credentials in the ASGI scope, so the
#: route's check does not verify the same token (or read the same certificate) again.
IDENTIFIED = "docxy.identified"


def remember(scope: MutableMapping[str, Any], decision: Decision) -> None:
    if decision.identified is not None:
        scope[IDENTIFIED] = decision.identified


def remembered(scope: Mapping[str, Any]) -> Identified | None:
    found = scope.get(IDENTIFIED)
    return found if isinstance(found, Identified) else None


def plain_http_reason(config: Config) -> str | None:
    """Why ``users`` mode takes passwords and tokens in clear text from the network; None when
    it does not, or the mode is not ``users``: no TLS listener (with one, plain HTTP only
    redirects) and a listener off loopback (a TLS proxy on the same host, or the tests, reach
    it on loopback), else a ``server.public_url`` of ``http://`` on a host off loopback, where
    every challenge sends the clients' logins."""
    if config.auth.mode != "users":
        return None
    server = config.server
    if server.tls_listen is None and not server.listen.is_loopback:
        return f"over plain HTTP on {server.listen}"
    url = urlsplit(server.public_url)
    if url.scheme == "http" and not loopback_host(url.hostname or ""):
        return f"with server.public_url {server.public_url} (plain HTTP)"
    return None


def unnamed_proxy_reason(config: Config) -> str | None:
    """Why the mirror looks reached through a TLS proxy that ``server.trusted_proxies`` does
    not name; None when it does not, as far as the mirror can tell (proxies are named, the
    mirror has a TLS listener of its own, or its public URL is not ``https://``). Behind such
    a proxy every client is the proxy's address: one client's wrong passwords use up the
    failed-login bucket every client's logins need (``docxy.access.logins``), the mirror's
    own users' in ``users`` mode, the upstream logins it relays in either mode."""
    server = config.server
    if server.trusted_proxies or server.tls_listen is not None:
        return None
    if urlsplit(server.public_url).scheme != "https":
        return None
    return f"server.public_url {server.public_url} is https:// with no server.tls_listen"


def warn_unnamed_proxy(config: Config) -> None:
    """Say at start-up that the mirror looks behind a proxy not in ``server.trusted_proxies``
    (:func:`unnamed_proxy_reason`), naming each per-client limit that is on: every client is
    the proxy's one address, so they all share one client's share of each. ``limits.exempt``
    spares an address all of them but the failed-login bucket (:data:`EXEMPT_SPARES`): when
    it covers the proxy's address, as far as the mirror can tell (:func:`_exempts_the_proxy`),
    only that bucket is named; when it lists networks that may not, what listing the proxy
    there would leave shared is said too. Nothing to say when nothing is shared."""
    reason = unnamed_proxy_reason(config)
    shared = _shared_limits(config)
    if config.auth.mode == "users":  # the mirror is the authority: it relays no logins
        shared = [(name, value) for name, value in shared if name != "token_relays_per_minute"]
    if reason is None or not shared:
        return
    exempt = config.limits.exempt
    still = [(name, value) for name, value in shared if name not in EXEMPT_SPARES]
    spared = ""
    if exempt and _exempts_the_proxy(config):
        if still != shared:
            spared = f" (limits.exempt, {exempt}, spares the proxy's address the others)"
        shared = still
        if not shared:
            return
    elif exempt and still != shared:
        then = f"{_named(still)} only" if still else "nothing"
        spared = f" (unless limits.exempt lists the proxy's address: then {then})"
    logins = config.limits.failed_logins_per_minute
    if not logins:
        why = ""
    elif config.auth.mode == "users":
        why = "; one guesser's wrong passwords refuse every user's login for a while"
    else:  # open mode relays upstream logins within the same per-address limit
        why = (
            "; one client's upstream logins refused as wrong (a stale password) refuse every "
            "client's upstream logins for a while"
        )
    log.warning(
        "auth.mode = %s behind a TLS proxy, as far as the mirror can tell (%s), and "
        "server.trusted_proxies is empty: every client is the proxy's address, so all share "
        "one client's %s%s%s; list the proxy's address in server.trusted_proxies (its header: "
        "server.forwarded_header)",
        config.auth.mode,
        reason,
        _by_whom(config, shared),
        spared,
        why,
    )


#: The per-client limits kept under a user's name once it is logged in
#: (``docxy.edge.clients.limit_key``): behind the proxy, all clients share them only for what
#: they ask without a token (the ``/v2/`` challenge, the token requests of their logins).
BY_USER = frozenset(
    {"requests_per_minute", "manifests_per_minute", "bandwidth", "fills_per_client"}
)


def _by_whom(config: Config, shared: list[tuple[str, object]]) -> str:
    """The shared limits as the warning names them; in ``users`` mode, those a logged-in user
    has of its own (:data:`BY_USER`) said as shared before a login only."""
    if config.auth.mode != "users":
        return _named(shared)
    everyone = [(name, value) for name, value in shared if name not in BY_USER]
    before = [(name, value) for name, value in shared if name in BY_USER]
    if not before:
        return _named(everyone)
    later = "before a login (challenges, logins' token requests; a user's own after it) " + _named(
        before
    )
    return f"{_named(everyone)}, and {later}" if everyone else later


#: The per-client limits an address in ``limits.exempt`` is spared: admission's buckets and
#: pacing (``docxy.edge.admission``), the connection cap per address
#: (``docxy.edge.connections``), token relays (``docxy.http.routes.count_relay``) and the fill
#: cap per client (``docxy.edge.fills``). Not ``failed_logins_per_minute``
#: (``docxy.access.logins``): a guesser behind an exempt address is still guessing.
EXEMPT_SPARES = frozenset(
    {
        "connections_per_client",
        "requests_per_minute",
        "manifests_per_minute",
        "token_relays_per_minute",
        "fills_per_client",
        "bandwidth",
    }
)


def _shared_limits(config: Config) -> list[tuple[str, object]]:
    """The per-client limits that are on (``docxy.edge.admission``, ``docxy.edge.connections``,
    ``docxy.access.logins``), by name and value: what clients behind one address share."""
    limits = config.limits
    named: dict[str, object] = {
        "connections_per_client": limits.connections_per_client,
        "requests_per_minute": limits.requests_per_minute,
        "manifests_per_minute": limits.manifests_per_minute,
        "token_relays_per_minute": limits.token_relays_per_minute,
        "failed_logins_per_minute": limits.failed_logins_per_minute,
        "fills_per_client": limits.fills_per_client,
        "bandwidth": limits.bandwidth,
    }
    return [(name, value) for name, value in named.items() if value]


def _named(limits: list[tuple[str, object]]) -> str:
    """Limits as the warning names them, each ``limits.NAME (value)``."""
    return ", ".join(f"limits.{name} ({value})" for name, value in limits)


#: Where a proxy on this host reaches a loopback listener from: any of its family's loopback.
_LOOPBACK: dict[int, Network] = {
    4: ipaddress.IPv4Network("127.0.0.0/8"),
    6: ipaddress.IPv6Network("::1/128"),
}
_EVERY_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")
_EVERY_IPV6 = ipaddress.IPv6Network("::/0")


def _exempts_the_proxy(config: Config) -> bool:
    """Whether ``limits.exempt`` covers the unnamed proxy's address, which the mirror does not
    know: only when it covers every address ``server.listen`` can be reached from. A loopback
    listener is reached from this host's loopback (``localhost``: both families'); an IPv4
    one from any IPv4 address; an IPv6 one (a dual-stack ``::`` takes IPv4 too) or a host
    name from any address at all."""
    host = config.server.listen.host
    address = parse_address(host)
    if host == "localhost":
        peers: tuple[Network, ...] = (_LOOPBACK[4], _LOOPBACK[6])
    elif address is not None and address.is_loopback:
        peers = (_LOOPBACK[address.version],)
    elif address is not None and address.version == 4:
        peers = (_EVERY_IPV4,)
    else:
        peers = (_EVERY_IPV4, _EVERY_IPV6)
    return all(config.limits.exempt.covers(network) for network in peers)


def refuse_plain_http(config: Config) -> None:
    """Refuse to serve ``users`` mode with logins over plain HTTP off loopback unless the
    operator said ``auth.allow_plain_http``: :class:`ConfigError` (one line, exit 2)."""
    reason = plain_http_reason(config)
    if reason is not None and not config.auth.allow_plain_http:
        source = config.sources.get("auth.mode", "default")
        raise ConfigError(
            f"auth.mode: users {reason} would take passwords and tokens "
            "in clear text: serve HTTPS (server.tls_listen), listen on loopback behind a TLS "
            "proxy with an https:// server.public_url, or set auth.allow_plain_http = true "
            f"({source})"
        )


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` → (user, password); None when absent or malformed."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a plain one for non-ASCII text
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def basic_scheme(authorization: str | None) -> bool:
    """Whether ``authorization`` says the Basic scheme, whatever follows: one the mirror cannot
    decode (base64 without its ``=`` padding, a password not UTF-8) still goes upstream as it
    is, where a registry may take it (nginx's ``auth_basic`` and Go's ``BasicAuth`` do), so it
    counts as a password for the failed-login limit."""
    if authorization is None:
        return False
    return authorization.strip().partition(" ")[0].lower() == "basic"


class AccessControl:
    def __init__(self, config: Config) -> None:
        auth = self._auth = config.auth
        self.users_mode = auth.mode == "users"
        self.upstream_logins = auth.upstream_logins
        self.plain_http = plain_http_reason(config)  # users mode's logins in clear: why
        self.ca: ClientCA | None = None
        if auth.client_certs:
            from docxy.access.clientca import ClientCA

            self.ca = ClientCA(auth.dir)
        self.public_url = config.server.public_url
        self.realm = config.server.public_url + "/auth/token"
        self.service = urlsplit(config.server.public_url).netloc
        self.library_prefix = config.upstream.library_prefix
        #: password checks at once (each runs in a thread and holds argon2's memory)
        self.hashing = asyncio.Semaphore(PASSWORD_CHECKS)
        #: wrong passwords a client may try a minute (``docxy.access.logins``)
        self.logins = FailedLogins(config.limits.failed_logins_per_minute)

    @functools.cached_property
    def users(self) -> UsersFile:
        from docxy.access.users import UsersFile

        return UsersFile(self._auth.users_file)

    @functools.cached_property
    def keys(self) -> KeyRing:
        from docxy.access.keys import KeyRing

        return KeyRing(self._auth.dir, self._auth.key_grace)

    @functools.cached_property
    def spec(self) -> TokenSpec:
        from docxy.access.tokens import TokenSpec

        return TokenSpec(self.public_url, self.service, self._auth.token_ttl)

    def prepare(self) -> None:
        """Create what is missing on disk (first key, the CA) before serving."""
        if self.users_mode:
            self.users, self.spec  # noqa: B018 - loaded now, not by the first login
            from docxy.access.keys import TokenKeyError  # loaded with self.keys
            from docxy.access.users import UsersFileError  # loaded with self.users

            try:
                users = self.users.prepare()  # read now: what it warns of is said at start-up
            except UsersFileError as exc:
                # said now, not first by every pull failing (and at each check, answered 503)
                log.error("users file: %s; every login and token is 503 until it is mended", exc)
            else:
                self._warn_no_users(users)  # what was read: a second read could fail here
            try:
                self.keys.ensure()
            except TokenKeyError as exc:  # auth.dir read-only, not a directory...: as above
                key_unreadable(exc)  # logged now, with the path, and at each check
            if self.plain_http is not None:
                log.warning(
                    "auth.mode = users %s, off loopback (auth.allow_plain_http): passwords "
                    "and tokens cross the network unencrypted",
                    self.plain_http,
                )
        if self.ca is not None:
            self.ca.ensure()

    def _warn_no_users(self, users: dict[str, str]) -> None:
        """A users file that is not there, or names nobody, is "no users": every login is
        refused as a wrong password. Said at start-up, naming the path, since a typo in
        ``auth.users_file`` or a volume not mounted look exactly like that; only noted when
        clients come by certificate (``auth.client_certs``), as they may with no user at all."""
        if users:
            return
        path = self._auth.users_file
        what = (
            "holds no user"
            if path.exists()
            else "missing (a typo in auth.users_file, or its volume not mounted?)"
        )
        if self.ca is not None:
            log.info(
                "users file %s: %s: no password logins, clients come by certificate only",
                path,
                what,
            )
            return
        log.warning(
            "users file %s: %s: no users, every login is refused (docxy users add makes one)",
            path,
            what,
        )

    def normal(self, name: str) -> str:
        return upstream_name(name, self.library_prefix)

    def certificate_client(self) -> str | None:
        """The client the connection's certificate names, if any; :class:`MirrorUnavailable`
        (503) while ``clients.json`` cannot be read (logged with the path and the reason; the
        client is told the file's name only)."""
        der = peer_certificate()
        if der is None or self.ca is None:
            return None
        from docxy.access.clientca import ClientsFileError  # loaded with self.ca

        try:
            return self.ca.client_of(der)
        except ClientsFileError as exc:
            raise MirrorUnavailable(CLIENTS_UNREADABLE) from exc

    def challenge(self, repository: str | None, error: str | None = None) -> str:
        params = {"realm": self.realm, "service": self.service}
        if repository is not None:
            params["scope"] = f"repository:{repository}:pull"
        if error is not None:
            params["error"] = error
        return Challenge("Bearer", params).render()

    def check(
        self, authorization: str | None, repository: str | None, known: Identified | None = None
    ) -> Decision:
        """Who the client is and, in users mode, whether it may read ``repository``
        (None: the ``/v2/`` version check). ``known``: who an earlier check of this very
        request found (the edge's, :func:`remembered`), so the credentials are checked once."""
        return self.decide(known if known is not None else self.identify(authorization), repository)

    def identify(self, authorization: str | None) -> Identified:
        """The costly half of the check, the same for every repository: the connection's
        client certificate, or a token's signature and its user."""
        try:
            client = self.certificate_client()
        except MirrorUnavailable as exc:
            return Identified(ANONYMOUS, unavailable=exc.message)
        token = bearer_token(authorization)
        if client is not None:
            forward = self.upstream_logins and token is not None and not self.ours(token)
            identity = ClientIdentity(Via.CERTIFICATE, client)
            return Identified(identity, forward=forward or not self.users_mode)
        if not self.users_mode:
            return Identified(ANONYMOUS, forward=True)
        if token is None:
            return Identified(ANONYMOUS, problem="authentication required")
        # users mode: loaded with the keys and the users file (sys.modules lookups from here)
        from docxy.access.keys import TokenKeyError
        from docxy.access.tokens import TokenInvalid, verify
        from docxy.access.users import UsersFileError

        try:
            claims = verify(self.keys, self.spec, token)
        except TokenInvalid as exc:
            return Identified(ANONYMOUS, problem=f"token {exc}", error="invalid_token")
        except TokenKeyError as exc:
            return Identified(ANONYMOUS, unavailable=key_unreadable(exc).message)
        try:
            current = self.users.fingerprint(claims.user)
        except UsersFileError as exc:
            log.error("users file: %s", exc)
            return Identified(ANONYMOUS, unavailable=USERS_UNREADABLE)
        if current is None:
            return Identified(ANONYMOUS, problem="token of a removed user", error="invalid_token")
        # Issued under the password the user has now: a password change ends the tokens of
        # the old one (every token the mirror issues has the claim; one without it is not
        # the mirror's, or from a mirror before this check).
        if claims.fingerprint is None:
            problem = "token without a password fingerprint (issued before an upgrade)"
            return Identified(ANONYMOUS, problem=problem, error="invalid_token")
        if not hmac.compare_digest(claims.fingerprint.encode(), current.encode()):
            problem = "token issued before a password change"
            return Identified(ANONYMOUS, problem=problem, error="invalid_token")
        return Identified(ClientIdentity(Via.TOKEN, claims.user), claims.access)

    def decide(self, who: Identified, repository: str | None) -> Decision:
        """The cheap half: what ``who`` may do with ``repository``."""
        if who.unavailable is not None:
            unreadable = MirrorUnavailable(who.unavailable)
            return Decision(ANONYMOUS, unreadable, forward_credentials=False, identified=who)
        if who.problem is not None:
            return self._refuse(who, repository, who.problem, who.error)
        if who.granted is not None and repository is not None:
            if not allows(who.granted, repository, "pull", self.normal):
                # Distribution's answer: 401 naming the scope needed, so the client asks for
                # a token that has it (a 403 ends the pull of a client holding one token for
                # several repositories).
                message = f"the token does not grant pull on {repository}"
                challenge = self.challenge(repository, "insufficient_scope")
                refusal = Unauthorized(message, challenge)
                return Decision(who.identity, refusal, forward_credentials=False, identified=who)
        return Decision(who.identity, forward_credentials=who.forward, identified=who)

    def ours(self, token: str) -> bool:
        """A token the mirror issued, honoured or not (expired, of a retired key, naming an
        earlier ``server.public_url``): it never goes upstream as the client's login. While the
        signing keys cannot be read nobody can tell: taken for the mirror's (logged)."""
        from docxy.access.keys import TokenKeyError
        from docxy.access.tokens import issued_here

        try:
            return issued_here(self.keys, self.spec, token)
        except TokenKeyError as exc:
            key_unreadable(exc)
            return True

    def _refuse(
        self, who: Identified, repository: str | None, message: str, error: str | None
    ) -> Decision:
        challenge = self.challenge(repository, error)
        refusal = Unauthorized(message, challenge)
        return Decision(ANONYMOUS, refusal, forward_credentials=False, identified=who)
