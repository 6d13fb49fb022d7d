"""Blobs through the cache: hits from disk, one upstream fill per digest, followers stream it.

A miss starts one *fill*, a named background task that fetches the blob with the mirror's own
upstream token and writes it to the store (running digest, verified at the end). Every client
asking for that blob — the first one included — streams the growing temp file as it arrives,
so five clients cause one upstream fetch, and a client going away does not waste the fetch.
When the fill fails (cut upstream, wrong bytes or length), followers are cut off mid-stream:
a client never sees a short success. Content the mirror cannot read with its own token
(private repositories) is passed through with the client's credentials and never cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import httpx
from quart import Response
from werkzeug.datastructures import Headers

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.digests import Digest
from docxy.cache.errors import CacheError, FillAborted
from docxy.cache.fill import BlobFollower, BlobWriter
from docxy.cache.reader import BlobReader
from docxy.errors import RangeNotSatisfiable, StreamCut, UpstreamError
from docxy.proxy import API_VERSION_HEADER, empty_body
from docxy.ranges import content_range, parse_range
from docxy.tasks import spawn
from docxy.upstream import Upstream, UpstreamClient
from docxy.upstream_auth import MirrorTokens

log = logging.getLogger(__name__)

WRITE_FAILURE_BACKOFF = 60.0  # seconds of pass-through after the cache failed to write


def _blob_headers(digest: Digest, length: int | None) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Docker-Content-Digest", str(digest)),
        ("ETag", f'"{digest}"'),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "max-age=31536000"),
        API_VERSION_HEADER,
    ]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return headers


async def _stream_reader(reader: BlobReader | BlobFollower) -> AsyncIterator[bytes]:
    try:
        async for chunk in reader:
            yield chunk
    except FillAborted as exc:
        log.warning("blob fill failed, cutting the client: %s", exc)
        raise StreamCut(str(exc)) from None
    finally:
        reader.close()


def _response(body: AsyncIterator[bytes], status: int, headers: list[tuple[str, str]]) -> Response:
    response = Response(body, status=status, headers=Headers(headers))
    response.timeout = None
    return response


def serve_from_disk(
    store: DiskBlobStore, digest: Digest, method: str, range_header: str | None
) -> Response | None:
    """A cache hit, with ``Range`` → 206; ``None`` on a miss."""
    entry = store.lookup(digest)
    if entry is None:
        return None
    try:
        span = parse_range(range_header, entry.size)
    except RangeNotSatisfiable:
        headers = [("Content-Range", f"bytes */{entry.size}"), API_VERSION_HEADER]
        return _response(empty_body(), 416, headers)
    start, stop = span if span is not None else (0, entry.size)
    headers = _blob_headers(digest, stop - start)
    status = 200
    if span is not None:
        status = 206
        headers.append(("Content-Range", content_range(start, stop, entry.size)))
    if method == "HEAD":
        return _response(empty_body(), status, headers)
    reader = store.open_read(digest, start, stop)
    if reader is None:  # evicted or removed between lookup and open
        return None
    return _response(_stream_reader(reader), status, headers)


class BlobFiller:
    """Starts fills and hands out followers."""

    def __init__(self, store: DiskBlobStore, client: UpstreamClient, tokens: MirrorTokens) -> None:
        self.store = store
        self.client = client
        self.tokens = tokens

    async def follow(self, upstream: Upstream, name: str, digest: Digest) -> Response | None:
        """Stream the blob through the cache; ``None`` to pass the request through.

        ``None`` when the mirror may not fetch the blob itself (private), and for a while after
        the cache could not write (disk full): misses are then served uncached.
        """
        failed = self.store.write_failed_at
        if failed is not None and time.monotonic() - failed < WRITE_FAILURE_BACKOFF:
            return None
        if self.tokens.refused(upstream, name):
            return None  # private to the mirror's token: don't ask upstream twice per request
        fill = await self.store.fetch_or_join(digest)
        if isinstance(fill, BlobWriter) and not fill.caching:
            fill.abort("no temp file")  # the cache cannot write: no fetch of its own
            return None
        if isinstance(fill, BlobWriter):
            spawn(f"fill {digest}", self._fill(fill, upstream, name, digest))
            fill = await self.store.fetch_or_join(digest)
        if isinstance(fill, BlobReader):
            headers = _blob_headers(digest, fill.length)
            return _response(_stream_reader(fill), 200, headers)
        if isinstance(fill, BlobWriter):  # the fill ended before we could join it
            fill.abort("no follower could join")
            return None
        try:
            size = await fill.size()
        except FillAborted:
            fill.close()
            return None
        return _response(_stream_reader(fill), 200, _blob_headers(digest, size))

    async def _fill(
        self, writer: BlobWriter, upstream: Upstream, name: str, digest: Digest
    ) -> None:
        path = f"/v2/{name}/blobs/{digest}"
        async with writer:
            try:
                answer = await self.tokens.send(upstream, "GET", name, path)
            except UpstreamError as exc:
                writer.abort(f"upstream: {exc.message}")
                return
            try:
                if answer.status_code != 200:
                    if answer.status_code in (401, 403):  # a 404 is about this blob only
                        self.tokens.mark_refused(upstream, name)
                    writer.abort(f"upstream answered {answer.status_code} to the mirror's token")
                    return
                length = answer.headers.get("content-length")
                size = int(length) if length is not None and length.isdigit() else None
                writer.announce(size)
                async for chunk in answer.aiter_bytes():
                    await writer.write(chunk)
                if await writer.commit(size) is not None:
                    log.info("blob %s cached (%d bytes)", digest, writer.received)
            except (httpx.HTTPError, CacheError) as exc:
                writer.abort(f"{type(exc).__name__}: {exc}")
                log.warning("blob %s: fill failed: %s: %s", digest, type(exc).__name__, exc)
            finally:
                await answer.aclose()
