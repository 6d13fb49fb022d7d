"""HTTP/2 over plain TCP (h2c) is refused unless ``limits.h2_max_streams`` allows it.

hypercorn switches a plain connection to HTTP/2 on the client's word: the HTTP/2 preface
(prior knowledge) or ``Upgrade: h2c``. Docker, containerd and skopeo never ask (they speak
HTTP/1.1 to a mirror; the TLS listener offers only ``http/1.1``), but anyone else may, and
hypercorn 0.18 does not hold a stream's response back for a client that stops reading (keeps
the stream's flow-control window shut): the body piles up in memory (measured: one stalled
stream of a cached 32 MiB blob +39 MiB of RSS, eight +280 MiB; a hundred streams of a 256 MiB
blob took the process past 22 GiB), and the stream is held for good. Over HTTP/1.1 a client
that stops reading costs nothing (``docxy.edge.connections``). When h2c is allowed,
:class:`H2cChecked` holds such a body back and resets such a stream.

:func:`install` makes hypercorn answer both ways in with ``GOAWAY`` and the code HTTP/2
reserves for this, ``HTTP_1_1_REQUIRED``, then close the connection: nothing reaches the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.events
import hypercorn.protocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, ProtocolError
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h2 import BUFFER_LOW_WATER, H2Protocol, StreamBuffer
from hypercorn.protocol.http_stream import ASGIHTTPState
from hypercorn.typing import AppWrapper, ASGIReceiveCallable, ASGISendCallable, Scope
from hypercorn.typing import Event as IOEvent
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import GoAwayFrame

from docxy.edge.connections import CHECKS_PER_TIMEOUT, ConnectionGuard

log = logging.getLogger(__name__)

#: Streams one h2c connection may have refused (``REFUSED_STREAM``: every request it may run
#: at once still running) within :data:`REFUSAL_WINDOW` seconds before it is told ``GOAWAY``
#: (``ENHANCE_YOUR_CALM``): a client that opens and resets streams as fast as it can ("rapid
#: reset") makes thousands a second; a reverse proxy whose own clients cancel a pull now and
#: then, a few an hour. After ``GOAWAY``, a client that opens as many again is closed at once.
MAX_REFUSED = 100
#: Seconds over which :data:`MAX_REFUSED` is counted (the refusals of the last so many).
REFUSAL_WINDOW = 10.0
#: The clock refusals are timed by (seconds; the tests move their own).
clock: Callable[[], float] = time.monotonic
#: A stream whose answer has been sent (hypercorn then forgets it, its request ending).
DONE = ASGIHTTPState.CLOSED

#: What h2 raises for an ``HTTP2-Settings`` header it cannot take: not base64, not a SETTINGS
#: frame, a setting out of range. Out of hypercorn's connection task, each was an ERROR
#: traceback in the log, one per request anybody sent.
UNREADABLE_SETTINGS = (ValueError, H2Error, HyperframeError)


class HeldBuffer(StreamBuffer):
    """A stream's buffer that lets the app write again only once it is nearly sent.

    hypercorn's wakes the app's pending write whenever less than 16 KiB is taken from it,
    however much it still holds: a client opening its window a byte at a time let the app
    write a chunk per byte (64 MiB for 1100 bytes taken)."""

    async def pop(self, max_length: int) -> bytes:
        length = max(0, min(len(self.buffer), max_length))
        if len(self.buffer) - length < BUFFER_LOW_WATER:
            return await super().pop(max_length)
        data = bytes(self.buffer[:length])  # much left after it: the writer stays paused
        del self.buffer[:length]
        return data


class HeldBuffers(dict[int, StreamBuffer]):
    """A connection's stream buffers, each a :class:`HeldBuffer` whatever hypercorn makes."""

    def __init__(self, event_class: type[IOEvent]) -> None:
        super().__init__()
        self.event_class = event_class

    def __setitem__(self, stream_id: int, buffer: StreamBuffer) -> None:
        if not isinstance(buffer, HeldBuffer):  # a new stream's, empty
            buffer = HeldBuffer(self.event_class)
        super().__setitem__(stream_id, buffer)


@dataclass(slots=True)
class _ShutWindow:
    """A stream's time waiting on its client's flow-control window, judged as
    ``docxy.edge.connections`` judges a socket's waits: since when it has been shut (None:
    open), the seconds waited in the current judging window before that, the stream's bytes
    sent, and those sent at the judging window's start."""

    shut_since: float | None = None
    waited: float = 0.0
    sent: int = 0
    window_sent: int = 0
    timer: asyncio.TimerHandle | None = None


class _CountedApp:
    """The app as one connection's streams call it: the streams whose request it is running
    (a stream the client has reset still runs until its request notices, which may be long)."""

    def __init__(self, app: AppWrapper, ended: Callable[[], None]) -> None:
        self.app = app
        self.running: set[object] = set()
        self._ended = ended

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        stream = getattr(send, "__self__", None) or object()  # hypercorn's stream.app_send
        self.running.add(stream)
        try:
            await self.app(scope, receive, send, sync_spawn, call_soon)
        finally:
            self.running.discard(stream)
            self._ended()


class H2cChecked(H2Protocol):
    """hypercorn's HTTP/2 connection (``limits.h2_max_streams`` > 0), which closes at once on
    an ``Upgrade: h2c`` whose ``HTTP2-Settings`` cannot be read, and holds a client to
    ``limits.send_timeout`` and ``limits.send_min_rate`` per stream.

    A client that never opens a stream's flow-control window (no ``WINDOW_UPDATE``) has taken
    every byte it let the server send: nothing waits on its socket, so the edge's stall check
    never looks, and the idle timer does not run while a stream is open. Such a stream was
    held for good, and with it its request (a pass-through's upstream permit under
    ``limits.fills_total``). Worse, hypercorn's send task, finding the window shut, took
    nothing from the stream's buffer and still woke the app's pending write: the app wrote on,
    and the whole body went into memory (and so did it for a window opened a byte at a time:
    :class:`HeldBuffer`). Here a stream whose window is shut keeps the app's writes waiting
    (a few chunks at most are held), and one whose window stays shut for
    ``limits.send_timeout``, or that opens it by less than ``limits.send_min_rate`` bytes a
    second over each ``send_timeout`` of waiting, is reset (``RST_STREAM``, ``CANCEL``): its
    request ends as if the client had reset it, the connection goes on.

    Its requests are counted until each has ended, not until its stream has: a stream the
    client resets leaves h2's count of open streams (``limits.h2_max_streams``) at once, and
    its request ran on until it noticed. A client opening and resetting streams as fast as it
    could ("rapid reset", CVE-2023-44487) started a request per stream, a thousand at once (a
    real mirror did not answer ``/v2/`` for 11 s; with more, its upstream pool was taken).
    A stream beyond ``limits.h2_max_streams`` requests still running is refused
    (``REFUSED_STREAM``: the client may retry it), and after more than :data:`MAX_REFUSED`
    refusals within :data:`REFUSAL_WINDOW` seconds the client is told ``GOAWAY``
    (``ENHANCE_YOUR_CALM``, naming the last stream started): every stream it opens after is
    refused, the streams in flight finish, and the connection is closed once none is left (at
    once if the client opens :data:`MAX_REFUSED` more). Counted over the connection's life, a
    reverse proxy's rare refusals (a stream its client reset still counts until its request
    notices) closed its long-lived connection at the 100th, hours apart, and every download
    on it with it.
    """

    _waits: dict[int, _ShutWindow] | None = None
    #: the streams refused in the events being handled (what else comes on them: dropped)
    _refused: set[int] | None = None
    #: when each of the refusals of the last :data:`REFUSAL_WINDOW` seconds was made
    _refusals: deque[float] | None = None
    #: the last stream whose request was started (the one ``GOAWAY`` names)
    _last_started = 0
    #: ``GOAWAY`` sent: no stream is started, and the connection closes when none is left
    _going_away = False
    _goaway_sent = False
    #: streams refused after ``GOAWAY``; past :data:`MAX_REFUSED`: closed at once
    _refused_after = 0
    #: closing: h2's ``GOAWAY`` queued, the connection closed once it is sent
    _closing = False
    _close_sent = False
    #: the streams reset (by the client, or for a shut window) whose request still runs
    _orphans: set[object] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = HeldBuffers(self.context.event_class)
        self.app = self._counted = _CountedApp(self.app, self._request_ended)

    def _request_ended(self) -> None:
        if self._idle_now():
            # A reset stream's request ending leaves the connection idle: hypercorn restarts
            # the idle timer only when a stream it still knows closes, so a client that reset
            # its last stream held the connection for good (limits.idle_timeout never came).
            self.task_group.spawn(self._idle_again)

    def _idle_now(self) -> bool:
        return not self._counted.running and not self.streams and not self.closed

    def _in_use(self) -> int:
        """Streams that count against ``limits.h2_max_streams``: those open, and those reset
        whose request still runs."""
        if self._orphans:
            self._orphans &= self._counted.running
        return len(self.streams) + len(self._orphans or ())

    async def _idle_again(self) -> None:
        if self._idle_now():  # still: no stream has started meanwhile
            await self.send(Updated(idle=True))

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        """hypercorn's, but a new stream beyond ``limits.h2_max_streams`` requests still
        running is refused, and what else its client sends on it is dropped."""
        cap = max(self.config.h2_max_concurrent_streams, 1)
        starting = 0
        # h2 itself drops what comes on a stream it has reset once it has sent the reset: the
        # refused streams need dropping here only in this read's events (kept over the
        # connection's life, with refusals no longer capped at MAX_REFUSED, they piled up)
        self._refused = None
        kept: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if self._going_away or self._in_use() + starting >= cap:
                    if not self._refuse(event.stream_id):
                        break  # closing: nothing more is read from this client
                    continue
                starting += 1
                self._last_started = event.stream_id
            elif isinstance(event, (h2.events.DataReceived, h2.events.StreamEnded)):
                if self._refused is not None and event.stream_id in self._refused:
                    if isinstance(event, h2.events.DataReceived):
                        self.connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    continue
            kept.append(event)
        await super()._handle_events(kept)  # (flushes the refusals, before any GOAWAY)
        if self._closing:
            await self._close_now()
        elif self._going_away:
            if not self._goaway_sent:
                self._goaway_sent = True
                await self._send_goaway()
            await self._close_if_done()

    async def _send_goaway(self) -> None:
        """``GOAWAY`` with the connection left open for the streams in flight. h2's own
        ``close_connection`` closes its side at once: every later frame on a stream in flight
        (their DATA, the client's WINDOW_UPDATE) is a protocol error, and hypercorn drops the
        stream. So the frame is written here, after what h2 has queued, and h2's comes when
        the last stream has ended (a second ``GOAWAY`` naming the same stream is allowed)."""
        await self._flush()
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=self._last_started,
            error_code=ErrorCodes.ENHANCE_YOUR_CALM,
        )
        await self.send(RawData(data=frame.serialize()))

    async def _close_if_done(self) -> None:
        """After ``GOAWAY``: close the connection once no stream is open or has data left to
        send (a stream reset whose request still runs sends nothing: not waited for)."""
        if not self._going_away or self._closing or self.closed:
            return
        if self.streams or self.stream_buffers:
            return
        self._closing = True
        self.connection.close_connection(
            error_code=ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._last_started
        )
        await self._close_now()

    async def _close_now(self) -> None:
        """Send what h2 has queued (its ``GOAWAY``), then close the connection (once)."""
        if self._close_sent or self.closed:
            return
        self._close_sent = True
        await self._flush()
        await self.send(Closed())

    def _refuse(self, stream_id: int) -> bool:
        """Refuse a new stream; False once the client, told ``GOAWAY``, has opened
        :data:`MAX_REFUSED` more (the connection is closed at once)."""
        if self._going_away:
            self._refused_after += 1
            if self._refused_after > MAX_REFUSED:
                log.info(
                    "closing h2c connection of %s at once: %d streams opened after GOAWAY",
                    self.client,
                    self._refused_after,
                )
                self._closing = True
                self.connection.close_connection(
                    error_code=ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._last_started
                )
                return False
        else:
            now = clock()
            if self._refusals is None:
                self._refusals = deque()
            self._refusals.append(now)
            while self._refusals[0] <= now - REFUSAL_WINDOW:
                self._refusals.popleft()
            if len(self._refusals) > MAX_REFUSED:
                log.info(
                    "GOAWAY to h2c connection of %s: %d streams refused within %gs;"
                    " closing once the streams in flight have ended",
                    self.client,
                    len(self._refusals),
                    REFUSAL_WINDOW,
                )
                self._going_away = True  # sent once this read's events are handled
        if self._refused is None:
            self._refused = set()
        self._refused.add(stream_id)
        try:
            self.connection.reset_stream(stream_id, error_code=ErrorCodes.REFUSED_STREAM)
        except ProtocolError:  # the client reset it already
            pass
        return True

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        if settings is not None and not readable_settings(settings):
            await self.send(Closed())
            return
        await super().initiate(headers, settings)
        if self.idle:  # the preface and no request yet
            # hypercorn's HTTP/1.1 side stopped the connection's idle timer when it read the
            # preface as a request, and only a stream's end restarts it: a connection that
            # sent the preface alone stayed open for good (limits.idle_timeout never came),
            # and at a stop held it (docxy.edge.connections.ConnectionGuard.stop).
            await self.send(Updated(idle=True))

    @property
    def _guard(self) -> ConnectionGuard | None:
        guard = getattr(self.config, "edge", None)
        if isinstance(guard, ConnectionGuard) and guard.send_timeout is not None:
            return guard
        return None

    def _window(self, stream_id: int) -> int:
        """What the client lets be sent on the stream now (in one frame at most); raises
        h2's errors for a stream or connection closed."""
        return min(
            self.connection.local_flow_control_window(stream_id),
            self.connection.max_outbound_frame_size,
        )

    async def _send_data(self, stream_id: int) -> None:
        buffer = self.stream_buffers.get(stream_id)
        pending = len(buffer.buffer) if buffer is not None else 0
        try:
            window = self._window(stream_id) if pending else 0
        except (ProtocolError, KeyError):  # closed: hypercorn's own send drops the stream
            window = 1
        if pending and window <= 0:
            # Shut: take nothing, wake nothing (hypercorn's own pop of 0 bytes would release
            # the app's write), until the client opens the window (WindowUpdated unblocks).
            self.priority.block(stream_id)
            self._shut(stream_id)
            return
        await super()._send_data(stream_id)
        if pending and self._waits is not None and stream_id in self._waits:
            self._opened(stream_id, min(pending, window))
        if self._going_away and stream_id not in self.stream_buffers:
            await self._close_if_done()  # its last byte sent, or dropped

    def _shut(self, stream_id: int) -> None:
        guard = self._guard
        if guard is None or guard.send_timeout is None:  # (narrowed for the type checker)
            return
        if self._waits is None:
            self._waits = {}
        wait = self._waits.setdefault(stream_id, _ShutWindow())
        loop = asyncio.get_running_loop()
        if wait.shut_since is None:
            wait.shut_since = loop.time()
        if wait.timer is None:
            check = guard.send_timeout / CHECKS_PER_TIMEOUT
            wait.timer = loop.call_later(check, self._check, stream_id)

    def _opened(self, stream_id: int, sent: int) -> None:
        assert self._waits is not None
        wait = self._waits[stream_id]
        wait.sent += sent
        if wait.shut_since is not None:
            wait.waited += asyncio.get_running_loop().time() - wait.shut_since
            wait.shut_since = None

    def _check(self, stream_id: int) -> None:
        """A few times per ``send_timeout`` while a stream's window is shut: reset it if the
        client has let nothing be sent for ``send_timeout``, or too little over one."""
        guard = self._guard
        wait = self._waits.get(stream_id) if self._waits is not None else None
        if wait is None or guard is None or guard.send_timeout is None or self.closed:
            return
        wait.timer = None
        timeout = guard.send_timeout
        now = asyncio.get_running_loop().time()
        shut = 0.0 if wait.shut_since is None else now - wait.shut_since
        if shut >= timeout:
            guard.stalled += 1
            self._reset(stream_id, f"its window shut for {timeout}s")
            return
        waited = wait.waited + shut
        if waited >= timeout and guard.min_send_rate > 0:
            slow = guard.too_slow_over(
                waited, wait.sent - wait.window_sent, "let through its window"
            )
            if slow is not None:
                self._reset(stream_id, slow)
                return
            wait.waited, wait.window_sent = 0.0, wait.sent
            if wait.shut_since is not None:
                wait.shut_since = now
        if wait.shut_since is not None:
            self._shut(stream_id)  # still waiting: checked again

    def _reset(self, stream_id: int, why: str) -> None:
        log.info("closing stalled stream %d of %s: %s", stream_id, self.client, why)
        self.task_group.spawn(self._reset_stream, stream_id)

    async def _reset_stream(self, stream_id: int) -> None:
        if self.closed or stream_id not in self.stream_buffers:
            return
        try:
            self.connection.reset_stream(stream_id, error_code=ErrorCodes.CANCEL)
        except ProtocolError:  # closed meanwhile
            return
        await self._flush()
        # As after the client's own RST_STREAM: the request learns its client is gone, and the
        # send task, woken, drops the stream's buffer (and the app's pending write with it).
        await self._close_stream(stream_id)
        await self._window_updated(stream_id)

    async def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream in self._counted.running and getattr(stream, "state", None) != DONE:
            # reset (by its client, or for a shut window) before its answer was all sent: its
            # request runs on until it notices, and counts till then
            if self._orphans is None:
                self._orphans = set()
            self._orphans.add(stream)
        if self._waits is not None:
            wait = self._waits.pop(stream_id, None)
            if wait is not None and wait.timer is not None:
                wait.timer.cancel()
        await super()._close_stream(stream_id)
        if self._going_away:
            await self._close_if_done()


class H2cRefused(H2Protocol):
    """hypercorn's HTTP/2 connection that only says "use HTTP/1.1" and closes."""

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        if settings is not None and not readable_settings(settings):
            await self.send(Closed())  # nothing to refuse in: the client spoke no HTTP/2
            return
        if settings is not None:  # Upgrade: h2c (hypercorn has answered 101 already)
            self.connection.initiate_upgrade_connection(settings)
        else:  # the HTTP/2 preface
            self.connection.initiate_connection()
        self.connection.close_connection(error_code=ErrorCodes.HTTP_1_1_REQUIRED)
        await self._flush()
        await self.send(Closed())

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            self.closed = True  # nothing else was started: no streams, no send task


def readable_settings(settings: bytes) -> bool:
    """Whether h2 takes ``settings`` (an ``HTTP2-Settings`` header) for a new connection."""
    try:
        H2Connection(H2Configuration(client_side=False)).initiate_upgrade_connection(settings)
    except UNREADABLE_SETTINGS:
        return False
    return True


def install(refuse: bool = True) -> None:
    """Make hypercorn refuse HTTP/2 on every connection of this process (it names the class
    it switches to in ``hypercorn.protocol``, with no setting for it); ``refuse=False``: allow
    it, closing a connection whose upgrade's settings cannot be read."""
    ours = (H2Protocol, H2cRefused, H2cChecked)
    if getattr(hypercorn.protocol, "H2Protocol", None) not in ours:
        raise RuntimeError("hypercorn.protocol no longer names H2Protocol: update docxy.edge")
    chosen = H2cRefused if refuse else H2cChecked
    setattr(hypercorn.protocol, "H2Protocol", chosen)  # noqa: B010 - not a public name
