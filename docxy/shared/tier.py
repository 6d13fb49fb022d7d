"""SharedTier: the object store as a source for local fills and a sink after upstream fills.

- :meth:`SharedTier.download` is tried by a fill before the upstream: the object's bytes go
  through the same fill as an upstream's (digest and length verified before the commit, so a
  corrupt object is never served whole). A fill whose object does not match its digest or
  length is reported once, and the blob is marked bad here: this replica fetches it upstream
  from then on and overwrites the object with its verified copy. A good object the fill could
  not keep (a full local disk, no room) is not the object's fault, and stays trusted. A body
  that breaks off after its first bytes went out is finished from the upstream
  (:mod:`docxy.shared.body`): a rest whose answer says the blob has another length than the
  object claims (:class:`~docxy.cache.errors.OtherLength`) shows the object is not the blob,
  and it is marked bad as one that does not verify; should that blob not verify, the object
  is *not* marked bad: which part was wrong cannot be told (the upstream's rest as likely as
  the store's part), and only what is known bad is blamed. The fill's one WARNING names both
  sources and says so; the next miss reads the object again, and a bad one is then caught whole.
- The fill reserves the object's length before its first byte, evicting blobs for it, and
  only its last byte shows whether the object is the blob: a length the cache has free is
  taken on the object's word, a longer one only once the upstream confirms it (a ranged GET
  of the blob's last byte, through the pull's ``rest``) or cannot be asked (down, 429, 5xx:
  in an outage the bucket serves misses). Denied, the fill is the upstream's, and should
  the blob it commits be of another length, the object is marked bad (counted ``corrupt``,
  replaced by the upload): a bucket writer's object claiming most of the cache evicts
  nothing. An object larger than the whole cache is not filled from (a replica with a
  larger cache may have uploaded that very blob), and is set aside as a bad one is (asked
  about again only by the HEAD of :meth:`SharedTier._replaced`): it is counted corrupt only
  should the blob the upstream's fill keeps here prove of another length.
- :meth:`SharedTier.filled` is told when a fill from the upstream ended: a committed sha256
  blob is queued for upload (:class:`~docxy.shared.uploads.UploadQueue`); one already stored
  at the same length is skipped. Keys are content addresses: replicas racing are harmless.
  Nothing is queued while the store's last answer was a failure, and what waited when it
  failed is dropped (counted, one log line): it is not tried blob after blob against a store
  that is down or hung.
- The object store failing never fails a pull: its first failure of a burst is logged, the
  tier is skipped for ``RETRY_AFTER`` seconds (straight to the upstream, as without it), then
  one miss at a time asks it again until it answers (the others go to the upstream), and
  ``/health`` shows it under ``shared`` without changing the mirror's status (its state and
  counts; the endpoint, bucket and last error only on the admin listener's ``/status.json``).
  Only S3's ``NoSuchKey`` is a miss: any other 404 (``NoSuchBucket``, or one with no S3
  code: a web server at the endpoint, a path-style URL a store does not take) is the store
  failing, so a wrong setting does not pass for a store that is up and empty.
  A success with nothing of S3 in it, from an endpoint that answers a key no blob has with
  a success too (a web server's page at every path), is the store failing as well: not an
  object that fails verification blob after blob, nor an upload made.
  An upload the store refuses (a 4xx: a read-only key, an object too large) is counted and
  logged, but is no failure of the store: the tier goes on reading from it. One it answers
  with trouble (a 5xx: a full drive's 507, a throttling 503; a 404; a 408 or 429; a 400
  ``RequestTimeout``, a body that came too slowly) rests the uploads alone for
  ``RETRY_AFTER`` seconds (what waited is dropped, one WARNING per burst; a repair is kept,
  and goes once the rest is over): a store that serves reads but takes no writes is read
  from all the while. An upload that got no answer at all (unreachable, timed out) is the
  store in trouble, as above.
- A replica meant only to read the bucket (a read-only key given on purpose: an edge replica,
  a second site) is made with ``concurrency`` 0 (``shared.uploads = 0``): it queues and sends
  no upload at all (nor a repair), so it is never ``degraded`` for uploads it does not make;
  ``/health`` says ``"uploads": "off"``. A bad object it finds is fetched upstream, left to a
  replica that uploads to replace; once its HEAD shows it replaced (another ETag, else
  Last-Modified: :data:`BAD_RECHECK`), it is read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from docxy.cache.blobs import DiskBlobStore
from docxy.cache.errors import FetchFailed, FetchUnanswered, VerifyError
from docxy.cache.files import BlobFile
from docxy.cache.fill import Download, Handover, Resume
from docxy.config import SharedConfig
from docxy.core.bounded import LruDict
from docxy.core.digests import Digest
from docxy.core.headers import content_length
from docxy.core.stamps import utc_stamp
from docxy.shared.body import ObjectBody, body_error
from docxy.shared.objects import (
    BlobChanged,
    Bucket,
    NoFreeConnection,
    NotAnS3Store,
    ObjectStore,
    ObjectStoreError,
)
from docxy.shared.uploads import UploadQueue

log = logging.getLogger(__name__)

#: Seconds the tier is skipped after the object store failed.
RETRY_AFTER = 30.0
#: The store's client timeouts (seconds to connect; without a byte): a store that hangs costs a
#: miss this long at most, once per RETRY_AFTER, before it goes straight to the upstream.
SHARED_CONNECT = 3.0
SHARED_READ = 15.0
#: Blobs remembered as bad in the object store (read from upstream, overwritten on upload).
MAX_BAD = 4096
#: Seconds before a blob whose object was found bad has that object asked about again (a HEAD,
#: at most one per this while and blob): replaced since (another ETag, else Last-Modified: a
#: replica that uploads put the verified blob over it), it is read again. A replica that
#: uploads replaces the object itself; one that only reads (``shared.uploads = 0``) has no
#: other way to learn it, and fetched the blob upstream until a restart.
BAD_RECHECK = 60.0
#: The ``origin`` of a fill from the object store (``Download.origin``).
ORIGIN = "shared"
#: Seconds between two log lines saying the tier's client had no free connection.
NO_CONNECTION_LOG_EVERY = 60.0


@dataclass
class BadObject:
    """A blob whose object was found bad: which object (``stamp``: its ETag, else its
    Last-Modified; None: it said neither), and when it was found so or last asked about
    (monotonic)."""

    stamp: str | None
    asked: float


@dataclass
class SharedCounts:
    """Since start, for /health and /metrics."""

    hits: int = 0  # local fills from the object store, counted as each ends (not corrupt)
    misses: int = 0  # asked, not there
    corrupt: int = 0  # objects found not to be the blob (digest, or a length denied)
    uploaded: int = 0
    upload_skipped: int = 0  # already stored
    upload_failed: int = 0
    resumed: int = 0  # fills from an object whose body broke off, finished from the upstream
    # (counted once the rest was read to its end and the whole verified: not when asked for)
    errors: int = 0  # requests failed for the store's trouble (unreachable, 5xx, a refused read)


class SharedTier:
    def __init__(self, objects: ObjectStore, blobs: DiskBlobStore, concurrency: int) -> None:
        self.objects = objects
        self.blobs = blobs
        #: ``concurrency`` 0: a replica that only reads the bucket, and uploads nothing
        self.read_only = concurrency == 0
        self.uploads = UploadQueue(self._upload, concurrency)
        self.counts = SharedCounts()
        self._bad: LruDict[Digest, BadObject] = LruDict(MAX_BAD)
        #: objects whose body broke off under a fill the upstream's rest then made whole: the
        #: verified copy goes over each once the store answers again (:meth:`_offer_repairs`)
        self._repairs: dict[Digest, None] = {}
        self._failed_at: float | None = None
        self._uploads_failed_at: float | None = None  # the store's trouble with writes alone
        #: what the store last said that was not right, and when (wall clock): kept once it
        #: answers again, as the upstream's last error is, beside when it last answered
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_ok: float | None = None  # wall clock of its last answer that was no failure
        self._refusal: str | None = None  # the latest refused upload's reason, logged once
        self._uploads_refused = False  # the last upload made was refused (:meth:`state`)
        self.reachable: bool | None = None  # None: not asked yet
        self._probing = False  # a miss asks a store that failed whether it is back
        self._no_connection_logged = -NO_CONNECTION_LOG_EVERY  # monotonic time of that line
        #: bytes of running fills from objects whose length was taken on its word (it fit)
        self._trusting = 0
        #: lengths of objects not filled from (the upstream did not confirm them): checked
        #: against the blob the upstream's fill commits (:meth:`filled`), with each object's
        #: stamp (:class:`BadObject`)
        self._claims: LruDict[Digest, tuple[int, str | None]] = LruDict(MAX_BAD)

    # --- the source -------------------------------------------------------------------------

    async def download(self, digest: Digest, rest: Resume | None = None) -> Download | None:
        """The object as a fill's download, or None (absent, known bad, store in trouble).

        ``rest``: where the rest of the blob comes from should the object's body break off
        after its first bytes went to the fill's clients (:mod:`docxy.shared.body`); without
        it such a fill is aborted (its clients cut). It is asked for the blob's last byte
        first when the object's length is more than the cache has free (:meth:`_room_for`);
        without it such an object is not filled from. A blob whose object was found bad is
        not read from it unless the object was replaced since (:meth:`_replaced`)."""
        if self._resting() or self._probing:
            return None
        bad = self._bad.get(digest)
        if bad is not None and not await self._replaced(digest, bad):
            return None
        # After a failure, one miss at a time finds out whether the store is back: a hung store
        # must not hold every miss that comes meanwhile for the whole timeout.
        probe = self.reachable is False
        if probe:
            self._probing = True
        try:
            answer = await self.objects.open(digest)
            # The body's first bytes before the fill starts: a body that breaks off (or never
            # comes) before them is the store failing while no client has a byte, and the fill
            # reads the upstream instead. Later, the clients have bytes: the rest comes from
            # ``rest``.
            started = None if answer is None else await _started(answer)
        except ObjectStoreError as exc:
            self._read_failed(exc)
            return None
        finally:
            if probe:
                self._probing = False
        self._answered()
        if answer is None or started is None:
            self.counts.misses += 1
            return None
        first, chunks = started
        size = content_length(answer.headers.get("content-length"))
        stamp = _stamp(answer.headers)  # which object: should it be found bad
        if size is not None and size > self.blobs.max_size:
            # No blob that large is cached here: a fill from it would find no room before its
            # first byte, which says nothing against the object, and the verdict "larger than
            # the whole cache" would stand for the digest until a restart. Set aside as a bad
            # object is, asked about only by its HEAD once BAD_RECHECK passed (_replaced; the
            # upstream serves it meanwhile, passed through), but not blamed either: a replica
            # with a larger cache may have uploaded that very blob. Should the upstream's
            # blob, kept here, prove of another length, the object is counted corrupt then,
            # and replaced (:meth:`filled`).
            await answer.aclose()
            self._mark_bad(digest, stamp)
            self._claims.set(digest, (size, stamp))
            log.info(
                "blob %s: the shared object says %d bytes, more than the whole cache (%d): "
                "fetched upstream",
                digest,
                size,
                self.blobs.max_size,
            )
            return None
        try:
            room = await self._room_for(digest, size, stamp, rest)
        except BaseException:  # cancelled while the upstream was asked
            await answer.aclose()
            raise
        if room is None:
            await answer.aclose()
            return None
        self._trusting += room
        log.info("blob %s: filling from the shared store", digest)
        handover = Handover()
        blamed = False  # counted corrupt: not a hit as well

        def denied(said: str) -> None:
            # The body ran past the object's length, or broke off and the upstream's rest says
            # the blob is another length than the object claims: the object is not the blob
            # (its clients, told that length, are cut with the fill), as one that does not
            # verify is not.
            nonlocal blamed
            blamed = True
            self._length_bad(digest, said, stamp)

        body = ObjectBody(
            digest, size, answer, first, chunks, rest, self._trouble, handover, denied
        )

        def mismatch(_: VerifyError) -> str:
            nonlocal blamed
            body.mismatch()
            corrupt = self.counts.corrupt
            said = self._unverified(digest, handover, stamp)
            blamed = self.counts.corrupt != corrupt
            return said

        async def close() -> None:
            # Counted before the first await: the fill closes its download right after its
            # commit (or the failed sync that gave the blob up). A hit once it ended, so that
            # one found corrupt is that alone (the fill tells mismatch before this close).
            self._trusting -= room
            if not blamed:
                self.counts.hits += 1
            if body.finished(kept=self.blobs.lookup(digest) is not None):
                self.counts.resumed += 1
                self._repair(digest)
            await body.close()

        return Download(
            size,
            body.chunks(),
            close,
            mismatch=mismatch,
            origin=ORIGIN,
            handover=handover,
        )

    async def _room_for(
        self, digest: Digest, size: int | None, stamp: str | None, rest: Resume | None
    ) -> int | None:
        """Whether a fill may take the object's length, ``size``, on its word: the fill
        reserves that much before its first byte (evicting blobs to make room), and only its
        last byte shows whether the object is the blob. A length the cache has free (less what
        other objects taken on their word may still take) is taken: no blob is evicted for it;
        those bytes are the answer (the fill's close gives them back). A longer one is first
        asked of the upstream (``rest``: the last byte of a blob that long, whose answer says
        the blob's length); confirmed, it is taken (0: it may evict, as the upstream's own
        fill would), and so it is when the upstream cannot be asked (down, 429, 5xx): in an
        outage the bucket is what serves misses. Denied (another length, a 416, a 404), the
        fill is the upstream's (None), and the object's length is remembered: should the blob
        then committed be of another, the object is known bad (:meth:`filled`)."""
        if not size or size <= self._free_room():  # None: reserved as its bytes come
            return size or 0
        reason = "no upstream to ask"
        if rest is not None:
            try:
                last = await rest(size - 1, size)
            except FetchUnanswered as exc:
                log.info(
                    "blob %s: the upstream could not confirm the shared object's %d bytes (%s): "
                    "taken on the object's word",
                    digest,
                    size,
                    exc,
                )
                return 0
            except FetchFailed as exc:
                reason = str(exc)
            else:
                await last.close()
                if last.size is not None:
                    return 0
                reason = "its answer says no length"
        self._claims.set(digest, (size, stamp))
        log.info(
            "blob %s: the shared object says %d bytes, more than the cache has free, and the "
            "upstream did not confirm that length (%s): filled from the upstream",
            digest,
            size,
            reason,
        )
        return None

    def _length_bad(self, digest: Digest, said: str, stamp: str | None) -> None:
        """The object of ``digest`` claims a length it cannot have (``said``): counted corrupt,
        marked bad (fetched upstream from now on, and replaced by the upload of that blob)."""
        self.counts.corrupt += 1
        self._mark_bad(digest, stamp)
        self.objects.distrust()  # a page served as every object fails so too
        log.warning(
            "blob %s: the shared object says %s: marked bad, fetched upstream", digest, said
        )

    def _free_room(self) -> int:
        """Bytes a fill may reserve without evicting a blob, less those of fills from objects
        taken on their word (counted until their close, their reservations then twice: an
        object may be asked about when it need not, never taken when it should not)."""
        usage = self.blobs.usage()
        free = usage.max_size - usage.bytes - usage.reserved - usage.freeing
        return free - self._trusting

    def _unverified(self, digest: Digest, handover: Handover, stamp: str | None) -> str:
        """A fill from the object did not verify: what the tier makes of it, for the end of
        the fill's WARNING line (its only line: one failure, one line)."""
        if handover.at is not None:  # the store's part, or the upstream's rest: not known
            return "the shared object is not marked bad (which part was wrong cannot be told)"
        self.counts.corrupt += 1
        self._mark_bad(digest, stamp)
        self.objects.distrust()  # a page served as every object fails so too
        if self.read_only:
            return (
                "the shared object is marked bad: fetched upstream from now on (not replaced "
                "from here: this replica uploads nothing)"
            )
        return "the shared object is marked bad: fetched upstream from now on, then replaced"

    def _mark_bad(self, digest: Digest, stamp: str | None) -> None:
        """The object of ``digest`` (``stamp``: which one) is bad: the blob is fetched upstream
        until it is replaced (:meth:`_replaced`), by this replica's upload or another's."""
        self._bad.set(digest, BadObject(stamp, time.monotonic()))

    async def _replaced(self, digest: Digest, bad: BadObject) -> bool:
        """Whether the object of ``digest``, found bad, was replaced since: asked with a HEAD
        once :data:`BAD_RECHECK` seconds passed since it was found bad or last asked (misses
        meanwhile go upstream, the bad object not read again), and only while the store
        answers. Another stamp (ETag, else Last-Modified) than the bad one's: another object,
        read again (and, should it be bad too, marked so in its turn); the same, or none there
        (deleted: a replica's upload makes it anew, with another stamp), it stays bad. An
        object whose answers have no stamp at all is read again once per that while."""
        now = time.monotonic()
        if now - bad.asked < BAD_RECHECK or self.reachable is False:
            return False
        bad.asked = now  # before the HEAD: misses meanwhile do not ask too
        try:
            headers = await self.objects.head(digest)
        except ObjectStoreError as exc:
            self._read_failed(exc)
            return False
        self._answered()
        stamp = None if headers is None else _stamp(headers)
        if headers is None or (stamp is not None and stamp == bad.stamp):
            return False
        self._bad.pop(digest)
        self._claims.pop(digest)  # the length the bad object claimed: not this one's
        log.info(
            "blob %s: its shared object, found bad, was replaced since (%s, was %s): read again",
            digest,
            stamp,
            bad.stamp,
        )
        return True

    def _repair(self, digest: Digest) -> None:
        """The object broke off and the blob was made whole from the upstream: its verified
        copy is uploaded over it (a store that lost a chunk of it, say, breaks it at the same
        byte for every replica) once the store answers again, whatever its length says.
        Only a sha256 blob, as for any upload: a PUT is signed with the blob's digest as its
        payload hash, and another one's upload raised in the worker, again at every answer."""
        if digest.algorithm != "sha256" or self.read_only:
            return
        self._repairs[digest] = None
        while len(self._repairs) > MAX_BAD:
            del self._repairs[next(iter(self._repairs))]

    def _offer_repairs(self) -> None:
        if self._uploads_resting():
            return  # the next answer after the rest tries again
        for digest in list(self._repairs):
            if not self.blobs.holds(digest):
                del self._repairs[digest]  # gone here: another replica's fill repairs it
            elif self.uploads.waiting >= self.uploads.max_waiting:
                break  # the queue is full (not a dropped upload): the next answer tries again
            elif not self.uploads.offer(digest):
                continue  # queued already

    # --- the sink ---------------------------------------------------------------------------

    def filled(self, digest: Digest) -> None:
        """A fill from the upstream ended: queue a committed sha256 blob for upload, unless the
        store's last answer was a failure (a miss finds out whether it is back). An object not
        filled from for a length the upstream did not confirm (:meth:`_room_for`) is known bad
        once the blob proves of another length: counted corrupt, and replaced."""
        claim = self._claims.pop(digest)
        entry = self.blobs.lookup(digest) if claim is not None else None
        if claim is not None and entry is not None and entry.size != claim[0]:
            claimed, stamp = claim
            self._length_bad(digest, f"{claimed} bytes, the blob has {entry.size}", stamp)
        if (
            not self.read_only
            and digest.algorithm == "sha256"
            and self.blobs.holds(digest)
            and self.reachable is not False
            and not self._uploads_resting()
        ):
            self.uploads.offer(digest)

    async def _upload(self, digest: Digest) -> None:
        # Pinned while it is read: evicted under the upload, its blocks would stay held (for
        # minutes, a big layer to a slow store) with nothing counting them against the cap.
        with self.blobs.pinned(digest):
            await self._upload_pinned(digest)

    async def _upload_pinned(self, digest: Digest) -> None:
        try:
            file = BlobFile.open(self.blobs.path_of(digest))
        except FileNotFoundError:
            return  # evicted meanwhile
        except OSError as exc:  # no descriptor left, EACCES...
            self._unreadable(digest, exc)
            return
        try:
            size = file.size()
            replace = digest in self._bad or digest in self._repairs
            if not replace and await self.objects.size_of(digest) == size:
                self.counts.upload_skipped += 1
                return
            await self.objects.put(digest, file, size)
        except BlobChanged as exc:
            self.counts.upload_failed += 1
            self._repairs.pop(digest, None)  # no good copy here to repair the object with
            log.warning(
                "shared store: not uploading %s: its cached file changed since its fill (%s); "
                "`docxy cache gc --verify` removes such files",
                digest,
                exc,
            )
            return
        except OSError as exc:  # EIO...: the local disk's fault, not the store's
            self._unreadable(digest, exc)
            return
        except NoFreeConnection as exc:  # not sent: the store is not blamed
            self.counts.upload_failed += 1
            self._no_connection(exc)
            return
        except ObjectStoreError as exc:
            self.counts.upload_failed += 1
            if _refused(exc):
                self._upload_refused(digest, exc)
            elif exc.status is not None and not isinstance(exc, NotAnS3Store):
                self._upload_trouble(exc)
            else:
                self._trouble(exc)
            return
        finally:
            file.close()  # a read cancelled at shutdown may still run: it closes it then
        self._bad.pop(digest)
        self._repairs.pop(digest, None)
        self._uploads_refused = False
        if self._uploads_failed_at is not None:
            log.info("shared store %s takes uploads again", self.objects.bucket.endpoint)
            self._uploads_failed_at = None
        self._answered()
        self.counts.uploaded += 1
        log.info("shared store: uploaded %s (%d bytes)", digest, size)

    def _unreadable(self, digest: Digest, exc: OSError) -> None:
        """The blob's cached file could not be read for its upload: one failed upload, not
        the store in trouble, and the queue goes on with the next blob."""
        self.counts.upload_failed += 1
        self._repairs.pop(digest, None)  # no good copy here to repair the object with
        log.warning("shared store: not uploading %s: cannot read its cached file (%s)", digest, exc)

    def _upload_refused(self, digest: Digest, exc: ObjectStoreError) -> None:
        """The store answered an upload with a refusal of its own (a key that may only read,
        an object too large for one PUT): it is up, and reading from it still works. Logged
        once for each new reason; the tier does not rest. A refused repair is not offered
        again at every later answer (a whole blob sent again each time, refused each time)."""
        self._repairs.pop(digest, None)
        self._said(exc)
        self._uploads_refused = True
        if str(exc) != self._refusal:
            self._refusal = str(exc)
            log.warning("shared store: the upload of %s was refused (%s)", digest, exc)

    # --- health -----------------------------------------------------------------------------

    def _no_connection(self, exc: NoFreeConnection) -> None:
        """The tier's client had every connection busy (a burst of misses, each a fill of its
        own): the mirror's limit, so the store stays trusted and is not rested (which would
        send every miss upstream for ``RETRY_AFTER``, in the very burst sharing is for). Said
        once a minute at most."""
        now = time.monotonic()
        if now - self._no_connection_logged >= NO_CONNECTION_LOG_EVERY:
            self._no_connection_logged = now
            log.info(
                "shared store: %s: its connections are all busy (the mirror's limit, not the "
                "store's trouble): a miss goes upstream, an upload is not made",
                exc,
            )

    def _resting(self) -> bool:
        failed = self._failed_at
        return failed is not None and time.monotonic() - failed < RETRY_AFTER

    def _uploads_resting(self) -> bool:
        failed = self._uploads_failed_at
        return failed is not None and time.monotonic() - failed < RETRY_AFTER

    def _upload_trouble(self, exc: ObjectStoreError) -> None:
        """The store answered an upload with trouble of its own (a full drive's 507, a
        throttling 503): it still answers, and reads may work. Uploads alone rest for
        ``RETRY_AFTER`` (what waits is dropped); the first upload after it finds out."""
        self.counts.errors += 1
        self._said(exc)
        self.objects.distrust()
        if self._uploads_failed_at is None:  # once per burst
            log.warning(
                "shared store %s fails uploads (%s): none for %gs; reads from it go on",
                self.objects.bucket.endpoint,
                exc,
                RETRY_AFTER,
            )
        self._uploads_failed_at = time.monotonic()
        self._drop_waiting()

    def _read_failed(self, exc: ObjectStoreError) -> None:
        """A read of the store (an object's GET or HEAD) failed: a request that never left
        (no free connection) does not blame the store; anything else is trouble."""
        if isinstance(exc, NoFreeConnection):
            self._no_connection(exc)
        else:
            self._trouble(exc)

    def _trouble(self, exc: ObjectStoreError) -> None:
        self.counts.errors += 1
        self._said(exc)
        self.objects.distrust()  # asked again whether it is an S3 store (a web server now?)
        if self.reachable is not False:  # once per burst
            log.warning(
                "shared store %s in trouble (%s): pulls go to the upstream for %gs",
                self.objects.bucket.endpoint,
                exc,
                RETRY_AFTER,
            )
        self.reachable = False
        self._failed_at = time.monotonic()
        self._drop_waiting()

    def _drop_waiting(self) -> None:
        dropped = self.uploads.drop_waiting()  # not tried one by one against the same store
        if dropped:
            log.info(
                "shared store: %d queued uploads dropped while it rests (a later fill uploads "
                "them, here or on another replica)",
                dropped,
            )

    def _said(self, exc: ObjectStoreError) -> None:
        self.last_error, self.last_error_at = str(exc), time.time()

    def _answered(self) -> None:
        self.last_ok = time.time()
        if self.reachable is False:
            log.info("shared store %s answers again", self.objects.bucket.endpoint)
        self.reachable = True
        self._failed_at = None
        self._offer_repairs()

    def degraded_by(self) -> str | None:
        """Why the tier is ``degraded`` (reads answered, but its uploads do not get through),
        a key of :data:`DEGRADED`; None when it is not (down, not asked yet, or fine)."""
        if not self.reachable:
            return None
        if self._uploads_failed_at is not None:  # cleared by the next upload taken
            return "uploads_failing"
        if self._uploads_refused:
            return "uploads_refused"
        if self.uploads.waiting >= self.uploads.max_waiting:
            return "upload_queue_full"
        return None

    def state(self) -> tuple[str, str | None]:
        """How the tier is doing, for the badge of ``/health`` and the status page, and why
        when it is ``degraded`` (:meth:`degraded_by`): ``not asked yet``, ``unreachable``,
        ``degraded`` or ``reachable``. The reason names no endpoint nor the store's words
        (``last_error``, on the admin listener, has them)."""
        if self.reachable is None:
            return "not asked yet", None
        if not self.reachable:
            return "unreachable", None
        why = self.degraded_by()
        return ("reachable", None) if why is None else ("degraded", DEGRADED[why])

    def report(self) -> dict[str, object]:
        """The ``shared`` detail of ``/status.json`` (never the mirror's status)."""
        bucket = self.objects.bucket
        return {
            "endpoint": bucket.endpoint,
            "bucket": bucket.bucket,
            "reachable": self.reachable,
            "last_ok": utc_stamp(self.last_ok),
            "last_error": self.last_error,
            "last_error_at": utc_stamp(self.last_error_at),
            **self.public_report(),
        }

    def public_report(self) -> dict[str, object]:
        """The ``shared`` part of the public ``/health``: how the tier is doing, not where the
        bucket is nor what the store said (an S3 endpoint is often an internal address; an
        error message can name the bucket, the key and the account)."""
        state, reason = self.state()
        return {
            "reachable": self.reachable,
            "state": state,
            "reason": reason,
            "uploads": "off" if self.read_only else "on",  # off: a read-only replica
            **vars(self.counts),
            "uploads_waiting": self.uploads.waiting,
            "uploads_dropped": self.uploads.dropped,
        }


async def _started(answer: httpx.Response) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first chunk of the answer's body (empty: an empty object) and the rest of it; a
    failure closes the answer. Read raw: the blob is the bytes the object holds, whatever
    ``Content-Encoding`` its metadata says (httpx would undo it, into other bytes)."""
    body = answer.aiter_raw()
    try:
        return await anext(body, b""), body
    except httpx.HTTPError as exc:
        await answer.aclose()
        raise body_error(exc) from exc
    except BaseException:  # cancelled: the fill's task ends
        await answer.aclose()
        raise


def _stamp(headers: httpx.Headers) -> str | None:
    """Which object an answer is of: its ETag, else its Last-Modified (None: neither said)."""
    return headers.get("etag") or headers.get("last-modified") or None


#: S3 error codes of a 4xx that says "not now", not "no": trouble that passes, as a 503
#: ``SlowDown`` does. ``RequestTimeout`` (400): the body came too slowly (a busy link, a loaded
#: store); ``OperationAborted`` (409): a conflicting operation on the key is under way.
TRANSIENT_CODES = frozenset({"RequestTimeout", "OperationAborted"})


#: Why a tier that answers reads is ``degraded`` (:meth:`SharedTier.degraded_by`): a fixed
#: key (docxy_shared_degraded's ``reason`` label) → the reason ``/health`` and the status page
#: give.
DEGRADED = {
    "uploads_refused": "the store refuses uploads (see last_error)",
    "uploads_failing": "the store fails uploads (see last_error)",
    "upload_queue_full": "the upload queue is full: new uploads are dropped",
}


def _refused(exc: ObjectStoreError) -> bool:
    """A 4xx answer: the store is up and says no to this request (but 408 and 429, or an S3
    code of :data:`TRANSIENT_CODES`: it is slow or overloaded, which is trouble; and 404: no
    such bucket, or no S3 store at that address, where an upload makes its key)."""
    if exc.status is None or not 400 <= exc.status < 500:
        return False
    return exc.status not in (404, 408, 429) and exc.code not in TRANSIENT_CODES


def open_tier(config: SharedConfig, blobs: DiskBlobStore, http: httpx.AsyncClient) -> SharedTier:
    """The tier for ``config`` (enabled) over the local ``blobs``, sending through ``http``."""
    assert config.endpoint and config.bucket and config.access_key and config.secret_key
    bucket = Bucket(
        config.endpoint,
        config.bucket,
        config.region,
        config.access_key,
        config.secret_key,
        config.prefix,
    )
    return SharedTier(ObjectStore(bucket, http), blobs, config.uploads)
