"""Exceptions raised by the cache.

    CacheError
    ├── VerifyError                   a fill's bytes do not match what was promised
    │   ├── SizeMismatch
    │   └── DigestMismatch
    ├── FillAborted                   a follower's writer gave up (cut upstream, bad bytes, disk)
    │   ├── NoRoom                    no room under cache.max_size for it: pass through
    │   └── CorruptDownload           its download was not the blob (length or digest)
    ├── FetchFailed                   the upstream half of a fill could not start a download
    │   ├── FetchRefused              401, 403 or another 4xx of the upstream's: not the mirror's
    │   └── OtherLength               a rest's answer says the blob has another length
    ├── CacheUnwritable               no temp file can be made (disk full...): pass through
    ├── CacheUnreadable               a cached blob cannot be opened (no descriptor left, EIO)
    ├── FillClosed                    a writer was used after commit/abort
    └── BlobInUse                     remove() of a blob that is being read

``FillAborted`` and ``FetchFailed`` share :class:`UpstreamCaused` (the upstream's failure that
caused them, if one did, and which upstream's). The routes translate these at the boundary:
``FillAborted`` and ``VerifyError`` mean the client's stream must be cut (never a short 200).
A malformed digest is ``docxy.core.errors.DigestInvalid``.
"""

from __future__ import annotations

from docxy.core.errors import UpstreamError


class CacheError(Exception):
    """Base class of every cache error."""


class VerifyError(CacheError):
    """The bytes written do not match the expected length or digest."""


class SizeMismatch(VerifyError):
    """Fewer or more bytes than announced."""


class DigestMismatch(VerifyError):
    """The bytes hash to a different digest."""


class UpstreamCaused(CacheError):
    """A cache error an upstream's failure may have caused: ``upstream``, that failure (when
    it was one), and ``source``, which upstream it was (its host: a fill serves the clients of
    every upstream)."""

    def __init__(
        self, message: str, upstream: UpstreamError | None = None, source: str = ""
    ) -> None:
        super().__init__(message)
        self.upstream, self.source = upstream, source


class FillAborted(UpstreamCaused):
    """The writer of a blob a follower was streaming aborted; the follower's client must be cut
    (``upstream``: the failure that stopped its fetch before a byte, if it was one)."""


class NoRoom(FillAborted):
    """The blob cannot be kept under ``cache.max_size`` (larger than the cache, or the rest is in
    use and cannot be evicted): nothing is written past the cap; the caller passes it through."""


class CorruptDownload(FillAborted):
    """The fill's download ended, and its bytes are not the blob: another length than it
    said, or another digest. Before the client's first byte it is answered ``502`` (a
    pass-through would relay the same bytes as a whole ``200``); after, the client is cut."""


class FetchFailed(UpstreamCaused):
    """The fetch a fill was given could not start (refused, not found, unreachable)."""


class FetchUnanswered(FetchFailed):
    """The upstream could not be asked (unreachable, timed out, a 429 or 5xx): its failure
    says nothing of the blob."""


class FetchRefused(FetchFailed):
    """The upstream refused the mirror's token (401, 403) or said no of the blob (a 404, a
    400...): no fault of the mirror's. For a refusal the client's own request, passed through,
    gets the upstream's answer; the registry's word on the blob is ``upstream`` (an
    :class:`~docxy.core.errors.UpstreamAnswered`), which the fill's clients are answered with."""


class OtherLength(FetchFailed):
    """The upstream's answer to a rest (a ``Range`` GET) says the blob has ``length`` bytes,
    not the length the rest was asked for: whoever said that one (a shared object's
    ``Content-Length``) was wrong about the blob. ``length`` None: a ``416`` that said no
    length, from an offset short of the one asked for (the blob ends before it)."""

    def __init__(self, message: str, length: int | None) -> None:
        super().__init__(message)
        self.length = length


class CacheUnwritable(CacheError):
    """The cache cannot take a new blob now; the caller serves it uncached, fetching nothing."""


class CacheUnreadable(CacheError):
    """A cached blob's file cannot be opened now (no descriptor left, a failing disk); the
    caller serves it uncached (passed through), and the blob stays cached."""


class FillClosed(CacheError):
    """The writer was already committed or aborted."""


class BlobInUse(CacheError):
    """The blob is pinned by a reader or follower and cannot be removed now."""
