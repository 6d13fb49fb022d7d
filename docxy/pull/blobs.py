"""Blobs on the pull path: a hit from disk, or a miss through one shared fill; else pass through.

A miss asks the store for the blob with a *fetch* that uses the mirror's own upstream token;
the store makes the temp file, starts that fetch once per digest as a named task, and every
client asking meanwhile (the first one included) follows the growing file. Content the mirror's
token may not read (private repositories) and requests the cache does not answer (a ``Range``
or a ``HEAD`` on a miss) pass through with the client's credentials, uncached, with a reason.
A fill's GET the registry answers with its word on the blob (a ``404 BLOB_UNKNOWN``, a
``400``: :data:`THE_REGISTRYS_WORD`) is the answer of that fill's clients in the same
repository, its status and registry error, not asked again (a client of another repository
that joined it still passes through: it says nothing of that one; so does a client with
credentials of its own, :attr:`~docxy.pull.outcome.Pull.credentialed`, which a registry that
hides private repositories behind a 404 may answer with the blob).
Should the cache give a fill up midway (its disk fails, or a blob of unknown length outgrows
the room), each of its clients keeps what it has and gets the rest from the upstream with a
``Range`` GET (:meth:`BlobService._fetch_rest`), verified before its last byte: a download
that counts towards ``limits.fills_total`` as a fill does, and waits for a permit rather than
be refused (:meth:`BlobService._permitted_rest`).

A cached blob is served under a repository only once the mirror knows that repository holds it
(``docxy.cache.pairings``); an unknown pairing is first confirmed by a free upstream ``HEAD``
— with the mirror's token, then with the client's own credentials, which serves content
private to that client from the cache without sharing it. Unconfirmed, the request passes
through (the client sees the upstream's own answer); with the upstream down, it fails: a HEAD
answered 429 or 5xx with the upstream's status and ``Retry-After``, as a relayed answer would
(:class:`~docxy.pull.asking.UpstreamTrouble`).

With a shared tier (``docxy.shared``) a fill reads the blob from the object store when it is
there, else from the upstream, and a blob filled from the upstream is uploaded afterwards. A
blob filled from the object store is still served under a repository only as above: the fill
confirms no pairing, so an unknown one is confirmed upstream first. Every client of such a fill
is told so (``Source.SHARED``, the access log's ``cache=shared``): its bytes spent no upstream
quota, but for the rest of a store body that broke off (:meth:`BlobService._fetch_rest`), which
the fill's handover counts as the upstream's (``upstream_bytes=`` in the access log).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import replace
from functools import partial
from typing import NoReturn

import httpx

from docxy.cache.blobs import BlobEntry, DiskBlobStore
from docxy.cache.errors import (
    CacheError,
    CacheUnreadable,
    CacheUnwritable,
    CorruptDownload,
    FetchFailed,
    FetchRefused,
    FetchUnanswered,
    FillAborted,
    NoRoom,
    OtherLength,
)
from docxy.cache.fill import BlobFollower, Download, FillState
from docxy.cache.pairings import BlobPairings
from docxy.cache.reader import BlobReader
from docxy.cache.resuming import BrokeOff
from docxy.cache.visibility import RepoKey, may_serve
from docxy.core.digests import Digest
from docxy.core.errors import UpstreamAnswered, UpstreamError, UpstreamUnavailable
from docxy.core.headers import ACCEPT_IDENTITY, body_length
from docxy.core.hosts import url_host
from docxy.core.ranges import parse_content_range, parse_range, unsatisfied_length
from docxy.edge.fills import FillPermits, Release, released_after
from docxy.pull.asking import (
    THE_REGISTRYS_WORD,
    answered_by,
    head_as_client,
    raise_for_trouble,
    refused_by_registry,
)
from docxy.pull.outcome import (
    BlobContent,
    Outcome,
    PassThrough,
    Pull,
    Reason,
    Served,
    Source,
    upstream_failed,
)
from docxy.shared.tier import ORIGIN as SHARED_ORIGIN
from docxy.shared.tier import SharedTier
from docxy.threads import in_own_thread
from docxy.upstream import direct
from docxy.upstream.client import AnswerTooLarge, read_small, same_origin
from docxy.upstream.tokens import MirrorTokens, TokenRefused, sent_authorization

#: How long a fill's client waits for the fill's first byte before its headers go out anyway
#: (:func:`_first_byte`): a fill that fails in that time (the upstream's body reset at once)
#: is answered as a failure before its headers is, not as ``200``, the length, then a cut of
#: no bytes. A healthy upstream's first bytes come well within it; a slow one's client gets
#: its headers after it, as before (an unbounded wait hung clients of such an upstream).
FIRST_BYTE_WAIT = 1.0

#: An error body read to relay it: a registry's JSON error is far smaller.
ERROR_BODY_LIMIT = 64 * 1024

UNCONFIRMED = PassThrough(
    Reason.UNCONFIRMED, "the upstream did not confirm the cached blob in this repository"
)


class BlobService:
    """``get(pull)`` → an outcome; ``store`` None means the cache is off."""

    def __init__(
        self,
        store: DiskBlobStore | None,
        tokens: MirrorTokens,
        pairings: BlobPairings | None = None,
        permits: FillPermits | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.store = store
        self.shared = shared
        self.tokens = tokens
        self.pairings = pairings if pairings is not None else BlobPairings(None)
        self.permits = permits or FillPermits()

    async def get(self, pull: Pull) -> Outcome:
        digest = pull.reference.digest
        if self.store is None or digest is None:
            return PassThrough(Reason.NO_CACHE)
        if self.store.cached(digest):
            held = await self._held(pull, digest)  # first: even a 416 would tell the size
            if isinstance(held, PassThrough):
                return held
            # Looked up (and marked used) only now: _held waits for the manifests read at
            # start, whose length check may have dropped this very blob meanwhile (a file cut
            # short while stopped), or for an upstream HEAD, while an eviction may take it.
            entry = self.store.lookup(digest)
            hit = None if entry is None else _hit(self.store, pull, entry, held)
            if hit is not None:
                return hit
        if pull.head or pull.range:
            return PassThrough(Reason.NOT_CACHEABLE, "HEAD or Range of a blob not cached")
        if self.tokens.refused(pull.upstream, pull.name):
            return PassThrough(Reason.PRIVATE, "the mirror's token was refused lately")
        # Starting a fill needs a permit (429 over the caps); joining one does not.
        joined = self.store.filling(digest)
        release = None if joined else self.permits.acquire()
        try:
            stream = await self.store.fill(digest, partial(self._permitted, pull, release))
        except (CacheUnwritable, CacheUnreadable, NoRoom) as exc:
            if release is not None:
                release()
            return PassThrough(_uncached_because(exc), str(exc), admitted=not joined, joined=joined)
        if isinstance(stream, BlobReader) and release is not None:
            release()  # committed while we looked: no fetch of ours
        outcome = await self._follow(pull, digest, stream, joined)
        if isinstance(outcome, PassThrough):
            return replace(outcome, admitted=not joined, joined=joined)
        return outcome

    async def pass_through_permit(self, passing: PassThrough) -> Release:
        """The permit a blob GET passed through holds while its body is relayed: an upstream
        download as a fill's is, under the same caps (``TooManyRequests`` over them);
        one that a fill let in already (:attr:`PassThrough.admitted`) waits instead; one that
        joined another's fill (:attr:`PassThrough.joined`), never counted for its client, is
        held to ``limits.fills_per_client`` first, then waits."""
        if passing.admitted:
            return await self.permits.wait()
        if passing.joined:
            return await self.permits.wait(capped=True)
        return self.permits.acquire()

    async def _follow(
        self, pull: Pull, digest: Digest, stream: BlobReader | BlobFollower, joined: bool = False
    ) -> Outcome:
        """Serve a fill (ours, or one ``joined``: another request started it, maybe for another
        repository) or a fresh commit. A client of a fill it joined is told so whatever the
        fill's origin (:attr:`Source.JOINED`): only the request that started a fill made the
        upstream (or the bucket) send its bytes."""
        try:
            if isinstance(stream, BlobReader):  # committed while we looked
                size: int | None = stream.size
                source = Source.HIT
            else:
                size = await stream.size()  # our own fetch has confirmed the pairing by now
                await _first_byte(stream, FIRST_BYTE_WAIT)  # a fill failing now: no 200
                # The fill's download has begun by now: where from is known to all it serves.
                source = Source.SHARED if stream.fill.origin == SHARED_ORIGIN else Source.MISS
            held = await self._held(pull, digest)
        except NoRoom as exc:  # before a byte was sent: the blob does not fit under the cap
            stream.close()
            return PassThrough(Reason.CACHE_FULL, str(exc))
        except FillAborted as exc:
            stream.close()
            corrupt = _corrupt(stream, exc)
            if corrupt is not None:
                return corrupt
            if self.tokens.refused(pull.upstream, pull.name):
                return PassThrough(Reason.PRIVATE, str(exc))
            if exc.upstream is not None and exc.source == pull.upstream.host:
                # Its fetch failed before a byte, from this client's upstream: maybe not again.
                return upstream_failed(exc.upstream, pull, str(exc))
            return PassThrough(Reason.UPSTREAM_FAILED, str(exc))
        except BaseException:
            stream.close()
            raise
        if isinstance(held, PassThrough):
            stream.close()
            return held
        if isinstance(stream, BlobFollower):
            # Should the cache give the fill up (a failed write...), this client gets the rest
            # of the blob from the upstream instead of a cut, under a fill permit.
            stream.rest = partial(self._permitted_rest, pull)
        if isinstance(stream, BlobFollower) and joined:
            source = Source.JOINED
        elif source is not Source.SHARED and held is not Source.HIT:
            source = held  # confirmed upstream just now (a fill from the bucket says so first)
        return Served(source, BlobContent(digest, size, stream))

    async def _held(self, pull: Pull, digest: Digest) -> Source | PassThrough:
        """Whether the pull's repository holds ``digest``: known (HIT), or confirmed upstream
        just now (REVALIDATED), or not (a pass-through). Raises :class:`UpstreamError` when
        the upstream cannot say (down; 429/5xx: :class:`~docxy.pull.asking.UpstreamTrouble`,
        which tells the client when to retry): an unknown pairing is never served blind."""
        repo = RepoKey(pull.upstream.host, pull.name)
        if self.pairings.manifests is not None:  # still read at start-up: wait off the loop
            with contextlib.suppress(OSError):  # its read failed (said): not known, asked
                await self.pairings.manifests.loaded()
        if may_serve(self.pairings.visibility(repo, digest), pull.identity):
            return Source.HIT
        if not self.tokens.refused(pull.upstream, pull.name):
            answer = await self.tokens.send(pull.upstream, "HEAD", pull.name, pull.path)
            await answer.aclose()
            raise_for_trouble(answer)
            if answer.status_code == 200:
                self.pairings.confirm(repo, digest, public=True)
                return Source.REVALIDATED
            if refused_by_registry(answer, pull):  # not a CDN's (a signed URL for GET only)
                self.tokens.mark_refused(pull.upstream, pull.name)
        theirs = await head_as_client(self.tokens.client, pull)  # private to this client?
        if theirs is not None and theirs.status_code == 200:  # then not shared
            return Source.REVALIDATED
        return UNCONFIRMED

    async def _permitted(self, pull: Pull, release: Release | None) -> Download:
        """:meth:`_fetch`, giving the fill's permit back when the download is closed."""
        if release is None:
            return await self._fetch(pull)
        return await _holding(release, self._fetch(pull))

    async def _permitted_rest(self, pull: Pull, offset: int, size: int | None) -> Download:
        """:meth:`_fetch_rest` for a client of a fill the cache gave up: an upstream download
        as a fill's is, so it counts towards ``limits.fills_total`` like one, and waits for a
        permit rather than be refused (:meth:`FillPermits.wait`); the permit is given back
        when the rest is closed. (N clients of such a fill make N such downloads: each has
        its own place in the blob and its own pace; a shared one would hold them to the
        slowest, or need a buffer as long as their spread.)"""
        return await _holding(await self.permits.wait(), self._fetch_rest(pull, offset, size))

    async def _fetch(self, pull: Pull) -> Download:
        """A fill's download: from the shared tier when it has the blob (its ``origin`` says
        so, to every client of the fill), else upstream (and then offered to the shared tier
        once the fill is done)."""
        digest = pull.reference.digest
        if self.shared is None or digest is None:
            return await self._fetch_upstream(pull)
        rest = partial(self._fetch_rest, pull)
        download = await self.shared.download(digest, rest)
        if download is not None:
            # The store's body that breaks off goes on from the upstream (docxy.shared.body);
            # that rest, should it break off in its turn, goes on as an upstream fill's does.
            # Only the upstream's rest can break off that far (the store's own breaks are the
            # tier's): counted against the upstream, as an upstream fill's is.
            gave_up = partial(self._gave_up, pull)
            return replace(
                download, resume=rest, broke_off=(httpx.TransportError,), gave_up=gave_up
            )
        download = await self._fetch_upstream(pull)
        shared = self.shared

        async def close() -> None:
            await download.close()
            shared.filled(digest)

        return replace(download, close=close)

    async def _fetch_upstream(self, pull: Pull) -> Download:
        """The upstream half of a fill: a GET with the mirror's own token.

        Made directly when the client allows it (its body then read by a worker thread, see
        :mod:`docxy.upstream.direct`); through httpx otherwise, or to retry a 401 to a token the
        mirror held (it expired early upstream) with a fresh one. A body that breaks off midway
        (a cut or stalled connection) goes on with a ``Range`` GET from there
        (:meth:`_fetch_rest`).
        """
        download = None
        if self.tokens.client.direct is not None:
            download = await self._fetch_direct(pull)
        if download is None:
            download = await self._fetch_httpx(pull)
        # A body that breaks off midway goes on from there (see docxy.cache.fill.run_fill).
        resume = partial(self._fetch_rest, pull)
        broke_off = (UpstreamError, httpx.TransportError)
        gave_up = partial(self._gave_up, pull)
        return replace(download, resume=resume, broke_off=broke_off, gave_up=gave_up)

    async def _fetch_direct(self, pull: Pull) -> Download | None:
        url = pull.upstream.url(pull.path)
        try:
            headers = await self.tokens.headers(pull.upstream, pull.name)
            answer = await direct.open_get(self.tokens.client, pull.upstream, url, headers)
        except TokenRefused as exc:  # the upstream's answer, as on the httpx path (send)
            self._refused(pull, exc.status, url)
        except UpstreamError as exc:
            raise FetchFailed(exc.message, exc, pull.upstream.host) from exc
        final_url = answer.hops[-1][0] if answer.hops else url
        by_registry = same_origin(final_url, url)
        refused = answer.status == 401 and by_registry
        if refused and self.tokens.refused_token(pull.upstream, pull.name, headers):
            answer.close()
            return None
        if answer.status != 200:
            body = b""
            if answer.status in THE_REGISTRYS_WORD:  # relayed to the client: its error says why
                body = await in_own_thread(
                    f"upstream error body {pull.upstream.host}", partial(_read_error, answer)
                )
            answer.close()
            sent = [v for k, v in headers if k.lower() == "authorization"]
            self._refused(pull, answer.status, final_url, body, sent)
        self._holds_blob(pull)
        size = body_length(answer.headers)  # a chunked answer's Content-Length is not its own

        async def close() -> None:
            answer.close()

        return Download(size, None, close, body=answer.body)

    def _holds_blob(self, pull: Pull) -> None:
        """The upstream served the blob from this repository: it holds it."""
        digest = pull.reference.digest
        if digest is not None:
            self.pairings.confirm(RepoKey(pull.upstream.host, pull.name), digest, public=True)

    def _refused(
        self,
        pull: Pull,
        status: int,
        final_url: str,
        body: bytes = b"",
        sent: Sequence[str | None] = (),
    ) -> NoReturn:
        """The fetch's answer was no blob. A 401 or 403 from the registry refuses the mirror's
        token for the repository; from where it redirected to (a CDN's signed URL expired, a
        CDN rule) it is a failed fetch: the registry took the token. Another 4xx of the
        registry's (a 404 BLOB_UNKNOWN, a 400; its error ``body``) is its word on the blob in
        this repository: the fill's clients of it are answered so (:class:`UpstreamAnswered`),
        none sends the same GET again, told none of the mirror's credentials (``sent``: the
        ``Authorization`` its GET carried) that ``body`` may repeat."""
        by_registry = same_origin(final_url, pull.upstream.registry)
        if status in (401, 403) and not by_registry:
            where = url_host(final_url)
            raise FetchFailed(f"{pull.upstream.host} sent the blob's GET to {where}: {status}")
        said = f"{pull.upstream.host} answered {status} to the mirror's token"
        if status in (401, 403):  # a 404 is about this blob only
            self.tokens.mark_refused(pull.upstream, pull.name)
            raise FetchRefused(said)
        if status in THE_REGISTRYS_WORD and by_registry:
            secrets = self.tokens.secrets(pull.upstream, pull.name, sent)
            answered = UpstreamAnswered(status, body, pull.name, secrets=secrets)
            raise FetchRefused(said, answered, pull.upstream.host)
        if status == 404:  # a CDN's: not the registry's word, nor the mirror's fault
            raise FetchRefused(said)
        if status == 429 or status >= 500:
            raise FetchUnanswered(said)
        raise FetchFailed(said)

    async def _fetch_httpx(self, pull: Pull) -> Download:
        try:
            # A proxy that zips blobs announced the zipped length, which the fill then found
            # exceeded (the direct path's http.client asks for identity too). The body is read
            # raw, as http.client reads it: a layer whose storage labels it Content-Encoding:
            # gzip (S3 object metadata, sent whatever was asked) is those gzip bytes, which
            # httpx's decoding unzipped into another blob (and a resume's, mid-stream, broke).
            identity = [ACCEPT_IDENTITY]
            answer = await self.tokens.send(pull.upstream, "GET", pull.name, pull.path, identity)
        except UpstreamError as exc:
            raise FetchFailed(exc.message, exc, pull.upstream.host) from exc
        if answer.status_code != 200:
            body = await _error_body(answer)
            sent = [sent_authorization(answer)]
            self._refused(pull, answer.status_code, answered_by(answer, pull), body, sent)
        self._holds_blob(pull)
        size = body_length(answer.headers.multi_items())
        return Download(size, answer.aiter_raw(), answer.aclose)

    async def _fetch_rest(self, pull: Pull, offset: int, size: int | None) -> Download:
        """The blob (``size`` bytes, None: unknown) from ``offset`` on, from the upstream (a
        shared store's body broke off there, a fill's upstream body did, or the cache gave up
        a fill its client had that much of): a GET with ``Range: bytes=offset-`` and the
        mirror's own token. A ``206`` must run from ``offset`` to the end of a blob of
        ``size`` bytes, its length (if it says one) that of its range; a ``200`` (an upstream
        that ignores ranges), whose length says, must be ``size`` bytes, and is read past its
        first ``offset``. Anything else raises
        :class:`FetchFailed` before a byte of it is read: an answer of another length is not
        this blob, and only its whole download would tell otherwise."""
        ranged = [("Range", f"bytes={offset}-"), ACCEPT_IDENTITY]
        try:
            answer = await self.tokens.send(pull.upstream, "GET", pull.name, pull.path, ranged)
        except UpstreamError as exc:
            raise FetchUnanswered(exc.message) from exc
        status = answer.status_code
        if status not in (200, 206):
            await answer.aclose()
            if status == 416:
                await self._denied_length(pull, answer.headers.get("content-range"), offset, size)
            self._refused(pull, status, answered_by(answer, pull))
        known = body_length(answer.headers.multi_items())
        problem = not_the_rest(status, answer.headers.get("content-range"), known, offset, size)
        if problem:
            await answer.aclose()
            said = f"{pull.upstream.host} answered bytes={offset}- with {problem}"
            length = blob_length(status, answer.headers.get("content-range"), known)
            if length is not None and size is not None and length != size:
                raise OtherLength(said, length)  # the blob's own length is another
            raise FetchFailed(said)
        self._holds_blob(pull)
        broke_off = (httpx.TransportError,)  # a cut or stalled body: the caller's to say
        gave_up = partial(self._gave_up, pull)
        # The rest's length, when its answer says it, even one of no length (to the close, or
        # chunked) by its Content-Range: a body that ends short of it, cleanly closed, is a
        # break to go on from, not the blob's end (see Resuming.chunks); one running past it is
        # not the blob's rest.
        if status == 206:
            span = parse_content_range(answer.headers.get("content-range"))
            if known is None and span is not None:  # checked by not_the_rest: from offset
                known = span[1] - offset
            chunks = answer.aiter_raw()
            return Download(known, chunks, answer.aclose, broke_off=broke_off, gave_up=gave_up)
        # A 200 (the Range ignored) of no length says none: never the ``size`` the caller
        # expected, which the shared tier would take for the upstream confirming a stored
        # object's length (SharedTier._room_for). Where the blob ends is then still known to
        # the caller's Resuming from the download before, if that said a length.
        left = None if known is None else max(known - offset, 0)
        chunks = _skipped(answer.aiter_raw(), offset)
        return Download(left, chunks, answer.aclose, broke_off=broke_off, gave_up=gave_up)

    async def _denied_length(
        self, pull: Pull, content_range: str | None, offset: int, size: int | None
    ) -> None:
        """Raise :class:`OtherLength` when a ``416`` to ``Range: bytes=offset-`` shows the blob
        has not ``size`` bytes: its ``Content-Range: bytes */N`` says it ends at or before
        ``offset`` (the rest of a longer claim, a shared object's ``Content-Length`` past the
        blob's end: a length denied, not the upstream refusing the mirror). A ``416`` that says
        nothing of the length, for a byte the claim has (``offset`` short of ``size``), is asked
        about once: the upstream's ``HEAD`` of the blob says its length, judged as such a total
        would be (behind an upstream whose 416s never say one, an object longer than its blob
        was otherwise cut at every miss, never marked bad). A length with a byte at ``offset``
        (the upstream contradicting itself), the very length claimed (a whole body that broke
        off after its last byte asked for its rest at ``size``), or none to be had, is the
        upstream's own trouble or none, left as it was (a failed fetch): a right object is not
        marked bad for an upstream's passing fault."""
        if size is None:
            return
        total = unsatisfied_length(content_range)
        said = f"416, Content-Range {content_range!r}"
        if total is None and offset < size:
            total = await self._head_length(pull)
            said = f"416 saying no length, and its HEAD Content-Length {total}"
        if total is None or total > offset or total == size:
            return  # a length with that byte, or the one claimed: nothing shown of the object
        said += f": not of the blob's {size} bytes"
        raise OtherLength(f"{pull.upstream.host} answered bytes={offset}- with {said}", total)

    async def _head_length(self, pull: Pull) -> int | None:
        """The blob's length as the upstream's ``HEAD`` of it says (its ``Content-Length``);
        None when it says none (no answer, not a ``200``, no length)."""
        try:
            answer = await self.tokens.send(
                pull.upstream, "HEAD", pull.name, pull.path, [ACCEPT_IDENTITY]
            )
        except UpstreamError:
            return None
        await answer.aclose()
        if answer.status_code != 200:
            return None
        return body_length(answer.headers.multi_items())

    def _gave_up(self, pull: Pull, error: BrokeOff) -> None:
        """The blob's body from the upstream kept breaking off, and the fill or a client's rest
        gave it up: a failure of that upstream, as a timeout is (its health: /health,
        ``docxy_upstream_errors_total{kind="broke_off"}``, the status page's recent errors)."""
        said = f"the body of {pull.reference.digest} from {pull.upstream.host} broke off"
        health = self.tokens.client.health_of(pull.upstream)
        health.failed(f"{said} at byte {error.at}: {error}", "broke_off")


def _hit(store: DiskBlobStore, pull: Pull, entry: BlobEntry, held: Source) -> Outcome | None:
    """Serve cached blob ``entry``; None if it was evicted since it was looked up (a miss)."""
    span = parse_range(pull.range, entry.size)  # RangeNotSatisfiable: 416
    start, stop = span if span is not None else (0, entry.size)
    try:
        reader = None if pull.head else store.open_read(entry.digest, start, stop)
    except CacheUnreadable as exc:  # no descriptor left, EIO: the upstream serves it
        return PassThrough(Reason.CACHE_UNREADABLE, str(exc))
    if not pull.head and reader is None:
        return None
    # A fill's verified temp file while its commit runs: served, not yet kept.
    committing = store.filling(entry.digest)
    content = BlobContent(entry.digest, entry.size, reader, span)
    return Served(held, content, committing=committing)


def blob_length(status: int, content_range: str | None, length: int | None) -> int | None:
    """The blob's whole length as an answer to a ``Range`` GET says it (None: it does not):
    a ``200``'s length, a ``206``'s ``Content-Range`` total."""
    if status == 200:
        return length
    span = parse_content_range(content_range)
    return None if span is None else span[2]


def not_the_rest(
    status: int, content_range: str | None, length: int | None, offset: int, size: int | None
) -> str:
    """What makes an answer (``status``, its ``Content-Range`` and length) to ``Range:
    bytes=offset-`` not the rest of a blob of ``size`` bytes (None: unknown), for a log
    line; "" when nothing does (as far as its headers tell)."""
    if status == 200:
        if length is not None and size is not None and length != size:
            return f"a 200 of {length} bytes, not the blob's {size}"
        return ""
    span = parse_content_range(content_range)
    if span is None or span[0] != offset:
        return f"Content-Range {content_range!r}"
    _, stop, total = span
    if length is not None and length != stop - offset:  # a body of another length than its range
        return f"Content-Range {content_range!r} and a Content-Length of {length}"
    if total is not None and size is not None and total != size:
        return f"Content-Range {content_range!r}: not of the blob's {size} bytes"
    end = total if total is not None else size
    if end is not None and stop != end:
        return f"Content-Range {content_range!r}: not to the blob's end"
    return ""


async def _error_body(answer: httpx.Response) -> bytes:
    """The body of an upstream's error answer to a blob GET, up to :data:`ERROR_BODY_LIMIT`
    bytes (b"" for one larger, or that breaks off); the answer is closed."""
    try:
        return await read_small(answer, ERROR_BODY_LIMIT)
    except (UpstreamError, AnswerTooLarge):
        return b""


def _read_error(answer: direct.DirectAnswer) -> bytes:
    """:func:`_error_body` for a direct GET's answer (blocking: a worker thread's)."""
    try:
        body = answer.body.read(ERROR_BODY_LIMIT + 1)
    except UpstreamError:
        return b""
    return body if len(body) <= ERROR_BODY_LIMIT else b""


async def _skipped(chunks: AsyncIterator[bytes], offset: int) -> AsyncIterator[bytes]:
    """``chunks`` past their first ``offset`` bytes."""
    async for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:] if offset else chunk
        offset = 0


def _corrupt(stream: BlobReader | BlobFollower, exc: FillAborted) -> PassThrough | None:
    """A fill whose download from the upstream ended before this client's first byte, and was
    not the blob (:class:`CorruptDownload`: an empty ``200`` for a blob that is not empty): an
    upstream failure the client is answered with (``502 UNAVAILABLE``), not passed through,
    where the upstream would only be asked for the same bytes again (a pass-through verifies
    them too: ``docxy.http.routes._verified``). None for any
    other failure, and for a download from the shared bucket: the upstream may hold the
    blob right."""
    if not isinstance(exc, CorruptDownload) or not isinstance(stream, BlobFollower):
        return None
    if stream.fill.origin == SHARED_ORIGIN:
        return None
    failed = UpstreamUnavailable(f"the upstream's download was not the blob: {exc}")
    return PassThrough(Reason.UPSTREAM_FAILED, str(exc), failed=failed)


async def _first_byte(follower: BlobFollower, within: float) -> None:
    """Wait, up to ``within`` seconds, until the fill ``follower`` follows has a byte for it
    or is over; then raise :class:`FillAborted` if it failed with no byte received (the
    upstream's body broke off at once, and no resume followed: nothing new had come), so its
    client gets the failure's answer (a pass-through, the upstream's own error) instead of
    ``200`` with the blob's length, then a cut of no bytes. A follower sends nothing before
    the fill has bytes, so the wait delays none. A fill still without a byte after ``within``
    (a slow upstream) is answered as before; one that failed after bytes came (a blob that
    does not verify) too; one the cache gave up (:attr:`InFlight.kept`) is no failure."""
    fill = follower.fill

    async def started() -> None:
        while (
            fill.state is FillState.WRITING
            and not fill.verified
            and not fill.received
            and not fill.written
        ):
            await fill.changed()

    try:
        await asyncio.wait_for(started(), within)
    except TimeoutError:
        return
    if fill.kept is None and not fill.received and not fill.written:
        fill.check_not_aborted()


async def _holding(release: Release, fetching: Awaitable[Download]) -> Download:
    """The download ``fetching`` gives, its permit given back (``release``) once its bytes
    verify or it is closed, whichever comes first, or at once when there is none."""
    try:
        download = await fetching
    except BaseException:
        release()
        raise
    assert download.verified is None  # none of the sources sets it: the permit's own
    return replace(download, close=released_after(download.close, release), verified=release)


def _uncached_because(exc: CacheError) -> Reason:
    if isinstance(exc, NoRoom):
        return Reason.CACHE_FULL
    if isinstance(exc, CacheUnreadable):
        return Reason.CACHE_UNREADABLE
    return Reason.CACHE_UNWRITABLE
