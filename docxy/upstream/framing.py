"""How httpx's path (h11) frames an upstream's answer, where it differs from the direct path's.

An answer framed twice, by ``Transfer-Encoding`` and ``Content-Length``:

h11 reads such an answer by its chunks (RFC 9112 6.3: the ``Transfer-Encoding`` overrides the
length), as the direct path's ``http.client`` does. RFC 9112 6.3 also says such a message
ought to be handled as an error, for the reason that its framing may have been tampered with
on the way: whatever framed it there (a proxy reading by the length) may have taken another
body from the connection, or left one in it. It does not require a client to close the
connection (its MUST-close, 6.1, is a server's, after such a request); closing it is the
mirror's defensive choice, for that reason. h11 keeps the connection, and httpcore gave it
back to the pool for the next request (a fill's ``Range`` rest, a manifest, a token), which
then read whatever that was. The direct path closes it (:mod:`docxy.upstream.direct`); here
the pooled connection is closed once its answer is.

An answer in a transfer coding but ``chunked`` (``gzip, chunked``, two such headers, a lone
``identity``): h11 refuses its headers with a ``RemoteProtocolError``, which is also what a
connection closed before any answer raises. :func:`unread_coding` tells the two apart, so
that the upstream is recorded as having answered badly (as the direct path records it:
:class:`~docxy.upstream.direct.UnreadAnswer`), not as unreachable, and is not asked again.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import httpcore
import httpx


def framed_twice(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's headers say both ``Transfer-Encoding`` and ``Content-Length``."""
    names = {name.lower() for name, _ in headers}
    return b"transfer-encoding" in names and b"content-length" in names


class ClosedAfter:
    """An answer's body whose connection is closed once the answer is: never kept for
    another request, however far the body was read."""

    def __init__(
        self, stream: AsyncIterable[bytes], connection: httpcore.AsyncConnectionInterface
    ) -> None:
        self._stream = stream
        self._connection = connection

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        # The answer first (a body read to its end leaves the connection idle), then the
        # connection: closed, the pool drops it instead of handing it to the next request.
        # Nothing in between yields to the event loop, so no other request takes it idle.
        try:
            closing = getattr(self._stream, "aclose", None)
            if closing is not None:
                await closing()
        finally:
            await self._connection.aclose()


def closed_after_if_framed_twice(
    response: httpcore.Response, connection: httpcore.AsyncConnectionInterface
) -> httpcore.Response:
    """``response`` (from ``connection``), its connection to be closed with it when it is
    framed twice (:func:`framed_twice`); else as it is."""
    stream = response.stream
    if framed_twice(response.headers) and isinstance(stream, AsyncIterable):  # async: httpx's
        response.stream = ClosedAfter(stream, connection)
    return response


def unread_coding(exc: BaseException) -> str | None:
    """h11's reason when ``exc`` is its refusal of an answer's ``Transfer-Encoding`` (None:
    any other error). Its words are the only sign: ``Only Transfer-Encoding: chunked is
    supported``, ``multiple Transfer-Encoding headers``."""
    if not isinstance(exc, httpx.RemoteProtocolError):
        return None
    said = str(exc)
    return said if "transfer-encoding" in said.lower() else None
