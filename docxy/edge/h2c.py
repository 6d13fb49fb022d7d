"""HTTP/2 over plain TCP (h2c) is refused unless ``limits.h2_max_streams`` allows it.

hypercorn switches a plain connection to HTTP/2 on the client's word: the HTTP/2 preface
(prior knowledge) or ``Upgrade: h2c``. Docker, containerd and skopeo never ask (they speak
HTTP/1.1 to a mirror; the TLS listener offers only ``http/1.1``), but anyone else may, and
hypercorn 0.18 does not hold a stream's response back for a client that stops reading: the
body piles up in memory (measured: one stalled stream of a cached 32 MiB blob +39 MiB of RSS,
eight +280 MiB; a hundred streams of a 256 MiB blob took the process past 22 GiB). Over
HTTP/1.1 a client that stops reading costs nothing (``docxy.edge.connections``).

:func:`install` makes hypercorn answer both ways in with ``GOAWAY`` and the code HTTP/2
reserves for this, ``HTTP_1_1_REQUIRED``, then close the connection: nothing reaches the app.
"""

from __future__ import annotations

import hypercorn.protocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from hypercorn.events import Closed, Event, Updated
from hypercorn.protocol.h2 import H2Protocol
from hyperframe.exceptions import HyperframeError

#: What h2 raises for an ``HTTP2-Settings`` header it cannot take: not base64, not a SETTINGS
#: frame, a setting out of range. Out of hypercorn's connection task, each was an ERROR
#: traceback in the log, one per request anybody sent.
UNREADABLE_SETTINGS = (ValueError, H2Error, HyperframeError)


class H2cChecked(H2Protocol):
    """hypercorn's HTTP/2 connection (``limits.h2_max_streams`` > 0), which closes at once on
    an ``Upgrade: h2c`` whose ``HTTP2-Settings`` cannot be read."""

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
