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

#: zlib's window bits for each coding read here; deflate's are told by its first two bytes
#: (:func:`deflate_wbits`).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": None}
#: The shared client's ``Accept-Encoding``.
ACCEPTED = "gzip, deflate"


class Inflater:
    """One body's ``Content-Encoding`` undone, bounded.

    A gzip body is read to the end of its last member: RFC 1952 (§2.2) lets one hold several,
    one after another, and Go's, curl's and Python's readers read them all (read to its first
    member's end only, the rest was dropped: the right manifest hashed to another digest). A
    deflate body is one stream: bytes after its end are corrupt, not content."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._wbits = WBITS[coding]
        self._zlib = None if self._wbits is None else zlib.decompressobj(self._wbits)
        self._head = b""  # deflate's first bytes, until there are two to tell its form by
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
        if self._zlib is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._zlib = zlib.decompressobj(deflate_wbits(data))
        while data and room >= 0:
            if self._zlib.eof:  # more after a gzip member's end: the next member
                self._next_member()
            piece = self._inflate(data, room + 1)  # one byte past the room tells "too large"
            room -= len(piece)  # (the room is the whole body's, all members')
            yield piece
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail

    def end(self, room: int) -> bytes:
        """What the coding still holds once the body ended (at most ``room`` + 1 bytes)."""
        piece = b"" if self._zlib is None else self._inflate(b"", room + 1)
        if self._fed and (self._zlib is None or not self._zlib.eof):  # (an empty body is empty)
            raise UpstreamUnavailable(f"the upstream's {self.coding} answer broke off")
        return piece

    def _next_member(self) -> None:
        """A new decoder for what follows a gzip member; a deflate body has nothing after."""
        if self._wbits is None:
            raise UpstreamUnavailable(
                f"the upstream's {self.coding} answer is corrupt (data after its end)"
            )
        self._zlib = zlib.decompressobj(self._wbits)

    def _inflate(self, data: bytes, most: int) -> bytes:
        assert self._zlib is not None
        try:
            return self._zlib.decompress(data, most)
        except zlib.error as exc:
            raise UpstreamUnavailable(f"the upstream's {self.coding} answer is corrupt") from exc


def deflate_wbits(head: bytes) -> int:
    """The window bits for a ``deflate`` body by its first two bytes: zlib's wrapper, as the
    coding is defined (or gzip's, which some servers send), else raw deflate, which others
    send (as httpx and browsers, read either)."""
    zlib_header = head[0] & 0x0F == 8 and int.from_bytes(head[:2]) % 31 == 0
    return 32 + zlib.MAX_WBITS if zlib_header or head[:2] == b"\x1f\x8b" else -zlib.MAX_WBITS
