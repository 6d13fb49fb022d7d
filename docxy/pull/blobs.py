"""Blobs on the pull path: a hit from disk, or a miss through one shared fill; else pass through.

A miss asks the store for the blob with a *fetch* that uses the mirror's own upstream token;
the store makes the temp file, starts that fetch once per digest as a named task, and every
client asking meanwhile (the first one included) follows the growing file. Content the mirror's
token may not read (private repositories) and requests the cache does not answer (a ``Range``
or a ``HEAD`` on a miss) pass through with the client's credentials, uncached, with a reason.
"""

from __future__ import annotations

from functools import partial
from typing import NoReturn

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import CacheUnwritable, FetchFailed, FillAborted
from docxy.cache.fill import Download
from docxy.cache.reader import BlobReader
from docxy.core.errors import UpstreamError
from docxy.core.ranges import parse_range
from docxy.pull.outcome import BlobContent, Outcome, PassThrough, Pull, Reason, Served, Source
from docxy.upstream import direct
from docxy.upstream.tokens import MirrorTokens


class BlobService:
    """``get(pull)`` → an outcome; ``store`` None means the cache is off."""

    def __init__(self, store: DiskBlobStore | None, tokens: MirrorTokens) -> None:
        self.store = store
        self.tokens = tokens

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
        try:
            stream = await self.store.fill(digest, partial(self._fetch, pull))
        except CacheUnwritable as exc:
            return PassThrough(Reason.CACHE_UNWRITABLE, str(exc))
        if isinstance(stream, BlobReader):  # committed while we looked
            return Served(Source.HIT, BlobContent(digest, stream.size, stream))
        try:
            size = await stream.size()
        except FillAborted as exc:
            stream.close()
            if self.tokens.refused(pull.upstream, pull.name):
                return PassThrough(Reason.PRIVATE, str(exc))
            return PassThrough(Reason.UPSTREAM_FAILED, str(exc))
        return Served(Source.MISS, BlobContent(digest, size, stream))

    async def _fetch(self, pull: Pull) -> Download:
        """The upstream half of a fill: a GET with the mirror's own token.

        Made directly when the client allows it (its body then read by a worker thread, see
        :mod:`docxy.upstream.direct`); through httpx otherwise, or to retry a 401 to a token the
        mirror held (it expired early upstream) with a fresh one.
        """
        if self.tokens.client.direct is not None:
            download = await self._fetch_direct(pull)
            if download is not None:
                return download
        return await self._fetch_httpx(pull)

    async def _fetch_direct(self, pull: Pull) -> Download | None:
        try:
            headers = await self.tokens.headers(pull.upstream, pull.name)
            url = pull.upstream.url(pull.path)
            answer = await direct.open_get(self.tokens.client, pull.upstream, url, headers)
        except UpstreamError as exc:
            raise FetchFailed(f"upstream: {exc.message}") from exc
        if answer.status == 401 and self.tokens.holds(pull.upstream, pull.name):
            answer.close()
            self.tokens.forget(pull.upstream, pull.name)
            return None
        if answer.status != 200:
            answer.close()
            self._refused(pull, answer.status)
        length = answer.header("content-length")
        size = int(length) if length is not None and length.isdigit() else None

        async def close() -> None:
            answer.close()

        return Download(size, None, close, body=answer.body)

    def _refused(self, pull: Pull, status: int) -> NoReturn:
        if status in (401, 403):  # a 404 is about this blob only
            self.tokens.mark_refused(pull.upstream, pull.name)
        raise FetchFailed(f"upstream answered {status} to the mirror's token")

    async def _fetch_httpx(self, pull: Pull) -> Download:
        try:
            answer = await self.tokens.send(pull.upstream, "GET", pull.name, pull.path)
        except UpstreamError as exc:
            raise FetchFailed(f"upstream: {exc.message}") from exc
        if answer.status_code != 200:
            await answer.aclose()
            self._refused(pull, answer.status_code)
        length = answer.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else None
        return Download(size, answer.aiter_bytes(), answer.aclose)
