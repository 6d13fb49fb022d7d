"""Connections that cannot pin the mirror: a cap, a prompt close, and a stall timeout.

hypercorn 0.18 serves each connection with a ``TCPServer``; this module's subclass adds three
things the hostile-traffic run showed missing:

- **a cap** on open connections (``limits.max_connections``): one over the cap gets a short
  ``503`` with ``Retry-After`` and is closed at once, so a flood costs one descriptor per
  connection for microseconds, not for as long as the client likes; at the cap, the
  connection idle the longest (no request in progress, or an HTTP/1.1 request whose body
  has not all come and whose answer has not started) is closed first to make room, so
  connections that never send, or never finish a body, cannot hold every place; and a cap
  per address
  (``limits.connections_per_client``, an IPv6 client by its /64; trusted proxies and
  ``limits.exempt`` spared), so one client cannot hold every place of the first (``429``
  beyond it);
- **a prompt close** when the peer hangs up: hypercorn keeps the connection's idle timer
  running after the peer's EOF and closes the socket only when it fires, so 3000
  connect-and-close clients left 3000 descriptors in CLOSE-WAIT for ``keep_alive_timeout``;
- **a stall timeout** (``limits.send_timeout``): a write waits for the client to take the
  bytes; when the client takes *none* of them for that long, the connection is aborted (its
  buffered bytes dropped). Progress is the bytes not yet taken (the transport's buffer plus
  the kernel's send queue) shrinking, checked a few times per timeout, whatever the chunk
  size; and a client that keeps taking a trickle must take ``limits.send_min_rate`` bytes a
  second over each ``send_timeout`` the mirror spends waiting on it, else it is aborted too:
  a pass-through download holds an upstream permit (``limits.fills_total``) while it lasts,
  and a few clients reading a few bytes a second held every permit for hours;
- **the TLS handshake after the count**: asyncio's server would do each handshake before
  hypercorn sees the connection, so connections that never finish one (each holding a
  descriptor and asyncio's 256 KiB TLS buffer until ``limits.idle_timeout``) escaped the cap.
  The TLS listener's sockets are served plain (:class:`TLSListeners`) and each connection
  does its handshake here, once counted, with the newest certificate's context (which is how
  a reloaded certificate reaches new connections); one over the cap is closed before any.

Idle clients and slow request headers are hypercorn's ``keep_alive_timeout``: its idle timer
runs from the connection's start until a whole request head has arrived, and between requests.
On a TLS listener the handshake and the first request head share that one deadline from the
connection's start (:meth:`EdgeTCPServer._idle_timeout`): hypercorn's timer starts after the
handshake, and a client took ``keep_alive_timeout`` for each, twice a plain one's.
hypercorn's ``read_timeout`` is left off: it also fires while a long download is being sent to
a client that has nothing more to say, and would cut it.

:func:`install` makes hypercorn's asyncio runner use the subclass (it names ``TCPServer`` in
its module and has no setting for it); the subclass extends ``docxy.access.peer``'s, which
swaps in the same way, so one class serves both. :func:`raise_fd_limit` lifts the soft
descriptor limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import ssl
import struct
import termios
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11
import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, Event, RawData, Updated

from docxy.access.peer import PeerCertTCPServer
from docxy.core.cidr import Networks, client_key, parse_address, site_key
from docxy.core.errors import TooManyRequests
from docxy.core.headers import API_VERSION_HEADER
from docxy.heap import malloc_trim

log = logging.getLogger(__name__)

#: Descriptors kept back from the connection cap: listeners, the cache's files, the upstream.
RESERVED_FDS = 64
#: Each client connection may hold its socket, an open blob file and an upstream socket.
FDS_PER_CONNECTION = 3
#: Stall checks per ``send_timeout``: a stalled client is closed within 1¼ timeouts.
CHECKS_PER_TIMEOUT = 4
#: The soft descriptor limit asked for at most (an unlimited hard limit is not a target).
MAX_FD_LIMIT = 1 << 20


def _busy_response(error: TooManyRequests, reason: str) -> bytes:
    """Written on the socket before any ASGI app runs: the head by hand, the body the registry
    error's own."""
    body = error.encoded()
    head = (
        f"HTTP/1.1 {error.status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        f"{API_VERSION_HEADER[0].lower()}: {API_VERSION_HEADER[1]}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


BUSY = _busy_response(
    TooManyRequests("too many open connections", status=503), "Service Unavailable"
)
#: One address holds ``limits.connections_per_client`` connections already.
CLIENT_BUSY = _busy_response(
    TooManyRequests("too many open connections from this address"), "Too Many Requests"
)


class Listener(socket.socket):
    """A listening socket that notes which connections it accepted.

    asyncio accepts with this object's :meth:`accept` (it is the socket hypercorn hands to
    ``start_server``), and hypercorn serves every listener's connections with one callback: this
    is how the edge learns which listener a connection came in on (:func:`accepted_by`).
    Addresses cannot tell: listeners may share a port on different addresses, a wildcard of
    one family beside an address of the other."""

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        _accepted_by[connection.fileno()] = self  # an older entry for the descriptor: replaced
        return connection, address


#: Accepted descriptor → the listener that accepted it, until the edge asks. Every accept by a
#: :class:`Listener` writes its descriptor's entry, so a left-over one (a connection closed
#: before the edge saw it) is replaced before the edge can ask about that descriptor again.
_accepted_by: dict[int, Listener] = {}


def accepted_by(sock: object) -> Listener | None:
    """The listener that accepted ``sock`` (a connection's socket or asyncio's wrapper of it);
    answered once per connection. None: not accepted by a :class:`Listener`."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return None
    return _accepted_by.pop(fileno(), None)


@dataclass(frozen=True, slots=True)
class TLSListeners:
    """The TLS listeners, whose connections the edge hands to TLS itself once counted."""

    context: Callable[[], ssl.SSLContext]  # the newest certificate's, asked per handshake
    sockets: frozenset[Listener]
    handshake_timeout: float

    @classmethod
    def of(
        cls,
        context: Callable[[], ssl.SSLContext],
        sockets: Iterable[socket.socket],
        handshake_timeout: float,
    ) -> TLSListeners:
        listeners: list[Listener] = []
        for sock in sockets:  # another socket's connections could not be told: served plain
            if not isinstance(sock, Listener):
                raise TypeError(f"a TLS listener must be a docxy.edge Listener, not {sock!r}")
            listeners.append(sock)
        return cls(context, frozenset(listeners), handshake_timeout)

    def serves(self, listener: Listener | None) -> bool:
        """Whether a connection that ``listener`` accepted is TLS."""
        return listener in self.sockets


@dataclass(slots=True)
class ConnectionGuard:
    """The shared count of open connections and the limits every connection obeys: the cap
    on all of them, and on those from one address (``per_client``; an IPv6 client by its
    /64, as the per-client limits count it). A trusted proxy's connections carry many clients,
    and so do those from an ``exempt`` network (``limits.exempt``: a NAT, a CI farm): only the
    total counts them. The address is the peer's: no request has named a client yet."""

    max_connections: int
    send_timeout: float | None
    per_client: int = 0  # 0: no cap per address
    #: bytes a second a client must take while the mirror waits on it (``limits.send_min_rate``),
    #: judged over each ``send_timeout`` of waiting; 0: only a client taking none is cut
    min_send_rate: float = 0.0
    trusted: Networks = field(default_factory=Networks)
    exempt: Networks = field(default_factory=Networks)
    open: int = 0
    refused: int = 0
    refused_per_client: int = 0
    stalled: int = 0
    too_slow: int = 0  # dropped under min_send_rate
    evicted: int = 0  # idle connections closed to make room (:meth:`_evict_idle`)
    tls: TLSListeners | None = None  # set once the listeners are bound
    by_client: Counter[str] = field(default_factory=Counter)
    #: the tasks of the connections in their TLS handshake: a stop ends those handshakes
    #: (:meth:`stop`), and starts no other
    handshaking: set[asyncio.Task[Any]] = field(default_factory=set)
    stopping: bool = False
    #: the connections admitted and not yet ended: a stop drops those still open at its
    #: deadline (:meth:`stop`)
    serving: set[EdgeTCPServer] = field(default_factory=set)

    def stop(self, grace: float) -> None:
        """A stop began (``grace``: hypercorn's ``graceful_timeout``).

        The connections still in their TLS handshake are dropped now (no request came on
        them; one that never sends a ClientHello held the stop for its handshake timeout,
        ``limits.idle_timeout``, and was then cancelled with a traceback), and so is any
        handshake that starts from now on. The connections still open ``grace`` seconds on
        are aborted then: hypercorn's stop waits in ``asyncio.Server.wait_closed`` before its
        own deadline, and since Python 3.12 that wait lasts until every connection has closed
        (it returned at once on 3.11, and hypercorn cancelled the connections left at
        ``graceful_timeout``: quietly since :func:`_ended_by_the_stop`), so one hypercorn never
        closes held the stop for good: a request never answered, a client that takes no
        bytes (held for the drain and then ``CLOSE_WAIT``: 14 s on 3.13, past the 13 s
        supervisord gives the mirror; 10 s on 3.11), and, before the idle timer was restarted
        for it (``docxy.edge.h2c``), an h2c connection that sent its preface alone (still
        running 40 s after SIGTERM on 3.13)."""
        self.stopping = True
        for task in list(self.handshaking):
            task.cancel()
        asyncio.get_running_loop().call_later(grace, self._drop_left, grace)

    def _drop_left(self, grace: float) -> None:
        left = [server.writer.transport for server in self.serving]
        if left:
            log.info("stopping: %d connection(s) still open after %ss, dropped", len(left), grace)
        for transport in left:
            transport.abort()

    def admit(self, peer: object = None) -> Admitted:
        """A place for a new connection from ``peer`` (asyncio's peername), or the refusal.
        At the cap, the connection idle the longest is closed to make room, if there is one."""
        key, site = self._client_keys(peer)
        if self.open >= self.max_connections and not self._evict_idle(key, site):
            self.refused += 1
            return Admitted(None, BUSY)
        if key is not None:
            over_site = site is not None and self.by_client[site] >= self.site_cap()
            if self.by_client[key] >= self.per_client or over_site:
                self.refused_per_client += 1
                return Admitted(None, CLIENT_BUSY)
            self.by_client[key] += 1
            if site is not None:
                self.by_client[site] += 1
        self.open += 1
        return Admitted(key, site=site)

    def _evict_idle(self, key: str | None, site: str | None) -> bool:
        """Close the connection idle the longest (no request in progress: none sent yet, or
        between two, its last answer all taken; a TLS one still in its handshake too; or one
        whose request's body has not all come and whose answer has not started) to make
        room for a new one; False if none is idle. Connections that send nothing, renewed
        before ``limits.idle_timeout``, held every place, and every other client got 503 for as
        long as that lasted. Not for a client at its own cap (``limits.connections_per_client``):
        it is refused anyway."""
        if key is not None:
            over_site = site is not None and self.by_client[site] >= self.site_cap()
            if self.by_client[key] >= self.per_client or over_site:
                return False
        oldest: EdgeTCPServer | None = None
        oldest_since = 0.0
        for server in self.serving:
            since = server.evictable_since()
            if since is None or (oldest is not None and since >= oldest_since):
                continue
            # not one closing already, nor one whose last answer the client is still taking
            if not server.writer.transport.is_closing() and server.unsent() == 0:
                oldest, oldest_since = server, since
        if oldest is None:
            return False
        oldest.evict()
        self.evicted += 1
        return True

    def site_cap(self) -> int:
        """Connections an IPv6 /48 holds at most (:data:`SITE_FACTOR` of ``per_client``, and
        never over half of ``max_connections``, but at least ``per_client``): a home's /56 is
        256 /64s, each its own client, and one such holder filled the whole cap."""
        half = self.max_connections // 2
        return max(self.per_client, min(SITE_FACTOR * self.per_client, half))

    def refusals(self) -> dict[str, int]:
        """Connections refused (or, ``limits.send_timeout``, dropped) so far, by the setting."""
        return {
            "limits.max_connections": self.refused,
            "limits.connections_per_client": self.refused_per_client,
            "limits.send_timeout": self.stalled,
            "limits.send_min_rate": self.too_slow,
        }

    def too_slow_over(self, waited: float, taken: int, how: str) -> str | None:
        """Why a client that took ``taken`` bytes over ``waited`` seconds of the mirror waiting
        on it is dropped under ``limits.send_min_rate`` (counted), or None: it kept up. ``how``
        it took them (a socket's: taken; an h2c stream's window: let through)."""
        if taken >= self.min_send_rate * waited:
            return None
        self.too_slow += 1
        return (
            f"{taken / waited:.0f} bytes/s {how} over {waited:.0f}s,"
            f" under limits.send_min_rate {self.min_send_rate:.0f}"
        )

    def release(self, admitted: Admitted | None = None) -> None:
        self.open -= 1
        counts = (admitted.key, admitted.site) if admitted is not None else ()
        for counted in counts:
            if counted is not None:
                self.by_client[counted] -= 1
                if self.by_client[counted] <= 0:
                    del self.by_client[counted]

    def _client_keys(self, peer: object) -> tuple[str | None, str | None]:
        """The key ``peer`` is capped under, and its IPv6 /48's (``site:<net>``, counted in
        :attr:`by_client` too); None when it is not capped per address (and for IPv4's site)."""
        if not self.per_client or not isinstance(peer, tuple) or not peer:
            return None, None
        address = parse_address(str(peer[0]))
        if address is None or address in self.trusted or address in self.exempt:
            return None, None
        site = site_key(address)
        return client_key(address), None if site is None else f"site:{site}"


#: How many clients' connection caps an IPv6 /48 holds at most (:meth:`ConnectionGuard.site_cap`).
SITE_FACTOR = 4


def _ended_by_the_stop(guard: ConnectionGuard) -> bool:
    """Whether the cancellation the current connection's task is in is the stop's own, and if
    so, take it back: the connection ends as done, not cancelled.

    A stop ends the connections still open at hypercorn's ``graceful_timeout`` (a client taking
    no bytes, a request never answered): the edge aborts them (:meth:`ConnectionGuard.stop`)
    and hypercorn cancels their tasks at the same deadline (its wait for them), usually before
    the abort has ended them; that, or ``asyncio.run``'s end for a task still left, is the one
    cancellation a connection's task gets once a stop has begun. Python 3.11's
    ``asyncio.StreamReaderProtocol`` asks the task for its exception in a done callback, which
    raises for a cancelled task, and asyncio logged "Exception in callback
    StreamReaderProtocol.connection_made.<locals>.callback" with the ``CancelledError``'s
    traceback at ERROR at every such stop (3.12.1's callback is the same; 3.13's looks at
    ``task.cancelled()`` first). A cancellation before a stop, or a second one in it, is not
    the stop's: it goes on, as does any other exception (asyncio logs it)."""
    task = asyncio.current_task()
    if not guard.stopping or task is None or task.cancelling() != 1:
        return False
    task.uncancel()
    return True


@dataclass(frozen=True, slots=True)
class Admitted:
    """What :meth:`ConnectionGuard.admit` decided: the per-address key the connection counts
    under, or the answer to refuse it with (``refusal``, written on a plain connection)."""

    key: str | None
    refusal: bytes | None = None
    site: str | None = None  # the key's IPv6 /48, counted too (ConnectionGuard.site_cap)

    def __bool__(self) -> bool:
        return self.refusal is None


class EdgeTCPServer(PeerCertTCPServer):
    """hypercorn's connection, capped, closed when the peer leaves, aborted when stalled; and,
    as ``docxy.access.peer`` needs, noting the TLS client certificate for its requests."""

    @property
    def guard(self) -> ConnectionGuard | None:
        guard = getattr(self.config, "edge", None)
        return guard if isinstance(guard, ConnectionGuard) else None

    async def run(self) -> None:
        guard = self.guard
        if guard is None:
            await super().run()
            return
        listener = accepted_by(self.writer.get_extra_info("socket"))
        tls = guard.tls if guard.tls is not None and guard.tls.serves(listener) else None
        admitted = guard.admit(self.writer.get_extra_info("peername"))
        if not admitted:
            self._refuse(admitted.refusal if tls is None else None)
            return
        self.idle_since = asyncio.get_running_loop().time()  # hypercorn's idle timer runs
        # the TLS handshake (if any) and the first request head, both by then
        self._head_by = self.idle_since + self.config.keep_alive_timeout
        guard.serving.add(self)
        try:
            if tls is None or await self._handshake(tls):
                await super().run()
        except asyncio.CancelledError:
            if not _ended_by_the_stop(guard):
                raise
        finally:
            guard.serving.discard(self)
            guard.release(admitted)

    async def _handshake(self, tls: TLSListeners) -> bool:
        """TLS on a TLS listener's connection, now that it is counted; False if it failed (the
        socket is closed then, as asyncio's own server handshake would have)."""
        guard = self.guard
        transport = self.writer.transport
        if guard is None or guard.stopping:
            transport.abort()
            return False
        task = asyncio.current_task()
        assert task is not None
        guard.handshaking.add(task)
        self._handshake_task = task
        try:
            context = tls.context()
            left = tls.handshake_timeout
            if self._head_by is not None:
                left = min(left, self._head_by - asyncio.get_running_loop().time())
            if left <= 0:
                raise TimeoutError("no time left for the TLS handshake")
            await self.writer.start_tls(context, ssl_handshake_timeout=left)
        except OSError:  # ssl.SSLError, a reset, the handshake timeout
            transport.abort()
            return False
        except asyncio.CancelledError:
            # In a handshake once stopping, only stop() cancels it: no handshake
            # starts after it; and evict() to make room. Cancelled by another too, it goes
            # on as that one's.
            if not (guard.stopping or self._evicted) or task.cancelling() > 1:
                raise
            task.uncancel()
            transport.abort()
            return False
        finally:
            guard.handshaking.discard(task)
            self._handshake_task = None
        return True

    _handshake_task: asyncio.Task[Any] | None = None
    _evicted = False
    #: When the connection's first request head must have come by, its TLS handshake
    #: included (``keep_alive_timeout`` from its start); None once a request has begun.
    _head_by: float | None = None

    async def _idle_timeout(self) -> None:
        """hypercorn's idle timer, which closes the connection ``keep_alive_timeout`` after it
        (re)starts; the first, which starts once the TLS handshake is done, ends at
        :attr:`_head_by` instead: a TLS client had ``limits.idle_timeout`` for its handshake
        and then as long again for its request head."""
        head_by = self._head_by
        if head_by is None:
            await super()._idle_timeout()
            return
        left = max(0.0, head_by - asyncio.get_running_loop().time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.context.terminated.wait(), left)
        await asyncio.shield(self._initiate_server_close())

    def evict(self) -> None:
        """Close the connection to make room under the cap (ConnectionGuard._evict_idle). One
        in its TLS handshake has the handshake cancelled, as a stop does: its transport
        aborted under asyncio's ``start_tls`` made that return no transport, and the
        connection's task ended in an AttributeError traceback."""
        self.idle_since = self.busy_since = None  # closing: not chosen again
        self._evicted = True
        if self._handshake_task is not None:
            self._handshake_task.cancel()
        else:
            self.writer.transport.abort()

    def _refuse(self, answer: bytes | None) -> None:
        """Over a cap: a short answer if the socket takes it at once, then the socket closed.
        A TLS connection is closed before its handshake (``answer`` None): no answer can be
        read without one."""
        transport = self.writer.transport
        try:
            if answer is not None:
                transport.write(answer)
        except (OSError, RuntimeError):
            pass
        transport.close()  # BUSY fits any socket buffer: close() flushes it without waiting

    async def _read_data(self) -> None:
        await super()._read_data()
        # The peer has gone (EOF, reset or timeout): stop the idle timer now, or hypercorn's
        # task group waits for it, keeping the socket open for the whole keep-alive timeout.
        await self.idle_task.stop()

    async def _close(self) -> None:
        self._drop_unsent_later()
        await super()._close()

    async def _initiate_server_close(self) -> None:
        await super()._initiate_server_close()
        self._drop_unsent_later()

    def _drop_unsent_later(self) -> None:
        """hypercorn's close flushes what the connection still holds to send, however long the
        client takes: one that takes nothing (its window shut, its probes still answered) kept
        the connection, its slot under the caps and a stop waiting on it, for good, with less
        than ``_drain``'s 64 KiB held (which trips no stall). It is dropped after
        ``CLOSE_WAIT`` (``limits.send_timeout``, when shorter)."""
        guard = self.guard
        wait = CLOSE_WAIT
        if guard is not None and guard.send_timeout is not None:
            wait = min(wait, guard.send_timeout)
        drop_unsent_after(self.writer.transport, wait)

    #: Bytes written to the transport, and the slow-send window (:meth:`_drain`): the seconds
    #: waited on the client in it so far and the bytes it had taken at its start.
    _written = 0
    _waited = 0.0
    _window_taken = 0

    #: Since when the connection has had no request in progress (hypercorn's idle timer
    #: running); None while one is, or once it is closing (ConnectionGuard._evict_idle).
    idle_since: float | None = None
    #: Since when its request has been in progress (its head read); None when idle.
    busy_since: float | None = None

    def evictable_since(self) -> float | None:
        """Since when the connection could be closed to make room (ConnectionGuard's cap):
        idle, or an HTTP/1.1 request whose body has not all come and whose answer has not
        started (a body trickled, or never sent, held its place for Quart's body timeout,
        ``limits.idle_timeout``, renewed at once); None: a request is being answered, or it is
        closing already."""
        if self._evicted:
            return None
        if self.idle_since is not None:
            return self.idle_since
        if self.busy_since is None:
            return None
        connection = getattr(getattr(self, "protocol", None), "protocol", None)
        connection = getattr(connection, "connection", None)
        if not isinstance(connection, h11.Connection):
            return None
        if connection.their_state is h11.SEND_BODY and connection.our_state is h11.SEND_RESPONSE:
            return self.busy_since
        return None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            now = asyncio.get_running_loop().time()
            self.idle_since, self.busy_since = (now, None) if event.idle else (None, now)
            if not event.idle:  # a request began: later waits are keep_alive_timeout's own
                self._head_by = None
        elif isinstance(event, Closed):
            self.idle_since = self.busy_since = None
        guard = self.guard
        if not isinstance(event, RawData) or guard is None or guard.send_timeout is None:
            await super().protocol_send(event)
            return
        async with self.send_lock:
            if self.writer.transport.is_closing():
                await self._discard()
                return
            try:
                self.writer.write(event.data)
                self._written += len(event.data)
                await self._drain(guard, guard.send_timeout)
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())

    async def _discard(self) -> None:
        """Bytes for a connection aborted (a stall) or closing, dropped unwritten: the app's
        next chunks, sent before it learns its client is gone, and hypercorn's own error
        answer to a connection it closes. Written, each was asyncio's WARNING
        "socket.send() raised exception." (past the fifth). As a write's drain on such a
        transport would, it gives the loop a turn and says the connection closed: the app
        learns it within a few chunks (handed back at once, it sent its whole body into
        nothing, and the access line said ``done``)."""
        await asyncio.sleep(0)
        await self.protocol.handle(Closed())

    def unsent(self) -> int:
        """Bytes written but not yet taken by the client: ours, and the kernel's send queue.

        The kernel's part matters: with a send buffer of megabytes, a socket turns writable
        again only after a third of it has drained, which a slow client may take seconds for.
        """
        sock = self.writer.get_extra_info("socket")
        return self.writer.transport.get_write_buffer_size() + _kernel_queue(sock)

    async def _drain(self, guard: ConnectionGuard, timeout: float) -> None:
        """Wait until the client has taken the bytes, as long as it keeps taking enough.

        Cut: a client that takes no bytes for ``timeout``, and one that, over each ``timeout``
        of the mirror waiting on it (summed across writes: a trickle lets each write's wait
        end), takes less than ``guard.min_send_rate`` bytes a second. Only a wait is judged:
        a client the mirror itself paces (``limits.bandwidth``) or that takes every byte at
        once is never looked at (and costs no system call)."""
        transport = self.writer.transport
        if transport.get_write_buffer_size() == 0:  # all handed to the kernel: nothing to wait
            await self.writer.drain()  # for (it raises if the connection was lost meanwhile)
            return
        loop = asyncio.get_running_loop()
        left = self.unsent()
        progress_at = started = loop.time()
        if self._waited == 0.0:  # a new window of waiting
            self._window_taken = self._written - left
        check = timeout / CHECKS_PER_TIMEOUT
        try:
            while True:
                try:
                    await asyncio.wait_for(self.writer.drain(), check)
                    return
                except TimeoutError:
                    pass
                now, size = loop.time(), self.unsent()
                if size < left:
                    left, progress_at = size, now
                elif now - progress_at >= timeout:
                    guard.stalled += 1
                    self._cut(loop, f"no bytes taken in {timeout}s")
                waited = self._waited + now - started
                if waited >= timeout and guard.min_send_rate > 0:
                    taken = self._written - size - self._window_taken
                    slow = guard.too_slow_over(waited, taken, "taken")
                    if slow is not None:
                        self._cut(loop, slow)
                    self._waited, self._window_taken, started = 0.0, self._written - size, now
        finally:
            self._waited += loop.time() - started

    def _cut(self, loop: asyncio.AbstractEventLoop, why: str) -> None:
        """Drop a client too slow to take its bytes (its slot, its permits freed)."""
        peer = self.writer.get_extra_info("peername")
        log.info("closing stalled %s: %s", peer, why)
        self.writer.transport.abort()
        _trim_soon(loop)
        raise ConnectionAbortedError("the client took too few bytes")


#: Seconds a closing connection has to hand its client what it still holds to send (at most
#: about 64 KiB: ``_drain`` lets writes go on below that), 13 KB/s at least, before it is
#: dropped: well within a stop's wait for its connections.
CLOSE_WAIT = 5.0


def drop_unsent_after(transport: asyncio.BaseTransport, wait: float) -> None:
    """Abort ``transport``, closing, if it still holds bytes to send ``wait`` seconds on. A TLS
    one is aborted then whatever it holds: its close waits for the client's close_notify (up
    to asyncio's 30 s, then an unhandled ``SSL shutdown timed out`` and its traceback), and
    what it still has to send sits in the socket's transport below it, out of its count."""
    if not isinstance(transport, asyncio.WriteTransport):
        return
    try:
        tls = transport.get_extra_info("ssl_object") is not None
    except AttributeError:  # a TLS transport closed already (its client hung up after the
        return  # handshake: a scanner, a probe) has let its protocol go: nothing to drop

    def drop() -> None:
        if tls or transport.get_write_buffer_size():
            transport.abort()

    if tls or transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(wait, drop)


#: Seconds after the last stalled connection was dropped until freed memory is given back.
TRIM_DELAY = 1.0
_trim: asyncio.TimerHandle | None = None


def _trim_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Give the buffers of dropped connections back to the system, once things calm down.

    A stalled download dies holding megabytes of write buffer; glibc keeps such freed memory in
    its heap, so without a trim a few rounds of non-reading clients ratchet the resident size up.
    """
    global _trim
    if _trim is not None:
        _trim.cancel()
    _trim = loop.call_later(TRIM_DELAY, malloc_trim)


def _kernel_queue(sock: object) -> int:
    """Bytes still in the socket's send queue (Linux ``SIOCOUTQ``); 0 if it cannot be read."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return 0
    try:
        answer = fcntl.ioctl(fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return 0
    queued: int = struct.unpack("i", answer)[0]
    return queued


def install() -> None:
    """Make hypercorn's asyncio runner serve connections with :class:`EdgeTCPServer` (after
    ``docxy.access.peer.install``, whose class it extends, if that ran)."""
    known = (TCPServer, PeerCertTCPServer, EdgeTCPServer)
    if getattr(hypercorn_run, "TCPServer", None) not in known:
        raise RuntimeError("hypercorn.asyncio.run no longer names TCPServer: update docxy.edge")
    setattr(hypercorn_run, "TCPServer", EdgeTCPServer)  # noqa: B010 - not a public name


def raise_fd_limit() -> int:
    """Lift the soft limit on open descriptors to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """``wanted`` connections, or fewer if the descriptor limit cannot hold them all."""
    affordable = max(1, (fd_limit - RESERVED_FDS) // FDS_PER_CONNECTION)
    if wanted > affordable:
        log.warning(
            "limits.max_connections %d lowered to %d: the open-file limit is %d "
            "(up to %d descriptors a connection)",
            wanted,
            affordable,
            fd_limit,
            FDS_PER_CONNECTION,
        )
        return affordable
    return wanted
