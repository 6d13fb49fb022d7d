"""Blobs on the pull path: a hit from disk, or a miss through one shared fill; else pass through.

A miss asks the store for the blob with a *fetch* that uses the mirror's own upstream token;
the store makes the temp file, starts that fetch once per digest as a named task, and every
client asking meanwhile (the first one included) follows the growing file. Content the mirror's
token may not read (private repositories) and requests the cache does not answer (a ``Range``
or a ``HEAD`` on a miss) pass through with the client's credentials, uncached, with a reason.
"""

from __future__ import annotations

from functools import partial

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnwritable, FetchFailed, FillAborted
from docxy.cache.fill import Download
from docxy.cache.reader import BlobReader
from docxy.core.errors import UpstreamError
from docxy.core.ranges import parse_range
from docxy.edge.fills import FillPermits, Release, released_after
from docxy.pull.outcome import BlobContent, Outcome, PassThrough, Pull, Reason, Served, Source
from docxy.upstream.tokens import MirrorTokens


class BlobService:
    """``get(pull)`` → an outcome; ``store`` None means the cache is off."""

    def __init__(
        self, store: DiskBlobStore | None, tokens: MirrorTokens, permits: FillPermits | None = None
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.permits = permits or FillPermits()

    async def get(self, pull: Pull) -> Outcome:
        digest = pull.reference.digest
        if self.store is None or digest is None:
            return PassThrough(Reason.NO_CACHE)
        entry = self.store.lookup(digest)
        if entry is not None:
            span = parse_range(pull.range, entry.size)  # RangeNotSatisfiable: 416
            start, stop = span if span is not None else (0, entry.size)
            reader = None if pull.head else self.store.open_read(digest, start, stop)
            if pull.head or reader is not None:  # None: evicted since the lookup, a miss
                return Served(Source.HIT, BlobContent(digest, entry.size, reader, span))
        if pull.head or pull.range:
            return PassThrough(Reason.NOT_CACHEABLE, "HEAD or Range of a blob not cached")
        if self.tokens.refused(pull.upstream, pull.name):
            return PassThrough(Reason.PRIVATE, "the mirror's token was refused lately")
        # Starting a fill needs a permit (429 over the caps); joining one does not.
        release = None if self.store.filling(digest) else self.permits.acquire()
        try:
            stream = await self.store.fill(digest, partial(self._permitted, pull, release))
        except CacheUnwritable as exc:
            if release is not None:
                release()
            return PassThrough(Reason.CACHE_UNWRITABLE, str(exc))
        if isinstance(stream, BlobReader):  # committed while we looked
            if release is not None:
                release()
            return Served(Source.HIT, BlobContent(digest, stream.size, stream))
        try:
            size = await stream.size()
        except FillAborted as exc:
            stream.close()
            if self.tokens.refused(pull.upstream, pull.name):
                return PassThrough(Reason.PRIVATE, str(exc))
            return PassThrough(Reason.UPSTREAM_FAILED, str(exc))
        return Served(Source.MISS, BlobContent(digest, size, stream))

    async def _permitted(self, pull: Pull, release: Release | None) -> Download:
        """:meth:`_fetch`, giving the fill's permit back when the download is closed."""
        if release is None:
            return await self._fetch(pull)
        try:
            download = await self._fetch(pull)
        except BaseException:
            release()
            raise
        return Download(download.size, download.chunks, released_after(download.close, release))

    async def _fetch(self, pull: Pull) -> Download:
        """The upstream half of a fill: a GET with the mirror's own token."""
        try:
            answer = await self.tokens.send(pull.upstream, "GET", pull.name, pull.path)
        except UpstreamError as exc:
            raise FetchFailed(f"upstream: {exc.message}") from exc
        if answer.status_code != 200:
            await answer.aclose()
            if answer.status_code in (401, 403):  # a 404 is about this blob only
                self.tokens.mark_refused(pull.upstream, pull.name)
            raise FetchFailed(f"upstream answered {answer.status_code} to the mirror's token")
        length = answer.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else None
        return Download(size, answer.aiter_bytes(), answer.aclose)
