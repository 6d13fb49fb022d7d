"""An object's body as a fill reads it, and the rest of the blob from the upstream should the
body break off after some of its bytes went out.

A body that breaks off before its first byte never gets here: no client has a byte yet, and
the tier leaves the fill to the upstream, whole. Later, the fill's clients have the first bytes
of a ``200``: instead of cutting them (each retrying the whole blob), the fill goes on with
``rest(offset)``, the blob's bytes from ``offset`` on from the pull's upstream (a ``Range``
GET). The fill verifies length and digest over the whole body at its commit, as any fill's,
so a rest that is not the blob's is never kept nor served as a whole blob. Where the upstream
took over is told to the fill (:class:`~docxy.cache.fill.Handover`) before its first byte: the
bytes from there on spent upstream quota, and are counted as the upstream's. A rest whose
answer says the blob has another length than the object claimed
(:class:`~docxy.cache.errors.OtherLength`) is told to the tier (``denied``): the object is not
the blob, and is marked bad as one that does not verify. A body that breaks off after its
last byte (the object's whole length came) is missing nothing: no rest is asked (a ``Range``
from the blob's end is a 416), and the fill verifies it as it is.

The store's break is told to the tier's health (``broke``: an error, the tier rested) only once
nothing shows the object itself bad: when the rest is had, or fails for the upstream's reasons,
or (after the last byte) at the close of a whole that did not fail its verify. A break the bad
object made (its length denied, its whole not the blob) is not the store's trouble.

The hand-over is a :class:`~docxy.cache.resuming.Resuming` allowed once (the one rule for a
download that breaks off), its one INFO line this module's. A rest that breaks off in its turn
is not this one's to go on from: its error (or its ending cleanly short of the blob's end,
:class:`~docxy.cache.resuming.EndedShort`) reaches the fill as it is, whose own ``Resuming``
goes on from there (counted among its :data:`~docxy.cache.resuming.RESUMES`). Each rest is
closed once read, broken off, or when the body is closed midway.

:meth:`ObjectBody.finished` says whether the body was finished that way: the rest read to its
end, and the whole not told a mismatch (a rest refused, broken off, from the wrong byte or not
the blob's finished nothing).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from functools import partial

import httpx

from docxy.cache.errors import OtherLength, SizeMismatch
from docxy.cache.fill import Download, Handover, Resume
from docxy.cache.resuming import Resuming
from docxy.core.digests import Digest
from docxy.shared.objects import ObjectStoreError
from docxy.upstream.failures import failure

log = logging.getLogger(__name__)


class ObjectBody:
    """The chunks of ``answer`` (``first``, then ``body``), or the rest from ``rest`` once it
    breaks off (the rest of a blob of ``size`` bytes, None: unknown); ``broke`` is told the
    store's failure (the tier's health) either way, and ``handover`` where the rest began;
    ``denied`` is told what shows the object is not the blob: the upstream's rest says the blob
    has another length than ``size`` (the object's own claim), or its body runs past it."""

    def __init__(
        self,
        digest: Digest,
        size: int | None,
        answer: httpx.Response,
        first: bytes,
        body: AsyncIterator[bytes],
        rest: Resume | None,
        broke: Callable[[ObjectStoreError], None],
        handover: Handover,
        denied: Callable[[str], None] | None = None,
    ) -> None:
        self.digest = digest
        self.size = size
        self.answer = answer
        self.first = first
        self.body = body
        self.rest = rest
        self.broke = broke
        self.handover = handover
        self.denied = denied
        self._resuming: AsyncGenerator[bytes] | None = None
        self._rest_read = False  # the rest's last byte came
        self._mismatched = False  # the fill found the whole not the blob
        #: the store's break, not told to ``broke`` yet (:meth:`_store_broke`)
        self._break: ObjectStoreError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.rest is None:
            async for chunk in self._stored():
                yield chunk
            return
        # The hand-over is a resume (Resuming, the one rule for a download that breaks off)
        # allowed once: from the store's body to the upstream's rest. A rest that breaks off
        # in its turn is the fill's to go on from (its own Resuming, which counts it among
        # its resumes), so the rest's errors are not this one's to catch; nor is its ending
        # cleanly short of the blob's end (EndedShort), a break the fill's Resuming goes on
        # from (this one, allowed once, gave up on it: the fill failed, its clients cut).
        resuming = Resuming(self._rest, 0, self._went_on, limit=1, short_is_break=False)
        resuming.complete = partial(self._complete, resuming)
        stored = Download(self.size, self._stored(), _nothing, broke_off=(httpx.HTTPError,))
        self._resuming = resuming.chunks(stored)
        async for chunk in self._resuming:
            yield chunk
        self._rest_read = self.handover.at is not None

    async def _complete(self, resuming: Resuming) -> bool:
        """Whether the store's body broke off after its last byte (the object's length had):
        nothing is missing, and a rest from the blob's end would be a 416, cutting clients
        that have every byte. The fill's verify still judges the whole (length, digest)."""
        return self.size is not None and resuming.at == self.size

    async def _stored(self) -> AsyncIterator[bytes]:
        """The store's bytes; a break is raised, and told to ``broke`` (the tier's health) at
        once when no rest can follow, else once the rest shows it the store's
        (:meth:`_store_broke`). A body that runs past the object's ``size`` (a store's answer
        framed otherwise, chunked) is not the blob: told to ``denied`` and raised as a
        :class:`SizeMismatch`, before a byte past it goes out."""
        received = 0
        try:
            async for chunk in _chained(self.first, self.body):
                received += len(chunk)
                if self.size is not None and received > self.size:
                    said = f"{self.size} bytes, its body ran past them"
                    if self.denied is not None:
                        self.denied(said)
                    raise SizeMismatch(f"{self.digest}: the shared object's {said}")
                yield chunk
        except httpx.HTTPError as exc:
            self._break = body_error(exc)
            if self.rest is None:
                self._store_broke()
            raise

    def _store_broke(self) -> None:
        """Tell ``broke`` the store's break, once. Held until then while the hand-over may yet
        show the object not the blob (its rest's length denied, or the whole not verifying
        when no rest was needed): a bad object is its writer's fault, not the store's
        trouble, and must not rest the tier nor count among its errors."""
        if self._break is not None:
            self.broke(self._break)
            self._break = None

    def _went_on(self, exc: Exception, at: int, resumes: int) -> None:
        """The store's body broke off after ``at`` bytes: the rest is asked of the upstream."""
        log.info(
            "blob %s: the shared store's body broke off after %d bytes; the rest from the upstream",
            self.digest,
            at,
        )

    async def _rest(self, offset: int) -> Download:
        """The upstream's rest from ``offset`` (the store's answer closed first), its breaks
        left to the fill's own resume; where it took over is told before its first byte."""
        assert self.rest is not None
        await self.answer.aclose()
        try:
            download = await self.rest(offset, self.size)
        except OtherLength as exc:  # the object's length is not the blob's: it is not the blob
            self._break = None  # the object's doing, not the store's
            if self.denied is not None:
                has = f"no byte {offset}" if exc.length is None else exc.length
                self.denied(f"{self.size} bytes, the upstream's blob has {has}")
            raise
        except Exception:
            self._store_broke()  # nothing shown against the object: the store broke off
            raise
        self._store_broke()
        self.handover.at = offset
        return replace(download, broke_off=())

    def mismatch(self) -> None:
        """The fill found the whole (the store's part and the rest) not the blob. A break
        after the object's last byte, not told yet, was then the bad object's, not the
        store's trouble: it is never told."""
        self._mismatched = True
        self._break = None

    def finished(self, kept: bool = False) -> bool:
        """Whether the body broke off and the upstream's rest made the blob whole: read to its
        end (or the fill, ``kept``, verified and stored it: a rest that broke off in its turn
        went on with the fill's own resume), and not found wrong (the fill tells
        :meth:`mismatch` before it closes the download)."""
        resumed = self.handover.at is not None
        return resumed and (self._rest_read or kept) and not self._mismatched

    async def close(self) -> None:
        self._store_broke()  # after the last byte, the whole not found bad: the store's
        if self._resuming is not None:  # closes the rest it fetched, if it was not read out
            await self._resuming.aclose()
        await self.answer.aclose()


async def _chained(first: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in body:
        yield chunk


async def _nothing() -> None:
    """The store's answer is the body's to close (:meth:`ObjectBody.close`)."""


def body_error(exc: httpx.HTTPError) -> ObjectStoreError:
    return ObjectStoreError(failure("GET body:", exc))
