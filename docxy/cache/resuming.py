"""Going on with a download that broke off: the one rule for a fill's download and for the rest
a follower of a given-up fill gets for itself (both in :mod:`docxy.cache.fill`).

A blob's bytes come from a download that may break off midway: a cut or stalled upstream raises
one of its ``broke_off`` errors. :class:`Resuming` then asks ``fetch`` for the rest from where
the bytes stopped, and again should that rest break off in its turn, up to ``limit`` times,
each only after the try before gave new bytes: an upstream that breaks off at the same byte
again and again is not asked for ever. A rest that ends cleanly short of where the blob ends
(:attr:`Resuming.end`, as the latest answer of a known length said: a ``206`` to the close,
closed early) is a break too (:class:`EndedShort`), not the blob's end. A break after the
blob's last byte (the bytes had are its length and its digest: ``complete``) is no break:
nothing is asked for then. When it may not go on it raises :class:`BrokeOff`, which says why
(the error, how many resumes, what the last gave). What that means (a fill that failed, a
client cut) and its one log line are the caller's; so is the INFO line for each resume
(``went_on``), worded for whose download it is. What it means for the source is the source's:
the download being read when it gave up is told (its ``gave_up``), the upstream's owner
counting it as a failure of that upstream; not when nobody wanted the bytes any more (the break
is then the echo of the fill's end, not the upstream's doing).

Each rest it fetched is closed once read, broken off, or left by its consumer; a ``first``
download handed to it is its owner's to close. Errors other than a break (a rest that cannot be
had: :class:`~docxy.cache.errors.FetchFailed`) go to the caller as they are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from docxy.cache.errors import FillAborted

if TYPE_CHECKING:
    from docxy.cache.fill import Download

#: Times a download goes on after it broke off (each time after new bytes came).
RESUMES = 3

#: The rest of the blob from an offset on (``Download.chunks``), or :class:`FetchFailed`.
Fetch = Callable[[int], Awaitable["Download"]]
#: Told each time it goes on: the error, the offset it goes on from, and the resume's number.
WentOn = Callable[[Exception, int, int], None]


class BrokeOff(FillAborted):
    """A download broke off and may not go on: before its first byte, again and again, or with
    nothing new after it was resumed. ``cause`` is the error, ``at`` the bytes had by then."""

    def __init__(self, cause: Exception, at: int, resumes: int, gave: int) -> None:
        said = f"{type(cause).__name__}: {cause}"
        if resumes:
            plural = "s" if resumes != 1 else ""
            said += f" ({resumes} resume{plural}, the last gave {gave} bytes)"
        super().__init__(said)
        self.cause, self.at, self.resumes, self.gave = cause, at, resumes, gave


class EndedShort(Exception):
    """A download whose length was known ended, cleanly, before it (a body that runs to the
    close, closed early): a break, as a cut is."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"the answer ended {missing} bytes short of its length")
        self.missing = missing


def _always() -> bool:
    return True


@dataclass(eq=False)
class Resuming:
    """The bytes of a blob from :attr:`at` on, going on from where a download broke off.

    ``fetch`` gives the rest from an offset; ``broke_off`` are the errors that mean a break
    (besides each download's own ``broke_off``); ``may_go_on`` says whether anybody still wants
    the bytes (else a break is the end). :attr:`at` counts the bytes had so far, :attr:`resumes`
    the rests asked for after a break.
    """

    fetch: Fetch
    at: int
    went_on: WentOn
    broke_off: tuple[type[Exception], ...] = ()
    may_go_on: Callable[[], bool] = _always
    limit: int = RESUMES
    resumes: int = 0
    #: Whether the bytes had so far are the whole blob (its length, its digest): a download
    #: that broke off after its last byte (a chunked body whose ending never came) is then
    #: over, not resumed (a rest from the blob's end is a 416). None: always resumed.
    complete: Callable[[], Awaitable[bool]] | None = None
    #: Where the blob ends, as the latest download of a known length said (its start and
    #: length), or as the caller knew it before (the fill's download, its Content-Length):
    #: None while none did. Never from the length a caller expected: a rest's own length is
    #: only what its answer says.
    end: int | None = None
    #: Whether a fetched rest that ends short (:class:`EndedShort`) is a break of this one's:
    #: False raises it to the caller as it is, for a Resuming of its own to go on from (the
    #: shared store's hand-over, allowed once, whose rest's breaks are the fill's).
    short_is_break: bool = True

    def broke(self, exc: Exception, start: int, source: Download | None = None) -> None:
        """A download (``source``) that began at byte ``start`` broke off at :attr:`at` with
        ``exc``: return when the rest may be asked for (after telling ``went_on``), else raise
        :class:`BrokeOff` (from ``exc``), after telling ``source`` (its ``gave_up``) if the
        bytes were still wanted."""
        gave = self.at - start
        wanted = self.may_go_on()
        if self.resumes >= self.limit or gave <= 0 or not wanted:
            error = BrokeOff(exc, self.at, self.resumes, gave)
            if wanted and source is not None and source.gave_up is not None:
                source.gave_up(error)
            raise error from exc
        self.resumes += 1
        self.went_on(exc, self.at, self.resumes)

    async def chunks(self, first: Download | None = None) -> AsyncGenerator[bytes]:
        """The bytes from :attr:`at` on: ``first``'s (not closed here), else a fetched rest's,
        then after each break a rest's from where it broke. Ends at the end of a download that
        did not break off."""
        current, owned = first, False
        while True:
            if current is None:
                current, owned = await self.fetch(self.at), True
            start = self.at
            if current.size is not None:
                self.end = start + current.size
            short = (EndedShort,) if self.short_is_break else ()
            breaks: tuple[type[Exception], ...] = (*self.broke_off, *current.broke_off, *short)
            try:
                assert current.chunks is not None, "a resumed download is read on the loop"
                async for chunk in current.chunks:
                    if chunk:
                        self.at += len(chunk)
                        yield chunk
                if owned and self.end is not None and self.at < self.end:
                    # A rest that ended cleanly short of the blob's end (a 206 to the close,
                    # closed early) was taken for that end: the verify failed the fill, its
                    # clients cut. (A ``first`` download's end is its owner's to judge.)
                    raise EndedShort(self.end - self.at)
                return
            except breaks as exc:
                if self.complete is not None and await self.complete():
                    return  # broke off after the last byte: nothing is missing
                self.broke(exc, start, current)
            finally:
                if owned:
                    await current.close()
            current = None
