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
from h2.errors import ErrorCodes
from hypercorn.events import Closed, Event
from hypercorn.protocol.h2 import H2Protocol


class H2cRefused(H2Protocol):
    """hypercorn's HTTP/2 connection that only says "use HTTP/1.1" and closes."""

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
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


def install() -> None:
    """Make hypercorn refuse HTTP/2 on every connection of this process (it names the class
    it switches to in ``hypercorn.protocol``, with no setting for it)."""
    if getattr(hypercorn.protocol, "H2Protocol", None) not in (H2Protocol, H2cRefused):
        raise RuntimeError("hypercorn.protocol no longer names H2Protocol: update docxy.edge")
    setattr(hypercorn.protocol, "H2Protocol", H2cRefused)  # noqa: B010 - not a public name
