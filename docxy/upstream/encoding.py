"""A small upstream body's content coding, undone with a bound on what it inflates to.

httpx decodes each read whole: a read of 1 MiB of gzip can inflate to a gigabyte before a
caller's size check sees it. :func:`read_small <docxy.upstream.client.read_small>` reads the
raw bytes and inflates them here, never more than the room it has left. The shared client
asks only for the codings this module reads (:data:`ACCEPTED`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from docxy.core.errors import UpstreamUnavailable

#: zlib's window bits for each coding read here: gzip's header, or deflate's zlib (or gzip).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}
#: The shared client's ``Accept-Encoding``.
ACCEPTED = "gzip, deflate"


class Inflater:
    """One body's ``Content-Encoding`` undone, bounded."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._zlib = zlib.decompressobj(WBITS[coding])
        self._fed = False

    @classmethod
    def of(cls, content_encoding: str | None) -> Inflater | None:
        """The inflater for a ``Content-Encoding`` value; None for none (or ``identity``);
        :class:`UpstreamUnavailable` for a coding (or several) this module does not read."""
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if not codings:
            return None
        if len(codings) > 1 or codings[0] not in WBITS:
            raise UpstreamUnavailable(
                f"the upstream's answer is encoded as {', '.join(codings)}, which the mirror "
                "does not read"
            )
        return cls(codings[0])

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        """``data`` inflated, in pieces, stopping once more than ``room`` bytes came out."""
        self._fed = self._fed or bool(data)
        while data and room >= 0:
            piece = self._inflate(data, room + 1)  # one byte past the room tells "too large"
            room -= len(piece)
            yield piece
            data = self._zlib.unconsumed_tail

    def end(self, room: int) -> bytes:
        """What the coding still holds once the body ended (at most ``room`` + 1 bytes)."""
        piece = self._inflate(b"", room + 1)
        if self._fed and not self._zlib.eof:  # (an empty body is empty, whatever its coding)
            raise UpstreamUnavailable(f"the upstream's {self.coding} answer broke off")
        return piece

    def _inflate(self, data: bytes, most: int) -> bytes:
        try:
            return self._zlib.decompress(data, most)
        except zlib.error as exc:
            raise UpstreamUnavailable(f"the upstream's {self.coding} answer is corrupt") from exc
