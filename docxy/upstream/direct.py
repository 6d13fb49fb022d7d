"""A cache fill's blob GET made with ``http.client``, its body read off the event loop.

httpx reads a body on the event loop, each read a trip through anyio, httpcore and h11, and over
TLS one 16 KiB record per read: on a cold pull that was the bottleneck (#12). Here the fill's
GET (with the mirror's token, redirects followed, the same User-Agent, timeouts and
``ssl.SSLContext`` as the shared httpx client) is sent with ``http.client`` from a worker
thread, which then reads the body in large reads, each a new ``bytes`` that the fill writes,
hashes and hands to the clients that keep up, never copied on the way. Everything else
(challenges, tokens, manifests, HEADs, pass-through) stays on httpx.

The httpx client is made with ``trust_env=False`` and no proxies, so there is no proxy to honour
here; a client with a custom transport (the tests' fakes) gets no :class:`DirectSettings` and its
fills stay on httpx. Failures map to the same errors as httpx's: :class:`UpstreamTimeout` (504)
and :class:`UpstreamUnavailable` (502); and the upstream's health hears the same: a redirect
that leads nowhere (:class:`BadRedirect`) is an answer from it, not a failure to reach it; an
answer in a transfer coding not read (:class:`UnreadAnswer`) is a bad answer from it
(:meth:`~docxy.upstream.client.UpstreamHealth.answered_badly`), as on httpx's path.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from docxy.config import UpstreamConfig
from docxy.core.errors import HopTimeout, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from docxy.core.hosts import origin as url_origin
from docxy.core.hosts import url_host
from docxy.threads import in_own_thread, within
from docxy.upstream.client import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    USER_AGENT,
    Upstream,
    UpstreamClient,
    next_hop,
    same_origin,
)
from docxy.upstream.failures import upstream_certificate_refused
from docxy.upstream.keepalive import IdleConnections, Origin
from docxy.upstream.redirects import (
    STAGGER_SECONDS,
    HopGuard,
    NonPublicOnly,
    RegistryVerdicts,
    hop_guard,
    hop_refusal,
)
from docxy.upstream.trust import UpstreamTrust, host_key


@dataclass(frozen=True, slots=True)
class DirectSettings:
    """What a direct GET shares with the httpx client: TLS, timeouts, User-Agent; and its own
    idle connections, kept for the next GET to the same origin. ``trust`` set and some
    upstream with a ``ca_file``: a connection verifies with its origin's context, else
    ``ssl_context``; ``trust`` also says which origins a ``ca_file`` could cover (a refusal's
    message). ``verdicts``: whether each upstream's own host is non-public, kept for the
    redirect rule (shared with the :class:`UpstreamClient` these settings are given to)."""

    ssl_context: ssl.SSLContext
    connect_timeout: float
    read_timeout: float
    user_agent: str = USER_AGENT
    idle: IdleConnections = field(default_factory=IdleConnections, compare=False)
    trust: UpstreamTrust | None = field(default=None, compare=False)
    verdicts: RegistryVerdicts = field(default_factory=RegistryVerdicts, compare=False)

    def context_for(self, origin: Origin) -> ssl.SSLContext:
        """The context a new connection to ``origin`` verifies with."""
        if self.trust is None or not self.trust.extends:
            return self.ssl_context
        return self.trust.context_for(origin)


def direct_settings(
    config: UpstreamConfig,
    ssl_context: ssl.SSLContext,
    transport: httpx.AsyncBaseTransport | None = None,
    trust: UpstreamTrust | None = None,
) -> DirectSettings | None:
    """The one place that chooses how fills read bodies: directly, unless the httpx client has
    a transport of its own (tests' fakes), which ``http.client`` could not go through."""
    if transport is not None:
        return None
    return DirectSettings(ssl_context, config.connect_timeout, config.read_timeout, trust=trust)


#: A redirect's or an error's body up to this size is read off so its connection can be kept,
#: if it comes whole within this many seconds (the read timeout, if shorter): else the
#: connection is dropped.
DRAIN_LIMIT = 64 * 1024
DRAIN_SECONDS = 2.0


class DirectBody:
    """An upstream body read with blocking :meth:`read` calls (a worker thread's job)."""

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        sock: socket.socket,
        response: http.client.HTTPResponse,
        give_back: Callable[[http.client.HTTPConnection], None],
        read_timeout: float,
        keep: bool = True,
    ) -> None:
        self._connection = connection
        self._keep = keep  # False: closed after this answer, however it ends
        self._sock = sock  # the connection forgets it when the answer says Connection: close
        self._response = response
        self._give_back = give_back
        self._host = connection.host
        self._read_timeout = read_timeout  # the socket's, for saying how long it waited
        self._interrupted = False
        self._closed = False

    def read(self, size: int) -> bytes:
        """The body's next ``size`` bytes (fewer at its end; none after it), in a new object
        (a fill hands it to its clients as it is). A cut or stalled upstream raises."""
        try:
            data = self._response.read(size)
        except TimeoutError as exc:
            waited = _waited(f"GET {self._host}", "nothing received", self._read_timeout)
            raise UpstreamTimeout(
                f"the upstream registry stopped sending in time ({waited})"
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: a read on a connection that interrupt() or close() shut meanwhile.
            why = "interrupted" if self._interrupted else type(exc).__name__
            raise UpstreamUnavailable(
                f"the upstream registry's body broke off ({self._host}): {why}"
            ) from exc
        if not data and self._response.length:  # http.client says nothing of a short body
            raise UpstreamUnavailable(
                f"the upstream registry's body broke off ({self._host}): "
                f"{self._response.length} bytes missing"
            )
        return data

    def interrupt(self) -> None:
        """Make a blocked :meth:`read` in another thread return now (thread-safe)."""
        self._interrupted = True
        shut_down(self._sock)

    def close(self, drain: bool = False) -> None:
        """Close the answer; its connection goes back to the idle ones if the answer was read
        to its end (``drain``: read a small rest first; blocking, so only in a worker thread).
        Once: a second call would give the same connection back again, for two GETs to share."""
        if self._closed:
            return
        self._closed = True
        response = self._response
        # Only a connection that can be kept is worth a read: one that will close (a body of
        # no stated length runs to the close) waited for that close, up to the read timeout,
        # before the redirect was followed.
        if drain and self._keep and not response.isclosed() and not response.will_close:
            self._drain(response)
        reusable = (
            self._keep
            and response.isclosed()
            and not response.will_close
            and not self._interrupted
            and self._connection.sock is not None
        )
        response.close()
        if reusable:
            self._give_back(self._connection)
        else:
            self._connection.close()

    def _drain(self, response: http.client.HTTPResponse) -> None:
        """Read off a small rest so the connection can be kept: ``DRAIN_LIMIT`` bytes at most,
        a rest of no stated length (chunked) included; a larger one is left unread, and then
        the connection is not kept (it is not at the end of its answer)."""
        if response.length is not None and response.length > DRAIN_LIMIT:
            return
        # Each read has the read timeout, not the whole rest: a body coming a byte at a time,
        # each inside it, held the fill's thread (64 KiB of them: days) before the redirect
        # was followed. The rest has DRAIN_SECONDS whole; a late one is cut, not kept.
        late = threading.Event()
        timer = threading.Timer(min(DRAIN_SECONDS, self._read_timeout), _cut, (self._sock, late))
        timer.daemon = True
        timer.start()
        try:
            response.read(DRAIN_LIMIT + 1)
        except (OSError, http.client.HTTPException, ValueError):
            self._interrupted = True
        finally:
            timer.cancel()
        if late.is_set():  # cut: whatever the read returned, the connection is not kept
            self._interrupted = True


class NotConnected(UpstreamUnavailable):
    """The first hop (the registry's own) got no connection: refused, unreachable, its name
    not resolved, its TLS handshake failed. Told to the outage hold, as httpx's path tells a
    ``ConnectError`` of its first hop (:mod:`docxy.upstream.outage`)."""


class ConnectTimedOut(UpstreamTimeout):
    """The first hop (the registry's own) got no connection in time; as :class:`NotConnected`."""


class BadRedirect(UpstreamUnavailable):
    """A redirect the GET cannot follow: without a ``Location``, to a malformed or non-HTTP
    one, one the redirect rule refuses (:mod:`docxy.upstream.redirects`: HTTPS to plain HTTP,
    a public upstream to a non-public address), or one too many. The upstream answered
    (``hops``: its answers, each ``(url, status)``), as httpx's path counts it, not a failure
    to reach it."""

    def __init__(self, message: str, hops: tuple[tuple[str, int], ...]) -> None:
        super().__init__(message)
        self.hops = hops


class UnreadAnswer(UpstreamUnavailable):
    """An answer whose body the GET does not read (a transfer coding but chunked): the upstream
    was reached and answered (``hops``: its answers, each ``(url, status)``, this one last),
    badly (its health's ``bad_answer``, as on httpx's path); not a failure to reach it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.hops: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class DirectAnswer:
    """The final answer to a direct GET: a status, its headers, and the open body."""

    status: int
    headers: list[tuple[str, str]]
    body: DirectBody
    hops: tuple[tuple[str, int], ...] = ()  # (url, status) of each answer, redirects first

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def close(self, drain: bool = False) -> None:
        self.body.close(drain)


async def open_get(
    client: UpstreamClient, upstream: Upstream, url: str, headers: list[tuple[str, str]]
) -> DirectAnswer:
    """GET ``url`` directly (``client.direct`` must be set), in a thread of its own; the
    answer's body is left open for a worker thread to read. Records the upstream's health as
    :meth:`UpstreamClient.send` does."""
    settings = client.direct
    assert settings is not None
    health = client.health_of(upstream)
    # Not sent while the registry is taken to be down (docxy.upstream.outage), but as its
    # probe; told an answer, and a failure to connect of the first hop (the registry's own).
    probe = client.outages.attempt(upstream.host, url, health.failed)
    try:
        with probe:  # told in it: a probe's failure doubles the hold
            try:
                answer = await in_own_thread(
                    f"upstream GET {url_host(url)}",
                    lambda: get(settings, url, headers, upstream),
                    discard=DirectAnswer.close,
                )
            except (NotConnected, ConnectTimedOut) as exc:  # the registry's own, no hop's
                timeout = isinstance(exc, ConnectTimedOut)
                client.outages.failed(upstream.host, url, exc.message, timeout=timeout)
                raise
        client.outages.answered(upstream.host, url)
    except BadRedirect as exc:  # answered: a redirect that leads nowhere
        health.answered(exc.hops[-1][1])
        _told(client, exc.hops, url)
        raise
    except UnreadAnswer as exc:  # answered badly: a body in a transfer coding not read
        health.answered_badly(f"{exc.message} ({url_host(exc.hops[-1][0])})")
        _told(client, exc.hops, url)
        raise
    except UpstreamError as exc:
        health.failed(exc.message, "timeout" if isinstance(exc, UpstreamTimeout) else "unreachable")
        raise
    try:
        health.answered(answer.status, retry_after=answer.header("retry-after"))
        # http.client decodes header values as Latin-1: encoded back so (httpx's default,
        # ASCII, raised UnicodeEncodeError for a value such as a CDN's `x-amz-meta-*: café`,
        # which crashed every fill from that upstream, its answer left open).
        health.saw(httpx.Headers(answer.headers, encoding="latin-1"))
        _told(client, answer.hops, url)
    except BaseException:
        answer.close()
        raise
    return answer


def _told(client: UpstreamClient, hops: tuple[tuple[str, int], ...], asked: str) -> None:
    """The client's listeners hear of each answer a direct GET of ``asked`` got."""
    for listener in client.direct_listeners:
        for hop_url, status in hops:
            listener(hop_url, status, asked)


def get(
    settings: DirectSettings,
    url: str,
    headers: list[tuple[str, str]],
    upstream: Upstream | None = None,
) -> DirectAnswer:
    """GET ``url`` following redirects (blocking: call it from a worker thread) where the
    redirect rule lets them lead (:func:`~docxy.upstream.redirects.hop_refusal`; a hop to a
    host name connects under its :class:`~docxy.upstream.redirects.HopGuard`), for
    ``upstream`` (without one, the first URL's registry is taken for it)."""
    hops: list[tuple[str, int]] = []
    first = url
    registry = upstream.registry if upstream is not None else url
    listed = upstream.ca_origins if upstream is not None else ()
    over_https = False  # some hop went over HTTPS: none goes to plain HTTP
    guard: HopGuard | None = None  # the first hop is the upstream's own: unguarded
    for _ in range(MAX_REDIRECTS + 1):
        try:
            answer = _get_once(settings, url, headers, guard, first=not hops)
        except NonPublicOnly as exc:  # the upstream answered: a redirect that leads nowhere
            raise BadRedirect(str(exc), tuple(hops)) from exc
        except UnreadAnswer as exc:  # answered, in a way not read
            exc.hops = (*hops, (url, exc.status))
            raise
        except UpstreamTimeout as exc:
            if same_origin(url, first):
                raise
            raise HopTimeout(exc.message) from exc  # a CDN: another may answer next time
        hops.append((url, answer.status))
        if answer.status not in REDIRECT_STATUSES:
            return replace(answer, hops=tuple(hops))
        location = _percent_encoded(answer.header("location"))
        answer.close(drain=True)
        try:
            url, headers = next_hop(url, location, headers)
        except UpstreamUnavailable as exc:
            raise BadRedirect(exc.message, tuple(hops)) from exc
        over_https = over_https or urlsplit(hops[-1][0]).scheme.lower() == "https"
        refused = hop_refusal(
            url,
            over_https=over_https,
            registry=registry,
            listed=listed,
            lookup_seconds=settings.connect_timeout,
            verdicts=settings.verdicts,
        )
        if refused is not None:
            raise BadRedirect(refused, tuple(hops))
        guard = hop_guard(
            url,
            registry=registry,
            listed=listed,
            lookup_seconds=settings.connect_timeout,
            verdicts=settings.verdicts,
            over_https=over_https,
        )
    raise BadRedirect(f"the upstream redirected more than {MAX_REDIRECTS} times", tuple(hops))


#: What a URL may hold as it is; every other byte is percent-encoded (RFC 3986).
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def _percent_encoded(location: str | None) -> str | None:
    """A redirect's ``Location`` as a URL can be sent: raw non-ASCII bytes (which http.client
    hands over as Latin-1), spaces and control characters percent-encoded, as httpx and
    browsers send them; http.client refused to send such a target (non-ASCII: an uncaught
    ``UnicodeEncodeError``, a traceback from the fill; a space: ``InvalidURL``). What is
    encoded already (``%2F``) stays as it is."""
    if location is None:
        return None
    return quote(location.encode("latin-1", "replace"), safe=_URL_SAFE)


def _get_once(
    settings: DirectSettings,
    url: str,
    headers: list[tuple[str, str]],
    guard: HopGuard | None = None,
    *,
    first: bool = False,
) -> DirectAnswer:
    """One GET; an idle connection that fails before the answer is retried on a new one.
    ``guard``: the addresses the connection may go to (a redirect hop's); an idle connection
    whose peer it does not allow is closed, not reused (kept for a LAN upstream's GET).
    ``first``: the GET's first hop, whose failure to connect raises :class:`NotConnected` or
    :class:`ConnectTimedOut`."""
    parts = urlsplit(url)
    scheme, hostname, port = url_origin(url)  # https://x and https://x:443: one idle pool
    # The host as httpx sends it (an IDN in its IDNA 2008 form): http.client, ssl and the
    # lookup encode a name that is not ASCII with IDNA 2003, which maps faß.de to fass.de,
    # another domain, which was sent the fill's GET with the mirror's credentials.
    origin: Origin = (scheme, host_key(hostname or ""), port)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    while True:
        connection = settings.idle.take(origin)
        if connection is not None and not _still_trusted(settings, origin, connection):
            connection.close()  # verified with CAs its origin is no longer trusted with
            continue
        if connection is not None and not _peer_allowed(connection, guard):
            connection.close()  # connected inside for an upstream that may lead there
            continue
        reused = connection is not None
        if connection is None:
            connection = _connection(settings, origin)
        if isinstance(connection, _Connection):
            connection.guard = guard  # for a connect() below, of a new one or a dropped one
        waiting = "no connection", settings.connect_timeout
        try:
            if connection.sock is None:
                connection.connect()  # and the TLS handshake: under the connect timeout
            waiting = "nothing received", settings.read_timeout
            return _send(settings, connection, origin, target, headers)
        except NonPublicOnly:
            connection.close()
            raise
        except TimeoutError as exc:
            connection.close()
            unconnected = first and waiting[0] == "no connection"  # connect() failed
            if isinstance(exc, HeadersLate):
                waiting = "no whole answer headers", exc.seconds
            waited = _waited(f"GET {url_host(url)}", *waiting)
            timed_out = ConnectTimedOut if unconnected else UpstreamTimeout
            raise timed_out(f"the upstream registry did not answer in time ({waited})") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            unreached = NotConnected if first and waiting[0] == "no connection" else None
            refused = upstream_certificate_refused(url, exc, settings.trust)
            if refused is not None:  # a reused connection did its handshake long ago
                raise (unreached or UpstreamUnavailable)(refused) from exc
            if not reused:
                where = url_host(url)
                raise (unreached or UpstreamUnavailable)(
                    f"cannot reach the upstream registry ({where}): {type(exc).__name__}"
                ) from exc


def _send(
    settings: DirectSettings,
    connection: http.client.HTTPConnection,
    origin: Origin,
    target: str,
    headers: list[tuple[str, str]],
) -> DirectAnswer:
    sock = connection.sock
    assert sock is not None  # connected by the caller
    sock.settimeout(settings.read_timeout)
    # The socket's timeout is each read's: headers sent a byte at a time, each inside it, held
    # the fill (shared by every client of the blob) as long as they kept on. A timer cuts the
    # socket once they are late, as interrupt() does a body's.
    within = settings.connect_timeout + settings.read_timeout
    late = threading.Event()
    timer = threading.Timer(within, _cut, (sock, late))
    timer.daemon = True
    timer.start()
    try:
        connection.putrequest("GET", target)  # adds Host and Accept-Encoding: identity
        connection.putheader("User-Agent", settings.user_agent)
        for name, value in headers:
            if name.lower() not in ("host", "user-agent", "accept-encoding"):
                connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        if late.is_set():
            raise HeadersLate(within) from exc
        raise
    finally:
        timer.cancel()
    if late.is_set():  # cut as the last of them came: the body cannot be read
        response.close()
        raise HeadersLate(within)
    coding = _unread_coding(response)
    if coding is not None:
        response.close()
        connection.close()  # not at the end of an answer it cannot read: never kept
        raise UnreadAnswer(
            f"the upstream registry's answer has Transfer-Encoding: {coding}, "
            "which is not read (only chunked is)",
            response.status,
        )
    give_back = partial(settings.idle.give, origin)
    # Chunked and a Content-Length both: read by its chunks, the length ignored, and the
    # connection closed after it (the mirror's choice, for RFC 9112 6.3's reason to take such
    # an answer for an error: whatever framed it on the way may have read another body);
    # http.client kept it for the next GET.
    keep = response.getheader("content-length") is None or not response.chunked
    body = DirectBody(connection, sock, response, give_back, settings.read_timeout, keep)
    return DirectAnswer(response.status, response.getheaders(), body)


def _unread_coding(response: http.client.HTTPResponse) -> str | None:
    """An answer's ``Transfer-Encoding`` when it is not just ``chunked`` (None: none, or just
    that). http.client reads only a first such header that says exactly ``chunked`` by its
    chunks; any other (``gzip, chunked``, two headers) it read by the Content-Length or to
    the close, the chunk framing taken for the blob's bytes: refused, as httpx's h11 does.
    A lone ``identity`` (RFC 7230 removed it) http.client would read by its length, but h11
    refuses it: refused here too, so an answer fails or fills the same on either path."""
    values = response.headers.get_all("transfer-encoding") or []
    codings = [c.strip().lower() for value in values for c in value.split(",")]
    if not values or (len(values) == 1 and codings == ["chunked"]):
        return None
    return ", ".join(values)


class HeadersLate(TimeoutError):
    """A direct GET's answer did not bring its status line and headers whole in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _cut(sock: socket.socket, late: threading.Event) -> None:
    """The headers are late: a blocked read of them returns."""
    late.set()
    shut_down(sock)


def shut_down(sock: socket.socket) -> None:
    """Make a read blocked on ``sock`` in another thread return now (thread-safe): the plain
    socket's shutdown, as an SSLSocket's own would drop its SSL object."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _waited(what: str, missing: str, seconds: float) -> str:
    """``GET host: nothing received within 15s``, as :func:`~docxy.upstream.failures.failure`
    says an httpx timeout."""
    return f"{what}: {missing} within {seconds:g}s"


def _still_trusted(
    settings: DirectSettings, origin: Origin, connection: http.client.HTTPConnection
) -> bool:
    """Whether an idle connection verified its origin with the context that origin has now
    (an upstream's ``ca_file`` no longer applies there once its realm moved, or once another
    upstream without one uses that origin too)."""
    if not isinstance(connection, _TLSConnection):
        return True
    return connection.verified_with is settings.context_for(origin)


def _peer_allowed(connection: http.client.HTTPConnection, guard: HopGuard | None) -> bool:
    """Whether an idle connection's peer is an address ``guard`` lets a hop go to (a public
    one for a public upstream's hop, an inside one for a plain-HTTP hop after HTTPS)."""
    if guard is None or connection.sock is None:
        return True
    try:
        peer = connection.sock.getpeername()
    except OSError:
        return False
    return guard.allows(str(peer[0]))


def _connection(settings: DirectSettings, origin: Origin) -> http.client.HTTPConnection:
    scheme, hostname, port = origin
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = _TLSConnection(
            hostname, port, timeout=settings.connect_timeout, context=settings.context_for(origin)
        )
    else:
        connection = _Connection(hostname, port, timeout=settings.connect_timeout)
    return connection


#: How a direct GET looks a host name up (``socket.getaddrinfo``; tests replace it).
RESOLVE: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo


def _connect(
    address: tuple[str, int],
    timeout: float | None,
    source: tuple[str, int] | None = None,
    guard: HopGuard | None = None,
) -> socket.socket:
    """``socket.create_connection`` with the name lookup under the connect timeout too, as
    httpx has it: a resolver that never answers held the fill until the C library gave up
    (its own timeouts and retries, per name server). The lookup goes on in its thread then.
    ``guard`` (a redirect hop's): only the addresses it allows are tried (raises
    :class:`~docxy.upstream.redirects.NonPublicOnly` when none is). The addresses are raced
    as httpx's path races them (:func:`_first_to_connect`), the lookup and every attempt
    within ``timeout`` in all."""
    host, port = address
    deadline = None if timeout is None else time.monotonic() + timeout
    lookup = partial(RESOLVE, host, port, 0, socket.SOCK_STREAM)
    try:
        if timeout is None or _is_address(host):  # nothing to wait for, or no limit to it
            found = lookup()
        else:  # a name: looked up in a thread of its own, waited for `timeout`
            found = within(timeout, f"resolve {host}", lookup)
    except UnicodeError as exc:
        # The lookup's IDNA codec refuses the name (an empty or over-long label: a redirect to
        # http://a..b/): no such host, as httpx says, not a ValueError that crashed the fill.
        raise socket.gaierror(socket.EAI_NONAME, f"no such host name: {host!r}") from exc
    if guard is not None:
        found = guard.screened(found)
    if not found:
        raise OSError(f"no address found for {host}")
    sock = _first_to_connect(found, deadline, source)
    sock.settimeout(timeout)  # blocking again, each read with the timeout (the handshake's)
    return sock


#: The errors a non-blocking ``connect_ex`` gives for an attempt still under way.
_UNDER_WAY = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}


def _first_to_connect(
    found: list[tuple[Any, ...]], deadline: float | None, source: tuple[str, int] | None
) -> socket.socket:
    """The socket of the first of the ``getaddrinfo`` entries ``found`` to connect, attempts
    started :data:`~docxy.upstream.redirects.STAGGER_SECONDS` apart (the next at once when
    one fails), as httpx's path (:func:`~docxy.upstream.redirects._connect_guarded`) and
    anyio race them: tried one after another, each with the whole connect timeout, an address
    that never answers (broken IPv6) held every new fill connection that long. The others are
    closed. Raises :class:`TimeoutError` at ``deadline``, else the last attempt's error when
    all fail."""
    waiting = list(found)
    pending: dict[socket.socket, tuple[Any, ...]] = {}
    error: OSError | None = None
    next_start = time.monotonic()
    with selectors.DefaultSelector() as selector:
        try:
            while waiting or pending:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("timed out")
                if waiting and (now >= next_start or not pending):
                    family, kind, proto, _, sockaddr = waiting.pop(0)
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        if source is not None:
                            sock.bind(source)
                        code = sock.connect_ex(sockaddr)
                    except OSError as exc:
                        sock.close()
                        error, next_start = exc, now  # a failure: the next starts at once
                        continue
                    if code == 0:
                        return _won(sock, pending, selector)
                    if code not in _UNDER_WAY:
                        sock.close()
                        error, next_start = OSError(code, os.strerror(code)), now
                        continue
                    pending[sock] = sockaddr
                    selector.register(sock, selectors.EVENT_WRITE)
                    next_start = now + STAGGER_SECONDS
                wake = [deadline] if deadline is not None else []
                if waiting:
                    wake.append(next_start)
                wait = max(0.0, min(wake) - time.monotonic()) if wake else None
                for key, _ in selector.select(wait):
                    sock = typing.cast(socket.socket, key.fileobj)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        return _won(sock, pending, selector)
                    selector.unregister(sock)
                    del pending[sock]
                    sock.close()
                    error = OSError(code, os.strerror(code))
                    next_start = time.monotonic()  # a failure: the next starts at once
        except BaseException:
            for sock in pending:
                sock.close()
            raise
    raise error if error is not None else OSError("no address answered")


def _won(
    sock: socket.socket,
    pending: dict[socket.socket, tuple[Any, ...]],
    selector: selectors.BaseSelector,
) -> socket.socket:
    """``sock`` connected first: the other attempts are closed."""
    for other in pending:
        if other is not sock:
            other.close()
    pending.clear()
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(sock)
    return sock


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Connection(http.client.HTTPConnection):
    """Connects with :func:`_connect` (http.client's own hook for how it connects), under
    :attr:`guard`: the one of the GET that connects it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard: HopGuard | None = None
        self._create_connection = self._guarded_connect

    def _guarded_connect(
        self,
        address: tuple[str, int],
        timeout: float | None,
        source: tuple[str, int] | None = None,
    ) -> socket.socket:
        return _connect(address, timeout, source, self.guard)


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    """The same over TLS (the MRO runs HTTPSConnection's ``__init__`` under this one's); it
    keeps the context it verifies with (:func:`_still_trusted`)."""

    def __init__(self, *args: Any, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(*args, context=context, **kwargs)
        self.verified_with = context
