"""ASGI layers around the app: the request target, plain-HTTP → HTTPS redirect, one access-log line.

They sit outside Quart so they see every request, including the ones they refuse, and so the
access log can count the bytes that really went out, after a streamed body ends.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Protocol, overload
from urllib.parse import quote, unquote

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from docxy.access.identity import identity_of
from docxy.cache.fill import Handover, InFlight
from docxy.core.errors import ClientError, RegistryError, RequestTooLarge
from docxy.edge.replies import answer_send, send_error
from docxy.upstream.routing import Upstreams, request_picks

log = logging.getLogger("docxy.access")

MAX_QUERY = 8 * 1024
MAX_PATH = 4 * 1024
# Served on plain HTTP too: the health check, and ACME HTTP-01 tokens (certbot needs port 80).
HTTPS_EXEMPT_PATHS = frozenset({"/health"})
HTTPS_EXEMPT_PREFIXES = ("/.well-known/acme-challenge/",)


class UseHttps(RegistryError):
    status = 308
    code = "MOVED"


_ABSOLUTE = re.compile(rb"https?://([^/?#]*)(/.*)?", re.IGNORECASE | re.DOTALL)
_SCHEME = re.compile(rb"https?://", re.IGNORECASE)


@overload
def origin_form(scope: HTTPScope) -> HTTPScope: ...
@overload
def origin_form(scope: WebsocketScope) -> WebsocketScope: ...
def origin_form(scope: Any) -> Any:
    """``scope`` with an absolute-form target (``GET http://host/v2/ HTTP/1.1``) made origin-form.

    RFC 9112 §3.2.2: a server accepts the absolute form and then takes the host from the
    target, not the ``Host`` header. The routes only ever see ``/v2/...``, however it was asked.
    """
    raw: bytes = scope["raw_path"] or b""
    match = _ABSOLUTE.fullmatch(raw)
    scheme = _SCHEME.match(raw)
    if scheme is not None and b"@" in raw and (match is None or b"@" in (match.group(2) or b"")):
        # A password's raw "/", "?" or "#" ended the authority early: the rest of the password
        # was the path (sent back in the HTTPS redirect). The host is what follows the last "@".
        match = _ABSOLUTE.fullmatch(raw[: scheme.end()] + raw.rpartition(b"@")[2])
    if match is None:
        return scope
    authority = match.group(1).rpartition(b"@")[2]  # never credentials in a Host header
    raw_path = match.group(2) or b"/"
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
    headers.insert(0, (b"host", authority))
    # From the raw target, cut where the bytes say: the decoded path's authority may hold a
    # password's %2F, %3F or %23, decoded already, where a cut there would leave the rest of it.
    path = unquote(raw_path.decode("latin-1"))
    normal = {**scope, "path": path, "raw_path": raw_path, "headers": headers}
    return normal


def login_in_query(scope: HTTPScope | WebsocketScope) -> bool:
    """Whether an absolute-form target has an ``@`` in its query: its password may have held a
    raw ``?``, where the server split the target, so the rest of the password, with the host,
    is the query (``http://bob:x?secret@host/v2/``; ``http://bob:x/a?secret@host/v2/``, with
    the authority cut at the ``/`` before). Nothing tells where such a login ends that a real
    query could not fake, and the HTTPS redirect would send that query back: the target is
    refused (RFC 9110 §4.2.4: userinfo in an ``http`` URI is an error). A registry client
    sends the origin form, where an ``@`` in the query is just that."""
    return _SCHEME.match(scope["raw_path"] or b"") is not None and b"@" in scope["query_string"]


def foreign_target(scope: HTTPScope | WebsocketScope) -> bool:
    """Whether the request target is neither a path nor an ``http(s)://`` URL and holds an
    ``@``, in it or in its query (``ws://bob:pw@host/v2/``, ``ftp://...``, ``HTTPS:/...``,
    ``bob_smith:pw@host/...``, ``ws://bob:pw?x@host/``: a login, whose password a raw ``?``
    may have cut into the query). h11 takes any target, and the server answered them as the
    path it found, logging the target whole, password and all; they are refused, and logged
    as ``-``. (``host:443``, CONNECT's authority form, has no ``@``.)"""
    raw = scope["raw_path"] or b""
    if raw.startswith(b"/") or _SCHEME.match(raw) is not None:
        return False
    return b"@" in raw or b"@" in scope["query_string"]


def logged_path(scope: HTTPScope | WebsocketScope) -> str:
    """The path for the access log: never the ``user:password@host`` of an absolute-form
    target, nor a part of a password cut short by a raw ``?`` (:func:`login_in_query`: the
    target is refused, and its path is logged as ``-``), nor a target of another scheme
    (:func:`foreign_target`, refused too)."""
    if login_in_query(scope) or foreign_target(scope):
        return "-"
    return loggable(origin_form(scope)["path"])


def readable_host(scope: HTTPScope | WebsocketScope) -> bool:
    """Whether the request's host (``Host``, or the absolute-form target's, which
    :func:`origin_form` put there) is one the app can take: werkzeug IDNA-encodes it, port
    aside, while Quart builds the request context, outside the app's error handling, so a
    label over 63 characters or an empty one was a bodiless ``500`` and a logged traceback."""
    host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
    name = host.decode("latin-1").lower().partition(":")[0]
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


class Guard:
    """Normalises the request target, refuses oversized ones, and redirects plain HTTP to
    HTTPS when TLS is on (a WebSocket upgrade alike: it is answered with the redirect), at
    ``server.public_url``; a ``/v2/`` request whose ``Host`` picks one of ``upstreams`` is sent
    there with ``?ns=`` naming that upstream, so it reaches the registry it meant."""

    def __init__(
        self, app: ASGIFramework, https_url: str | None, upstreams: Upstreams | None = None
    ) -> None:
        self.app = app
        self.https_url = https_url
        self.upstreams = upstreams

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        http = origin_form(scope)
        answer = answer_send(http, send)
        if login_in_query(scope):
            said = "an absolute-form target with '@' in its query (a cut login?): send the path"
            await send_error(answer, ClientError(said))
            return
        if foreign_target(scope):
            said = "the request target is a URL, not of http or https: send the path"
            await send_error(answer, ClientError(said))
            return
        if len(http["query_string"]) > MAX_QUERY or len(http["raw_path"] or b"") > MAX_PATH:
            await send_error(answer, RequestTooLarge("request target too long"))
            return
        if not readable_host(http):
            await send_error(answer, ClientError("the Host header is not a host name"))
            return
        path = http["path"]
        if (
            self.https_url is not None
            and http["scheme"] in ("http", "ws")
            and path not in HTTPS_EXEMPT_PATHS
            and not path.startswith(HTTPS_EXEMPT_PREFIXES)
        ):
            raw = http["raw_path"] or b"/"
            if not raw.startswith(b"/"):  # "*", ".evil.example/": no path, never more host
                raw = b"/"
            target = self.https_url + raw.decode("latin-1")
            query = http["query_string"].decode("latin-1")
            picked = self._picked_by_host(http)
            if picked is not None:  # the public URL's host would pick another: say which
                query += ("&" if query else "") + "ns=" + quote(picked, safe="")
            if query:
                target += "?" + query
            location = [("Location", target)]
            await send_error(answer, UseHttps("this mirror is served over HTTPS"), location)
            return
        await self.app(http, receive, send)

    def _picked_by_host(self, scope: HTTPScope | WebsocketScope) -> str | None:
        """The upstream a ``/v2/`` request picks by its ``Host`` alone (one of its ``hosts``):
        the redirect goes to ``server.public_url``, whose host picks another, so it names this
        one with ``?ns=`` (never a URL built from ``Host``). None: it names one with ``?ns=``
        already, or its host picks none."""
        path = scope["path"]
        if self.upstreams is None or not (path == "/v2" or path.startswith("/v2/")):
            return None
        ns, host = request_picks(scope)
        if ns is not None:
            return None
        upstream = self.upstreams.for_host(host)
        return upstream.name if upstream is not None else None


_UNSAFE = re.compile(r"[^!-\[\]-~]")  # all but printable ASCII, space and backslash


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def loggable(text: str) -> str:
    """``text`` as one unforgeable log field: control characters, NUL, spaces, backslashes and
    anything beyond printable ASCII become ``\\xNN`` / ``\\uNNNN`` escapes, so a client cannot
    end the line, start a forged one, or shift the fields that follow."""
    return _UNSAFE.sub(_escape, text)


class RequestObserver(Protocol):
    """Told when each request starts and ends (``docxy.observe.Observer``: metrics, status)."""

    def request_started(self) -> None: ...
    def request_ended(
        self, scope: Scope, status: int, sent: int, seconds: float, end: str = "done"
    ) -> None: ...


#: How a request ended, the access log's word after ``total=`` (only ``client=`` may follow it):
#: ``done`` (its answer went out whole), ``cut`` (the mirror cut the body: the download behind
#: it failed; see ``CutStreams``), ``left`` (the client went away before the last byte),
#: ``aborted`` (an error escaped), ``stopped`` (the mirror's stop cut it when its drain was
#: over: a 503 if it was not answered yet, else a cut body; ``docxy.http.drain``).
ENDS = ("done", "cut", "left", "aborted", "stopped")
#: The fact ``docxy.http.drain.Drain`` leaves on a request the stop cut.
STOPPED = "stopped"
#: The fact ``docxy.http.app.CutStreams`` leaves when it cut a body.
CUT = "cut"
#: The fact an answer from a fill carries: its :class:`~docxy.cache.fill.Handover` objects,
#: where the upstream took over should the shared store's body have broken off (the fill's),
#: or should the cache have given the fill up (the client's own; see :func:`upstream_bytes`).
HANDOVER = "handover"


#: The fact an answer from a fill of the upstream carries (not one of the shared bucket's:
#: :data:`HANDOVER` tells those): the fill (:class:`~docxy.cache.fill.InFlight`), whose bytes
#: count once as the upstream's, under whichever of its clients end first.
FILL = "fill"


def fill_upstream_bytes(facts: dict[str, Any], nbytes: int) -> int | None:
    """Of ``nbytes`` an answer from a fill of the upstream sent from the fill, how many count
    as the upstream's (:meth:`~docxy.cache.fill.InFlight.claim`); None: no such fill."""
    fill = facts.get(FILL)
    return fill.claim(nbytes) if isinstance(fill, InFlight) else None


def upstream_bytes(facts: dict[str, Any], sent: int) -> int | None:
    """Of the ``sent`` bytes of an answer from a fill, how many the upstream gave after the
    earliest handover (they spent upstream quota); None if there was none."""
    handovers = facts.get(HANDOVER)
    if not isinstance(handovers, tuple):
        return None
    taken = [h for h in handovers if isinstance(h, Handover) and h.at is not None]
    if not taken:
        return None
    return max(h.upstream_part(sent) for h in taken)


class AccessLog:
    """One INFO line per request: method, path, status, bytes, cache (and, for a shared-store
    fill finished from the upstream, ``upstream_bytes``), upstream and total time, and how it
    ended (:data:`ENDS`).

    The method and path come from the client and are logged through :func:`loggable`. A
    WebSocket upgrade is logged as the ``GET`` it is, with the answer it got (its denial; a
    close before any answer is the server's ``403``).
    """

    def __init__(self, app: ASGIFramework, observer: RequestObserver | None = None) -> None:
        self.app = app
        self.observer = observer

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        facts: dict[str, Any] = {}
        scope["docxy"] = facts  # type: ignore[typeddict-unknown-key]
        status = 0
        sent = 0
        ended = False  # the body's last message went out

        async def counting_send(message: Any) -> None:
            nonlocal status, sent, ended
            kind = message["type"].removeprefix("websocket.")  # an upgrade's denial: the same
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
                ended = not message.get("more_body", False)
            elif kind == "close" and status == 0:  # before any answer: hypercorn says 403
                status, ended = 403, True
            await send(message)

        outcome = "done"
        if self.observer is not None:
            self.observer.request_started()
        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            outcome = "aborted"
            raise
        else:
            if facts.get(STOPPED):
                outcome = "stopped"
            elif not ended:  # returned with the answer unfinished: cut by the mirror, or the
                outcome = "cut" if facts.get(CUT) else "left"  # client left (Quart stops)
        finally:
            upstream_ms = facts.get("upstream_ms")
            resumed = upstream_bytes(facts, sent)
            who = identity_of(scope).label()
            log.info(
                "%s %s %s %d bytes cache=%s%s%s upstream=%s total=%.0fms %s%s",
                loggable(scope["method"] if scope["type"] == "http" else "GET"),
                logged_path(scope),
                status,
                sent,
                facts.get("cache", "-"),
                f" reason={facts['reason']}" if "reason" in facts else "",  # uncached: why
                "" if resumed is None else f" upstream_bytes={resumed}",
                "-" if upstream_ms is None else f"{upstream_ms:.0f}ms",
                (time.monotonic() - started) * 1000,
                outcome,
                "" if who == "-" else f" client={who}",  # docxy.access: cert:NAME, user:NAME
            )
            if self.observer is not None:
                seconds = time.monotonic() - started
                self.observer.request_ended(scope, status, sent, seconds, outcome)
