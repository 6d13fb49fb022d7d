"""Content-addressed blob storage on local disk, with coalesced fills and image-aware eviction.

Layout under ``root``: ``blobs/<algo>/<xx>/<hex>`` holds committed, verified blobs only;
``tmp/`` holds fills in progress. Nothing else is stored: the index is rebuilt from the files
on :meth:`DiskBlobStore.open` (in a worker thread: until it is read, a blob missing from the
index is looked up on disk), and recency survives restarts as the files' mtime.

Eviction asks the manifest store (:attr:`DiskBlobStore.catalog`) which images need which blobs
and evicts as :func:`docxy.cache.images.plan_eviction` says: blobs no image needs first, then
whole images, least recently pulled first. Without a catalogue it is plain LRU. It starts when
a fill needs room that committed blobs and the other fills' reservations leave no more of under
``max_size`` (and at start over it, :meth:`DiskBlobStore.check_at_start`; a tenth on a full
disk, :meth:`DiskBlobStore._disk_full`), and frees down to :func:`low_water`, so the plan over
the whole catalogue is made once per that many bytes, in a worker thread over a snapshot; the
event loop only applies it, a chunk at a time, re-checking each blob as it goes.

The cap is a promise about the disk: a fill reserves its length (the upstream's Content-Length,
or its bytes as they come when there is none) before writing, committed blobs, reservations,
evicted files not yet deleted and aborted fills' temp files not yet freed (removed, but held
open by a descriptor) together never pass ``max_size``, and a fill that gets no room
(larger than the cache, or the rest is pinned or needed) is not written at all: it ends with
:class:`NoRoom` and the route passes the blob through.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import (
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from docxy.cache.errors import BlobInUse, CacheUnreadable, CacheUnwritable, NoRoom
from docxy.cache.files import (
    close_after_reading,
    close_off_loop,
    open_quietly,
    os_error,
    unlink_quietly,
)
from docxy.cache.fill import (
    PUMP_BUFFER,
    PUMP_DEPTH,
    RECENT,
    WRITE_BUFFER,
    BlobFollower,
    BlobWriter,
    Fetch,
    FillState,
    InFlight,
    run_fill,
)
from docxy.cache.images import (
    EvictionPlan,
    Image,
    ImageCatalog,
    ImageKey,
    below,
    plan_eviction,
)
from docxy.cache.reader import READ_CHUNK, BlobReader
from docxy.cache.startup import StartRead, waited_off_loop
from docxy.core.bounded import LruDict
from docxy.core.digests import Digest, blob_relpath, digest_from_relpath
from docxy.tasks import spawn
from docxy.threads import soon_on

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Read sizes shrink to keep the total of in-flight reads near this budget (see RSS benchmark).
READ_BUDGET = 16 * 1024 * 1024
MIN_READ_CHUNK = 256 * 1024
#: Upstream reads held by the fills running at once share this budget (per fill, PUMP_DEPTH
#: being hashed and RECENT kept for its followers).
PUMP_BUDGET = 16 * 1024 * 1024
MIN_PUMP_BUFFER = 32 * 1024
#: Seconds misses go uncached after the cache failed to write (disk full...).
WRITE_FAILURE_BACKOFF = 60.0
#: Eviction frees down to this share of ``max_size``, but never more than LOW_WATER_GAP below it.
LOW_WATER = 0.9
LOW_WATER_GAP = 8 * 1024**3
#: A fill that needs room waits for at most this many evictions, and this many seconds in all
#: (``cache.room_wait``), then passes the blob through.
ROOM_ATTEMPTS = 2
ROOM_WAIT = 30.0
#: How long a fill short of room counts on removed files still held open being freed, before
#: it evicts instead: an aborted fill's temp file is held by its followers until their clients
#: are done reading the bytes it kept, which a slow client can take minutes over.
UNLINKED_GRACE = 1.0
#: Seconds a blob that found no room passes straight through, unless the room it needed is
#: free sooner (larger than the cache: always).
NO_ROOM_BACKOFF = 60.0
#: Blobs remembered as having found no room, least recently seen forgotten first.
NO_ROOM_MEMORY = 1024
#: Plans made when an image it would forget was pulled (or an index above it stored) while
#: the one before was being made.
PLAN_ATTEMPTS = 3
#: How the blobs a mirror deletes in a worker thread are named in ``tmp/`` meanwhile (evicted,
#: unreadable): a command beside it leaves them to it (they keep the blob's old mtime).
EVICTED, UNREADABLE = "evicted-", "unreadable-"
TRASH_PREFIXES = (EVICTED, UNREADABLE)
#: Blobs an eviction takes off their names between two turns of the event loop (a rename
#: each, 0.3 ms on a slow overlay file system; the unlinks are done in a worker thread).
APPLY_CHUNK = 32


def low_water(max_size: int) -> int:
    """Where eviction stops: ``max_size`` less 10% of it, or less 8 GiB for caches over 80 GiB."""
    return max_size - min(max_size - int(max_size * LOW_WATER), LOW_WATER_GAP)


#: What :meth:`BlobStore.fetch_or_join` hands out: a cache hit, the one writer, or a follower.
Fill = BlobReader | BlobWriter | BlobFollower


def file_system_size(path: Path) -> int:
    """The size of the file system holding ``path`` (raises OSError): read through this one
    function so that the unit tests can make every disk look large (their conftest), and the
    start-up WARNING of a cap over the disk depends on no host's /tmp."""
    fs = os.statvfs(path)
    return fs.f_blocks * fs.f_frsize


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """A committed blob (or the temp file of a fill whose blob verified: see ``lookup``)."""

    digest: Digest
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True, slots=True)
class Usage:
    entries: int
    bytes: int
    max_size: int
    in_flight: int
    pinned: int
    reserved: int = 0  # bytes the running fills may still grow to, counted against max_size
    #: Bytes of removed files not freed yet (evicted blobs being deleted, aborted fills' temp
    #: files still held open), counted against max_size until they are.
    freeing: int = 0


@dataclass(frozen=True, slots=True)
class GcReport:
    removed_tmp: int = 0
    removed_stray: int = 0
    removed_corrupt: int = 0
    evicted: int = 0
    freed_bytes: int = 0  # of the files this gc removed (temp, stray, corrupt, evicted)
    #: Of the blobs that went from disk meanwhile without this gc (a live mirror's evictions,
    #: `docxy cache rm`): not freed by it, so not in ``freed_bytes``.
    gone_bytes: int = 0
    #: Blobs it meant to evict that the disk kept (read-only, another owner's files).
    evict_failed: int = 0
    #: Bytes still kept over ``max_size`` after it evicted (blobs being read are left alone).
    over_bytes: int = 0
    #: Corrupt blobs it kept: the disk refused to delete an image that needs one (--verify).
    corrupt_kept: int = 0
    #: Corrupt blobs it kept because they are being read (pinned: open in a process).
    corrupt_in_use: int = 0


#: A store's eviction counters (blobs evicted, their bytes, bytes found gone, blobs kept).
EvictionCounts = tuple[int, int, int, int]


@dataclass(slots=True)
class GcTally:
    """What a :meth:`DiskBlobStore.gc` has done so far, filled in as it goes: :meth:`report`
    is the report of one that ended early (interrupted, or stopped by a file it may not
    delete) as much as of one that ran to its end."""

    removed_tmp: int = 0
    removed_stray: int = 0
    removed_corrupt: int = 0
    corrupt_kept: int = 0
    corrupt_in_use: int = 0
    freed_bytes: int = 0  # of the temp, stray and corrupt files (evicted blobs: the counters)
    gone_bytes: int = 0
    over_bytes: int = 0
    #: Temp and stray files the disk would not delete (another owner's: a root run's before
    #: the CLI acted as the cache's owner; EIO), with why: gc did the rest.
    refused: list[tuple[Path, OSError]] = field(default_factory=list)
    #: Where the store's eviction counters are read, and what they were when gc began evicting.
    counts: Callable[[], EvictionCounts] | None = None
    since: EvictionCounts = (0, 0, 0, 0)

    def evicting(self, counts: Callable[[], EvictionCounts]) -> None:
        """gc starts evicting: its evictions are what ``counts`` adds from now on."""
        self.counts, self.since = counts, counts()

    def report(self) -> GcReport:
        evicted = evicted_bytes = vanished = failed = 0
        if self.counts is not None:
            now = self.counts()
            evicted, evicted_bytes, vanished, failed = (
                a - b for a, b in zip(now, self.since, strict=True)
            )
        return GcReport(
            removed_tmp=self.removed_tmp,
            removed_stray=self.removed_stray,
            removed_corrupt=self.removed_corrupt,
            evicted=evicted,
            freed_bytes=self.freed_bytes + evicted_bytes,
            gone_bytes=self.gone_bytes + vanished,
            evict_failed=failed,
            over_bytes=self.over_bytes,
            corrupt_kept=self.corrupt_kept,
            corrupt_in_use=self.corrupt_in_use,
        )


class BlobStore(Protocol):
    """What the routes use; a store shared by several replicas would implement the same."""

    def cached(self, digest: Digest) -> bool: ...
    def lookup(self, digest: Digest) -> BlobEntry | None: ...
    def open_read(
        self, digest: Digest, start: int = 0, stop: int | None = None
    ) -> BlobReader | None: ...
    def filling(self, digest: Digest) -> bool: ...
    async def fetch_or_join(self, digest: Digest) -> Fill: ...
    async def fill(self, digest: Digest, fetch: Fetch) -> BlobReader | BlobFollower: ...
    def list_entries(self) -> list[BlobEntry]: ...
    def usage(self) -> Usage: ...
    def remove(self, digest: Digest) -> bool: ...
    async def commits_done(self) -> None: ...
    async def gc(
        self,
        *,
        verify: bool = False,
        tmp_age: float = 3600.0,
        evict: bool = True,
        tally: GcTally | None = None,
        spare: Collection[str] = (),
    ) -> GcReport: ...


class DiskBlobStore:
    """A :class:`BlobStore` in one directory, owned by one process."""

    def __init__(
        self,
        root: Path,
        max_size: int,
        *,
        write_buffer: int = WRITE_BUFFER,
        read_chunk: int = READ_CHUNK,
        room_wait: float = ROOM_WAIT,
        direct_writes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.max_size = max_size
        self.room_wait = room_wait  # seconds a fill short of room waits for it, in all
        #: Fills write whole blocks past the page cache (``cache.direct_writes``).
        self.direct_writes = direct_writes
        self._write_buffer = write_buffer
        self._read_chunk = read_chunk
        self._index: OrderedDict[Digest, BlobEntry] = OrderedDict()  # least recent first
        self._total = 0
        self._fills: dict[Digest, InFlight] = {}
        self._in_flight = 0
        self._reserved = 0  # by the running fills (InFlight.reserved), counted against the cap
        self._waiting: list[int] = []  # bytes each fill waiting for room wants: eviction frees
        self._trash = 0  # evicted bytes still on disk, being deleted in a worker thread
        #: Evicted bytes, and leftover temp files at start, that could not be deleted: on disk
        #: until the next start.
        self._stuck = 0
        self._unlinked = 0  # bytes of removed temp files still held open (InFlight.unlinked)
        #: Set (and replaced) when room may have grown: bytes freed, an eviction over.
        self._room_freed = asyncio.Event()
        #: Blobs that found no room: until when they pass through, why, and the bytes they
        #: wanted in all (free room of that size ends the wait early).
        self._no_room: LruDict[Digest, tuple[float, str, int]] = LruDict(NO_ROOM_MEMORY)
        self._pins: Counter[Digest] = Counter()
        self._write_failed_logged = False
        self._read_failed_logged = False
        #: An eviction for a full disk ran, and no blob was stored since: the disk is full of
        #: other files, and another would only shrink the cache away (see :meth:`_disk_full`).
        self._disk_full_evicted = False
        #: When writing a fill last failed (disk full...): the routes pass misses through a while.
        self.write_failed_at: float | None = None
        #: Since start, for /metrics: fills begun, clients that joined a fill another client was
        #: already streaming (coalesced: no upstream fetch of their own), blobs evicted.
        self.fills_started = 0
        self.followers_joined = 0
        self.evicted = 0
        self.evicted_bytes = 0
        self.evict_failed = 0  # blobs an eviction meant to delete and the disk kept
        #: Bytes of blobs an eviction found already gone from disk (another process removed them).
        self.vanished_bytes = 0
        #: Which cached images need which blobs (the manifest store); None: plain LRU eviction.
        self.catalog: ImageCatalog | None = None
        self._eviction: asyncio.Task[None] | None = None
        self._reading: StartRead[Walked] | None = None  # the index, read at open in a thread
        self._gone_while_reading: set[Digest] = set()
        #: The sizes the cached manifests give their blobs, while the index is still being
        #: read: the blobs it finds are held to them (:meth:`hold_to_sizes`).
        self._sizes_given: Mapping[Digest, int] | None = None
        #: Blobs committed in this run (verified as fetched) while the cached manifests' sizes
        #: are still to come: only files found on disk at start are held to those (a wrong
        #: descriptor size, which not every registry checks, would else drop a good blob).
        #: None once the sizes were applied: nothing is held to them after that.
        self._verified_here: set[Digest] | None = set()
        #: The start's check of the cap (:meth:`check_at_start`): tests wait for it.
        self.start_check: asyncio.Task[None] | None = None
        #: Eviction plans made since start (each over the whole catalogue, in a worker thread).
        self.plans = 0

    @classmethod
    def open(
        cls,
        root: Path,
        max_size: int,
        *,
        room_wait: float = ROOM_WAIT,
        direct_writes: bool = True,
        **options: int,
    ) -> DiskBlobStore:
        """Open for serving: delete leftover temp files, then rebuild the index from disk in a
        worker thread. Blobs are served meanwhile (one ``stat`` finds a blob the index does not
        hold yet) and eviction waits for the index; a fill committed meanwhile counted only the
        blobs known then, so the cap holds again from the next fill on. A read that fails
        stays failed (a lookup raises its error) until its first use a while later reads
        again (:class:`~docxy.cache.startup.StartRead`)."""
        store = cls(root, max_size, room_wait=room_wait, direct_writes=direct_writes, **options)
        store._clear_leftovers()
        (store.root / "blobs").mkdir(parents=True, exist_ok=True)
        store._reading = StartRead(
            "docxy-blob-index", "reading the blob index", store._walk, fresh=store._read_afresh
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return store  # taken over at first use
        store._reading.add_done_callback(partial(_take_over_on, loop, store))
        return store

    def _read_afresh(self) -> None:
        """Before the index is read again after a failed read: the blobs found gone while
        the failed one ran are not left out of the fresh one, which sees the disk as it is
        (one fetched again since is there)."""
        self._gone_while_reading.clear()

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path_of(self, digest: Digest) -> Path:
        return self.root / blob_relpath(digest)

    # --- recovery ---------------------------------------------------------------------------

    def clear_tmp(self, older_than: float | None = None) -> int:
        """Remove temp files not ours (fills of a process that died); returns how many.

        ``older_than`` (seconds) spares younger files, for a CLI run beside a live server, and
        the blobs such a server went on deleting less than that ago (:data:`TRASH_PREFIXES`, by
        the time of their rename): not this command's work, nor a sign of a fill that died.
        """
        tally = GcTally()
        self._clear_tmp(older_than, tally)
        return tally.removed_tmp

    def _clear_leftovers(self) -> None:
        """At a serving start, :meth:`clear_tmp`; but a file the disk refuses to delete (a cache
        disk remounted read-only under the fill that left it, EPERM, EIO) is said and kept, its
        bytes counted against ``max_size`` until a later start deletes it: raised, it stopped
        the mirror's start, and what is cached went unserved."""
        refused: list[tuple[Path, int, OSError]] = []
        self._clear_tmp(None, GcTally(), refused)
        if not refused:
            return
        nbytes = sum(size for _, size, _ in refused)
        log.warning(
            "cache: cannot delete %d leftover temp file(s) in %s (%s); kept, their %d bytes"
            " count against the cache size until a start deletes them",
            len(refused),
            self.tmp_dir,
            os_error(refused[0][2]),
            nbytes,
        )
        self._stuck += nbytes

    def _clear_tmp(
        self,
        older_than: float | None,
        tally: GcTally,
        refused: list[tuple[Path, int, OSError]] | None = None,
        *,
        spare: Collection[str] = (),
    ) -> None:
        """:meth:`clear_tmp`, counting each file removed (and its bytes) in ``tally`` as it
        goes: a delete the disk refuses (EACCES, EPERM, EIO) raises, and the files removed
        before it are counted all the same (gc's report of them); given ``refused``, it is
        added there instead (with the file's size) and the rest are deleted."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        ours = {fill.tmp_path.name for fill in self._fills.values()}.union(spare)
        cutoff = None if older_than is None else time.time() - older_than
        before = tally.removed_tmp
        # Listed whole first: a refused delete leaves no directory listing open behind it.
        entries = list(os.scandir(self.tmp_dir))
        try:
            for entry in entries:
                if entry.name in ours:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # gone since listed: a live mirror's fill committed
                    continue
                # A live mirror's evicted or unreadable blob keeps the blob's old mtime while that
                # mirror deletes it; its rename, the ctime, says when it went there.
                if stat.S_ISDIR(st.st_mode):  # not a fill's (made by hand): it stopped start-up
                    log.warning("cache: %s is a directory, not a temp file: left alone", entry.path)
                    continue
                trash = entry.name.startswith(TRASH_PREFIXES)
                if cutoff is not None and (st.st_ctime if trash else st.st_mtime) > cutoff:
                    continue
                try:
                    unlinked = _unlink(Path(entry.path))
                except OSError as exc:
                    if refused is None:
                        raise
                    refused.append((Path(entry.path), held_bytes(st), exc))
                    continue
                if unlinked:
                    tally.removed_tmp += 1
                    tally.freed_bytes += held_bytes(st)
        finally:
            if removed := tally.removed_tmp - before:
                log.info("cache: removed %d leftover temp files", removed)

    def scan(self, *, strict: bool = False) -> list[Path]:
        """Rebuild the index from ``blobs/``; returns stray paths that are not blobs.
        ``strict`` (``docxy cache ...``): a folder it may not list raises, rather than count
        as empty (see :meth:`_walk`)."""
        found, strays = self._walk(strict=strict)
        found.sort(key=lambda e: e.last_used)
        self._index = OrderedDict((e.digest, e) for e in found)
        self._total = sum(e.size for e in found)
        return strays

    def _walk(self, *, strict: bool = False) -> Walked:
        """Every blob under ``blobs/`` (and the stray files there); reads only, and makes
        nothing (``docxy cache ls`` of a cache without ``blobs/`` leaves it so). A folder it
        may not list (another user's, 0700; EIO) is said in a WARNING, its blobs left out
        (fetched again when pulled); ``strict``, it raises: a command run as another user than
        the mirror's would else count them as not there (``du``: 'blobs: 0')."""
        found: list[BlobEntry] = []
        strays: list[Path] = []
        base = self.root / "blobs"
        if not base.exists():  # none kept yet: nothing to list (a serving open made it)
            return found, strays
        unreadable: list[str] = []
        unlisted: list[OSError] = []
        now = time.time()  # a later file time (the clock ran ahead, since set right) is now's
        for dirpath, _dirs, files in os.walk(base, onerror=unlisted.append):
            for name in files:
                path = Path(dirpath, name)
                digest = digest_from_relpath(path.relative_to(base).parts)
                try:
                    st = path.lstat()
                except FileNotFoundError:  # removed since listed (`docxy cache rm` meanwhile)
                    continue
                except OSError as exc:  # EIO, EACCES: this one is not cached; the rest are
                    unreadable.append(f"{name}: {exc.strerror or exc}")
                    continue
                if digest is None or not stat.S_ISREG(st.st_mode):
                    strays.append(path)
                    continue
                found.append(BlobEntry(digest, path, st.st_size, min(st.st_mtime, now)))
        if unlisted and strict:
            raise unlisted[0]
        if unlisted:
            log.warning(
                "cache: %d folders under %s cannot be listed, their blobs left out (fetched"
                " again when pulled): %s",
                len(unlisted),
                base,
                "; ".join(f"{exc.filename}: {exc.strerror or exc}" for exc in unlisted[:3])
                + (" ..." if len(unlisted) > 3 else ""),
            )
        if unreadable:
            log.warning(
                "cache: %d blob files under %s cannot be read, left out (fetched again when"
                " pulled): %s",
                len(unreadable),
                base,
                "; ".join(unreadable[:3]) + (" ..." if len(unreadable) > 3 else ""),
            )
        return found, strays

    def _index_read(self) -> bool:
        """Whether the index is complete (taking over the worker thread's, once it is done: on
        the loop, which :meth:`open` asks to do so as soon as the thread ends)."""
        if self._reading is not None and self._reading.done():
            found, _ = self._reading.result()
            self._reading = None
            for entry in found:  # blobs looked up, stored or gone meanwhile are known better
                if entry.digest not in self._index and entry.digest not in self._gone_while_reading:
                    self._index[entry.digest] = entry
            self._index = OrderedDict(sorted(self._index.items(), key=lambda i: i[1].last_used))
            self._total = sum(e.size for e in self._index.values())
            self._gone_while_reading.clear()
            sizes, self._sizes_given = self._sizes_given, None
            if sizes is not None:
                self._drop_resized(list(self._index.values()), sizes)
                self._verified_here = None  # the check is done
        return self._reading is None

    def _index_ready(self) -> bool:
        """:meth:`_index_read`, but a failed read (said once) is not ready: a blob is found on
        disk then, as while the index is read, and the index read again a while later
        (:class:`~docxy.cache.startup.StartRead`); raised, each blob request got a 500."""
        try:
            return self._index_read()
        except OSError:
            return False

    @property
    def index_complete(self) -> bool:
        """Whether the blob index read at start is done (never waits): until then
        :meth:`usage` counts only the blobs known so far; and while it failed (read again a
        while later): /health and /metrics say so, not a 500."""
        return self._index_ready()

    async def indexed(self) -> None:
        """Wait, without blocking the loop, until the index is read (see :meth:`open`). A
        failed read raises its error (at once, or once the read in flight fails)."""
        if self._reading is not None and not self._reading.done():
            await waited_off_loop(self._reading.future)
        self._index_read()

    def _entry(self, digest: Digest) -> BlobEntry | None:
        """The index's entry; while the index is being read, a blob found on disk joins it."""
        entry = self._index.get(digest)
        if entry is not None:
            return entry
        if self._index_ready():
            return self._index.get(digest)  # (the read may have just been taken over)
        path = self.path_of(digest)
        try:
            st = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or digest in self._gone_while_reading:
            return None
        entry = BlobEntry(digest, path, st.st_size, min(st.st_mtime, time.time()))
        self._index[digest] = entry
        self._total += entry.size
        if self._sizes_given is not None:  # its length, read from disk, is held to them too
            self._drop_resized([entry], self._sizes_given)
            return self._index.get(digest)
        return entry

    # --- reads ------------------------------------------------------------------------------

    def holds(self, digest: Digest) -> bool:
        """Whether the blob is committed here, from the index (its recency untouched)."""
        return self._entry(digest) is not None

    def cached(self, digest: Digest) -> bool:
        """Whether :meth:`lookup` would find ``digest`` now, without marking it used."""
        return self._entry(digest) is not None or self._verified_entry(digest) is not None

    def lookup(self, digest: Digest) -> BlobEntry | None:
        """The committed blob, marked as just used; None if not cached. A fill whose blob
        verified, its commit's sync still running, is found too (its temp file: every byte is
        in it, and a HEAD or a Range right after a pull should not go upstream)."""
        entry = self._entry(digest)
        if entry is None:
            return self._verified_entry(digest)
        now = time.time()
        try:
            os.utime(entry.path, (now, now))
        except FileNotFoundError:  # removed behind our back (e.g. by the CLI)
            self._forget(entry)
            return None
        except OSError:  # a read-only disk (EROFS), a file of another owner (EPERM): served
            pass  # all the same, its recency noted here only (a restart forgets it)
        entry = BlobEntry(digest, entry.path, entry.size, now)
        self._index[digest] = entry
        self._index.move_to_end(digest)
        return entry

    def _verified_entry(self, digest: Digest) -> BlobEntry | None:
        fill = self._fills.get(digest)
        if fill is None or not fill.verified or fill.size is None:
            return None
        return BlobEntry(digest, fill.tmp_path, fill.size, time.time())

    def _chunk_for_readers(self) -> int:
        """Read size, asked before every read: large alone, smaller when many read at once.

        Memory in flight is about three chunks per reader, so the chunk shrinks as readers
        grow (budget ``READ_BUDGET``), never below ``MIN_READ_CHUNK``.
        """
        readers = max(1, sum(self._pins.values()))  # every open reader is pinned
        return max(MIN_READ_CHUNK, min(self._read_chunk, READ_BUDGET // readers))

    def open_read(
        self, digest: Digest, start: int = 0, stop: int | None = None
    ) -> BlobReader | None:
        """A pinned reader of bytes ``[start, stop)`` (``stop`` exclusive), or None on a miss.

        Raises ValueError for a range outside the blob (the route answers 416), and
        :class:`CacheUnreadable` when its file cannot be opened now (no descriptor left, EIO):
        the blob stays cached and this client is passed through.
        """
        entry = self.lookup(digest)
        if entry is None:
            return None
        stop = entry.size if stop is None else stop
        if not 0 <= start <= stop <= entry.size:
            raise ValueError(f"range [{start}, {stop}) outside blob of {entry.size} bytes")
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:
            if self._index.get(digest) is entry:
                self._forget(entry)
            return None
        except OSError as exc:
            self._cache_read_failed(digest, exc)
            raise CacheUnreadable(f"cannot open the cached {digest}: {exc}") from exc
        self._read_failed_logged = False
        fill = self._fills.get(digest)
        if (fill is None or entry.path != fill.tmp_path) and not self._length_kept(entry, fd):
            return None  # dropped: a miss, fetched again
        self._pins[digest] += 1
        if fill is not None and entry.path == fill.tmp_path:  # a verified fill's temp file:
            fill.holders += 1  # held open, it counts as a follower's would, should it be removed
            release = partial(self._follower_closed, fill)
        else:
            release = partial(self._reader_closed, digest)
        return BlobReader(
            fd,
            size=entry.size,
            start=start,
            stop=stop,
            release=release,
            chunk_size=self._chunk_for_readers,
            broken=partial(self._cached_read_broke, entry),
        )

    def _length_kept(self, entry: BlobEntry, fd: int) -> bool:
        """Whether the file of committed ``entry``, open as ``fd``, still has the blob's length
        (one ``fstat``). One cut short or grown behind the mirror's back (by hand, a disk
        fault) would be served with the length the index has: a cut after the bytes it still
        holds, or bytes that do not hash. It is dropped as a read that broke drops it
        (:meth:`_cached_read_broke`), and ``fd`` closed."""
        try:
            size = os.fstat(fd).st_size
        except OSError:  # EIO: its reads say so
            return True
        if size == entry.size:
            return True
        close_after_reading(fd)
        self._cached_read_broke(
            entry, OSError(f"its file holds {size} bytes, not the blob's {entry.size}")
        )
        return False

    def _cached_read_broke(self, entry: BlobEntry, exc: OSError) -> None:
        """A read of cached ``entry`` failed (EIO under it, the file cut short behind our
        back): it is no longer cached, and the images needing it no longer offered, so the
        next pull fetches it again rather than fail the same way each time. Its file is
        deleted (a new fill's commit takes the name anyway); a verified fill's temp file is
        left to its fill."""
        if self._index.get(entry.digest) is not entry:
            return  # dropped already (another reader's failure, an eviction)
        fill = self._fills.get(entry.digest)
        if fill is not None and entry.path == fill.tmp_path:
            return
        log.warning(
            "cache: cannot read the cached %s (%s): dropped from the cache, fetched again at"
            " its next pull",
            entry.digest,
            exc,
        )
        self._forget(entry)
        trash = self._trash_name(UNREADABLE, entry)
        try:  # off its name at once: a new fill may commit there before a thread deletes it
            os.rename(entry.path, trash)
        except OSError:
            return  # gone already, or the disk refuses: a new fill's commit replaces it
        spawn(f"delete unreadable {entry.digest}", asyncio.to_thread(unlink_quietly, trash))

    def _cache_read_failed(self, digest: Digest, exc: OSError) -> None:
        """One warning per run of failed opens (EMFILE comes in floods), the rest at DEBUG."""
        level = logging.DEBUG if self._read_failed_logged else logging.WARNING
        self._read_failed_logged = True
        log.log(level, "cache: cannot open %s (%s); passed through", digest, exc)

    def hold_to_sizes(self, sizes: Mapping[Digest, int]) -> None:
        """Drop every blob whose length is not the size ``sizes`` gives it (the cached
        manifests' descriptors, read at start: :attr:`ManifestStore.sizes_read`), and while
        the index is still being read, the blobs it finds as they come. The index takes a
        file's length as its blob's at start, so a file cut short or grown while the mirror
        was stopped (a disk fault, a write cache lost at power loss, a half-restored volume)
        passed :meth:`_length_kept` and was served wrong on every pull. One dict lookup a
        blob, no I/O (no hashing): a blob no cached manifest names is not checked."""
        if not self._index_ready():  # (a failed read: held to them when it is read again)
            self._sizes_given = sizes  # let go once the index is read
        self._drop_resized(list(self._index.values()), sizes)
        if self._sizes_given is None:
            self._verified_here = None  # the check is done

    def _drop_resized(self, entries: Iterable[BlobEntry], sizes: Mapping[Digest, int]) -> None:
        """Drop those of ``entries`` whose length is not the one ``sizes`` gives, with the
        images needing them (as :meth:`_cached_read_broke` does), in one WARNING."""
        verified: Collection[Digest] = self._verified_here or ()
        wrong = [
            (e, sizes[e.digest])
            for e in entries
            if sizes.get(e.digest, e.size) != e.size and e.digest not in verified
        ]
        if not wrong:
            return
        log.warning(
            "cache: %d cached blob(s) have another length than the cached manifests give"
            " (cut short or grown while the mirror was stopped: a disk fault?): dropped, with"
            " the images needing them, fetched again at their next pull: %s",
            len(wrong),
            "; ".join(f"{e.digest} holds {e.size} bytes, not {size}" for e, size in wrong[:3])
            + (" ..." if len(wrong) > 3 else ""),
        )
        trash: list[Path] = []
        for entry, _ in wrong:
            if self._index.get(entry.digest) is not entry:
                continue
            self._forget(entry)
            moved = self._trash_name(UNREADABLE, entry)
            with contextlib.suppress(OSError):  # the disk refuses: a new fill's commit replaces it
                os.rename(entry.path, moved)  # off its name now: a new fill may commit there
                trash.append(moved)
        if trash:
            spawn("delete resized blobs", asyncio.to_thread(_unlink_quietly_all, trash))

    # --- fills ------------------------------------------------------------------------------

    async def fill(self, digest: Digest, fetch: Fetch) -> BlobReader | BlobFollower:
        """Serve ``digest`` through the cache, fetching it upstream at most once.

        A hit gives a reader; a fill in flight gives a follower; otherwise the temp file is
        made first, then a named task runs ``fetch`` and tees it into the cache (see
        :func:`run_fill`), and the caller follows that fill. Raises :class:`CacheUnwritable`
        when no temp file can be made or opened to follow, or writing failed lately, and
        :class:`NoRoom` when this blob found no room lately: nothing is fetched then.
        """
        joined = self._join(digest)
        if joined is not None:
            return joined
        failed = self.write_failed_at
        if failed is not None and time.monotonic() - failed < WRITE_FAILURE_BACKOFF:
            raise CacheUnwritable("the cache failed to write lately")
        self._check_room_lately(digest)
        writer = self._start_fill(digest)
        if not writer.caching:
            reason = writer.fill.reason
            writer.abort(reason)
            raise CacheUnwritable(reason)
        try:
            follower = self._follow(writer.fill)  # joined before the fetch starts: no race
        except CacheUnwritable as exc:
            writer.abort(str(exc))  # nothing fetched: its caller passes the blob through
            raise
        spawn(f"fill {digest}", run_fill(writer, fetch))
        return follower

    def filling(self, digest: Digest) -> bool:
        """Whether a fill of ``digest`` is running (a request for it would join, not start one)."""
        return self._writing(digest) is not None

    async def fetch_or_join(self, digest: Digest) -> Fill:
        """A reader on a hit; else the writer if nobody is fetching ``digest``; else a follower.

        The building block of :meth:`fill`, for callers that feed the writer themselves. Raises
        :class:`CacheUnwritable` if the running fill's temp file cannot be opened to follow,
        :class:`CacheUnreadable` if the cached blob cannot be opened.
        """
        joined = self._join(digest)
        return joined if joined is not None else self._start_fill(digest)

    def _writing(self, digest: Digest) -> InFlight | None:
        fill = self._fills.get(digest)
        return fill if fill is not None and fill.state is FillState.WRITING else None

    def _join(self, digest: Digest) -> BlobReader | BlobFollower | None:
        """A follower of the fill of ``digest`` running now, else a reader of the cached blob
        (or of a fill's whose blob verified: all its bytes are in, as if committed)."""
        fill = self._writing(digest)
        if fill is None:
            return self.open_read(digest)
        if not fill.verified:
            return self._follow(fill)
        reader = self.open_read(digest)
        if reader is None:  # its temp file removed under it (`docxy cache gc`): never a
            # second fill of the same blob beside it
            raise CacheUnwritable(f"cannot read the verified fill of {fill.digest}: gone")
        return reader

    def _follow(self, fill: InFlight) -> BlobFollower:
        """A follower of ``fill``; :class:`CacheUnwritable` if its temp file cannot be opened
        (no descriptor left, or removed by `docxy cache gc` under a slow fill)."""
        try:
            fd = os.open(fill.tmp_path, os.O_RDONLY)
        except OSError as exc:
            raise CacheUnwritable(f"cannot follow the fill of {fill.digest}: {exc}") from exc
        if self._pins[fill.digest]:  # another client is streaming this fill already
            self.followers_joined += 1
        self._pins[fill.digest] += 1
        fill.holders += 1
        release = partial(self._follower_closed, fill)
        return BlobFollower(fill, fd, release, self._chunk_for_readers)

    def _follower_closed(self, fill: InFlight, fd: int) -> None:
        """A follower (or a reader of a verified fill's temp file) is done: unpinned now, one
        holder less of the temp file once closed."""
        self._unpin(fill.digest)
        close_after_reading(fd, partial(self.temp_closed, fill))

    def _reader_closed(self, digest: Digest, fd: int) -> None:
        self._unpin(digest)
        close_after_reading(fd)

    def _start_fill(self, digest: Digest) -> BlobWriter:
        name = f"{digest.algorithm}-{digest.hex}.{secrets.token_hex(6)}"
        fill = InFlight(digest, self.tmp_dir / name)
        try:
            fd: int | None = os.open(fill.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            self.cache_write_failed(fill, exc, "serving it uncached")
            fill.state, fill.reason = FillState.ABORTED, f"cannot create temp file: {exc}"
            fd = None
        else:
            self._fills[digest] = fill
            self.fills_started += 1
        return BlobWriter(
            fill, fd, self, self._write_buffer, self._pump_buffer, direct=self.direct_writes
        )

    def _pump_buffer(self) -> int:
        """A fill's upstream read size: each fill holds up to ``PUMP_DEPTH + RECENT`` reads of
        it (hashed in turn; the latest kept for its followers) and a buffer of one for its
        direct writes (:mod:`docxy.cache.directwrite`), 1 MiB each alone, less when many fills
        share ``PUMP_BUDGET``; whole 32 KiB, so that those writes stay whole blocks."""
        share = PUMP_BUDGET // (max(1, len(self._fills)) * (PUMP_DEPTH + RECENT + 1))
        return max(MIN_PUMP_BUFFER, min(PUMP_BUFFER, share - share % MIN_PUMP_BUFFER))

    # FillHost: called by writers.

    async def reserve(self, fill: InFlight, nbytes: int) -> None:
        """Count ``nbytes`` more of ``fill`` against ``max_size`` before they are written,
        evicting first if they do not fit, or waiting for removed files to be freed: for
        ``room_wait`` seconds at most (see :meth:`_make_room`).

        Raises :class:`NoRoom` if the blob is larger than the cache, or the room cannot be
        made (what is left is pinned by readers and fills, or needed by images still offered);
        the blob then passes straight through for a while (see :meth:`_check_room_lately`).
        """
        wanted = fill.reserved + nbytes
        if wanted > self.max_size:
            reason = f"{wanted} bytes or more, larger than the whole cache ({self.max_size})"
            raise self._found_no_room(fill.digest, reason, float("inf"), wanted)
        await self.indexed()  # the cap counts every committed blob
        if self._room() < nbytes:
            self._waiting.append(nbytes)
            try:
                await self._make_room(fill, nbytes, wanted)
            finally:
                self._waiting.remove(nbytes)
        if self._fills.get(fill.digest) is fill and fill.state is FillState.WRITING:
            fill.reserved += nbytes
            self._reserved += nbytes

    async def _make_room(self, fill: InFlight, nbytes: int, wanted: int) -> None:
        """Wait until ``nbytes`` are free, ``room_wait`` seconds at most: for removed files
        being freed if their bytes will do (a follower's client cut by the abort, a close or
        an eviction's deletes in a worker thread; files still held open for
        :data:`UNLINKED_GRACE` only), else for an eviction (``ROOM_ATTEMPTS`` at most).
        Each fill waits on its own, woken whenever room may have grown; a fill that
        gave up has its temp file removed at once, so one waking after it waits for those
        bytes rather than giving up alongside it."""
        evictions: list[asyncio.Task[None]] = []
        grace_ends = time.monotonic() + UNLINKED_GRACE
        try:
            async with asyncio.timeout(self.room_wait):
                while self._room() < nbytes:
                    grace = grace_ends - time.monotonic()
                    soon = self._trash + (self._unlinked if grace > 0 else 0)  # never the stuck
                    if self._room() + soon < nbytes:
                        eviction = self._start_eviction()
                        if eviction not in evictions:
                            if len(evictions) == ROOM_ATTEMPTS:
                                break
                            evictions.append(eviction)
                    if grace > 0:  # look again when it ends, should nothing wake this fill
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(grace):
                                await self._room_freed.wait()
                    else:
                        await self._room_freed.wait()
        except TimeoutError:
            pass
        if self._room() < nbytes:
            reason = (
                f"no room for {nbytes} more bytes: {self._total} committed and {self._reserved}"
                f" reserved by running fills of {self.max_size}, the rest in use"
            )
            until = time.monotonic() + NO_ROOM_BACKOFF
            raise self._found_no_room(fill.digest, reason, until, wanted)

    def _room(self) -> int:
        """Bytes a fill may still reserve: the cap less committed, reserved and removed bytes
        not freed yet (evicted, or aborted fills' temp files still held open), and evicted
        files that could not be deleted."""
        removed = self._trash + self._unlinked + self._stuck
        return self.max_size - self._total - self._reserved - removed

    def _room_grew(self) -> None:
        """Wake the fills waiting for room (:meth:`_make_room`): they check it again."""
        freed, self._room_freed = self._room_freed, asyncio.Event()
        freed.set()

    def _found_no_room(self, digest: Digest, reason: str, until: float, needed: int) -> NoRoom:
        log.info("cache: %s not cached, %s; passed through", digest, reason)
        self._no_room.set(digest, (until, reason, needed))
        return NoRoom(f"not cached: {reason}")

    def _check_room_lately(self, digest: Digest) -> None:
        """Raise :class:`NoRoom` if ``digest`` found no room lately (or is larger than the
        cache): its clients pass it through without the mirror fetching it first. Once the
        room it needed is free (no eviction needed), it is fetched and cached again at once."""
        lately = self._no_room.get(digest)
        if lately is None:
            return
        until, reason, needed = lately
        if time.monotonic() < until and self._room() < needed:
            raise NoRoom(f"not cached: {reason}")
        self._no_room.pop(digest)

    def fill_grew(self, fill: InFlight, nbytes: int) -> None:
        """Count a running fill's bytes (within its reservation)."""
        self._in_flight += nbytes

    def _kept_bytes(self) -> int:
        """Committed blobs, the fills' reservations, the room fills wait for, evicted files
        that could not be deleted (an eviction plans around them: nothing will free them), and
        removed files still held open (an aborted fill's temp file that its followers' clients
        still read: freed when they are done, which a slow one takes minutes over)."""
        return self._total + self._reserved + sum(self._waiting) + self._stuck + self._unlinked

    def fill_ended(self, fill: InFlight) -> None:
        if self._fills.get(fill.digest) is fill:
            del self._fills[fill.digest]
            self._in_flight -= fill.written
            self._reserved -= fill.reserved
            if fill.reserved:
                self._room_grew()
            fill.reserved = 0

    def fill_discarded(
        self, fill: InFlight, fd: int | None, writing: asyncio.Future[Any] | None = None
    ) -> None:
        """Delete an aborted fill's temp file (``fd``: the writer's descriptor, or None; a
        thread that may still write through it: ``writing``)."""
        self._remove_temp(fill, fd, writing)

    def _remove_temp(
        self, fill: InFlight, fd: int | None, writing: asyncio.Future[Any] | None = None
    ) -> None:
        """Delete ``fill``'s temp file without freeing its blocks on the loop: its name goes
        now, while a descriptor holds the file (``fd``, else one opened here); the last close
        here frees the blocks (seconds for many GiB on ext4) in a worker thread, and until
        then they count against ``max_size`` (see :meth:`temp_closed`). ``fd`` is closed once
        ``writing`` (a thread of the writer) is done, and until then the file counts as large
        as the fill's reservation: the thread may still write that much into it."""
        if fill.removed:  # discarded again (cut for no room, then aborted): its name is gone
            if fd is not None:
                fill.holders += 1
                self._close_held(fill, fd, writing)
            return
        fill.removed = True
        if fd is None:
            fd = open_quietly(fill.tmp_path)
        size = fill.written
        if fd is not None:
            fill.holders += 1
            try:
                size = os.fstat(fd).st_size
            except OSError:  # EIO: what the fill wrote
                pass
        size = max(size, fill.preallocated)  # blocks found up front, past the bytes written
        if writing is not None:  # its thread may write up to the reservation yet
            size = max(size, fill.reserved)
        try:
            os.unlink(fill.tmp_path)
        except OSError:  # gone already, or refused: a temp file left is cleared at next start
            pass
        if fill.holders:  # held open (fd, followers): the last close frees its blocks
            fill.unlinked = size
            self._unlinked += size
        if fd is not None:
            self._close_held(fill, fd, writing)

    def _close_held(self, fill: InFlight, fd: int, writing: asyncio.Future[Any] | None) -> None:
        """Close ``fd``, a holder of ``fill``'s removed temp file, off the loop: once
        ``writing`` is done, if given (its thread may write through it until then)."""
        close = partial(close_off_loop, fd, partial(self.temp_closed, fill))
        if writing is None:
            close()
        else:
            writing.add_done_callback(lambda _: close())

    def temp_closed(self, fill: InFlight) -> None:
        """One of ``fill.holders`` is closed; the last one of a removed temp file freed its
        blocks: they leave the cap's count now."""
        fill.holders -= 1
        if fill.holders <= 0 and fill.unlinked:
            self._unlinked -= fill.unlinked
            fill.unlinked = 0
            self._room_grew()

    def cache_write_failed(self, fill: InFlight, exc: OSError, outcome: str) -> None:
        """The one line for a write that failed: the blob, the error, ``outcome`` (what its
        clients get) and that misses go uncached a while. A WARNING, then DEBUG until a blob
        is stored again (a full disk fails every fill meanwhile)."""
        self.write_failed_at = time.monotonic()
        if exc.errno == errno.ENOSPC:
            self._disk_full()
        level = logging.DEBUG if self._write_failed_logged else logging.WARNING
        self._write_failed_logged = True
        log.log(
            level,
            "cache: cannot write %s (%s); %s, and misses go uncached for %.0f s",
            fill.digest,
            os_error(exc),
            outcome,
            WRITE_FAILURE_BACKOFF,
        )

    def fill_committed(self, fill: InFlight) -> BlobEntry | None:
        """Move a verified, synced temp file into place: its reservation becomes its size."""
        size = fill.written
        self.fill_ended(fill)
        old = self._index.get(fill.digest)
        if old is not None:  # stored meanwhile by another process: same verified bytes
            self._remove_temp(fill, None)
            return old
        if self._total + size > self.max_size:  # cannot be, as it had reserved its size
            log.warning("cache: %s (%d bytes) does not fit, not kept", fill.digest, size)
            self._remove_temp(fill, None)
            return None
        path = self.path_of(fill.digest)
        now = time.time_ns()
        try:
            os.utime(fill.tmp_path, ns=(now, now))  # recency, to the ns, survives restarts
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fill.tmp_path, path)
        except OSError as exc:  # EIO, ENOSPC (mkdir), removed by a concurrent `docxy cache gc`
            log.warning("cache: cannot store %s: %s", fill.digest, exc)
            self._remove_temp(fill, None)  # not left behind: its followers' descriptors hold it
            return None
        entry = BlobEntry(fill.digest, path, size, now / 1e9)
        self._index[fill.digest] = entry
        self._total += size
        if self._verified_here is not None:
            self._verified_here.add(fill.digest)
        self._write_failed_logged = False
        self._disk_full_evicted = False
        return entry

    # --- eviction ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, digest: Digest) -> Iterator[None]:
        """``digest`` is neither evicted nor removed meanwhile: for a reader of its file from
        outside the store (the shared tier's upload), as an open reader pins it."""
        self._pins[digest] += 1
        try:
            yield
        finally:
            self._unpin(digest)

    def _unpin(self, digest: Digest) -> None:
        self._pins[digest] -= 1
        if self._pins[digest] <= 0:
            del self._pins[digest]

    def _start_eviction(
        self, evict: Callable[[], Coroutine[Any, Any, None]] | None = None
    ) -> asyncio.Task[None]:
        """The running eviction, started if none is: ``evict``, or down to :func:`low_water`."""
        if self._eviction is None or self._eviction.done():
            self._eviction = spawn("cache-eviction", (evict or self._evict_for_room)())
            self._eviction.add_done_callback(lambda _: self._room_grew())
        return self._eviction

    async def _evict_for_room(self, target: int | None = None) -> None:
        """:meth:`_evict_to` ``target`` (:func:`low_water`); a disk that refuses to delete the
        images' files stops it (no blob they need goes), in one WARNING line, not a traceback."""
        try:
            await self._evict_to(low_water(self.max_size) if target is None else target)
        except OSError as exc:
            log.warning("cache: eviction stopped: cannot delete the evicted manifests: %s", exc)

    def _disk_full(self) -> None:
        """The disk ran out of room before ``max_size`` did (a cap larger than the disk, other
        files on it): evict a tenth of the cached blobs, as an eviction for room would, so that
        later misses are cached again. A tenth at most, whatever the failed blob's size: one
        ENOSPC for a multi-GB layer would else flush the whole cache. Once only until a blob is
        stored again: a disk that other files keep full would else lose the whole cache, a
        tenth per back-off; then misses just pass through (``WRITE_FAILURE_BACKOFF``)."""
        if self._disk_full_evicted or (self._reading is None and not self._total):
            return
        if self._eviction is not None and not self._eviction.done():
            return  # one eviction at a time: the next full disk tries again
        self._disk_full_evicted = True
        self._start_eviction(self._evict_for_disk)

    async def _evict_for_disk(self) -> None:
        """:meth:`_evict_for_room` after ENOSPC, a tenth of the blobs; if it freed bytes, misses
        are cached again at once rather than after the back-off. The tenth is reckoned once the
        index is read: while it is, ``_total`` counts only the blobs known so far, and a target
        from it would evict nearly the whole cache."""
        await self.indexed()
        if self.catalog is not None:
            await self.catalog.loaded()  # (as _evict_to does: no wait between here and its plan)
        free = self._total - int(self._total * LOW_WATER)
        if free <= 0:
            return
        before = self.evicted_bytes
        await self._evict_for_room(max(0, self._kept_bytes() - free))
        if self.evicted_bytes > before:
            log.info(
                "cache: the disk was full: evicted %d bytes, misses are cached again",
                self.evicted_bytes - before,
            )
            self.write_failed_at = None

    def check_at_start(self) -> None:
        """For a serving start: say a cap larger than the disk (it fills before the cap; see
        :meth:`_disk_full`), and, on the event loop, once the index and the catalogue are read,
        evict what is over ``max_size`` (a cap lowered between runs): with only hits, no
        download would ever ask for that room."""
        self._say_cap_over_disk()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.start_check = spawn("cache-cap-at-start", self._evict_if_over())

    def _say_cap_over_disk(self) -> None:
        try:
            disk = file_system_size(self.root)
        except OSError:
            return
        if self.max_size > disk:
            log.warning(
                "cache: cache.max_size (%d bytes) is larger than the file system of %s (%d"
                " bytes): the disk fills first, and each time it does the cache evicts a tenth",
                self.max_size,
                self.root,
                disk,
            )

    async def _evict_if_over(self) -> None:
        try:
            await self.indexed()
            if self.catalog is not None:
                await self.catalog.loaded()
        except OSError:  # a read failed (said): the next fill needing room evicts
            return
        kept = self._kept_bytes()  # the figure eviction works to, said as such
        over = kept - self.max_size
        if over <= 0:
            return
        log.warning(
            "cache: %d bytes cached, %d over cache.max_size (%d): evicting down to %d",
            kept,
            over,
            self.max_size,
            low_water(self.max_size),
        )
        await self._start_eviction()

    async def settle(self) -> None:
        """Wait for a running eviction to end (tests, ``docxy cache gc``)."""
        if self._eviction is not None:
            await asyncio.wait([self._eviction])

    async def _evict_to(self, target: int) -> None:
        """Evict until the kept bytes are at most ``target``: blobs no cached image needs first
        (least recently used first), then whole images, least recently pulled first; never a
        pinned blob, nor one an image that is still offered needs. A plan that would not make
        room for any fill waiting for it (too much is pinned) evicts nothing."""
        await self.indexed()
        catalog = self.catalog
        if catalog is not None:
            await catalog.loaded()
        for attempt in range(1, PLAN_ATTEMPTS + 1):
            need = self._kept_bytes() - target
            if need <= 0:
                return
            blobs = list(self._index.values())
            images = catalog.images() if catalog is not None else []
            kept = frozenset(catalog.undeletable() if catalog is not None else ())
            pinned = frozenset(self._pins)
            plan, pulled = await asyncio.to_thread(_plan, blobs, images, need, pinned, kept)
            self.plans += 1
            # Images it forgets pulled, forgotten or stored meanwhile (an index stored since the
            # snapshot above one of them, which forgetting that one would take along).
            now = catalog.pulled_above(plan.images) if catalog is not None else {}
            moved = {key for key in pulled.keys() | now.keys() if pulled.get(key) != now.get(key)}
            if moved and attempt < PLAN_ATTEMPTS:
                continue  # plan again
            if moved and catalog is not None:  # the last plan: applied without those images
                plan = _without(plan, [*images, *catalog.images()], moved)
            if self._waiting and self._room() + plan.freed < min(self._waiting):
                # No fill waiting for room would get it: forget no image for nothing.
                log.info(
                    "cache: no room can be made for %d bytes, the rest in use", min(self._waiting)
                )
                return
            await self._apply(plan)
            return

    async def _apply(self, plan: EvictionPlan) -> None:
        """Forget the plan's images, then delete its blobs, yielding to the loop between chunks.

        Manifests go first, so no manifest outlives its blobs; a blob is deleted only if it is
        still unpinned and no image the catalogue offers now needs it (one may have been pulled
        since the plan was made)."""
        catalog = self.catalog
        if catalog is not None and plan.images:
            await catalog.evict_images(plan.images)  # with any index above them
        trash: list[tuple[Path, int]] = []
        trashed = 0  # evicted bytes still on disk: no fill may count on them yet
        try:
            try:
                for entries in _chunks(plan.blobs):
                    for planned in entries:
                        entry = self._index.get(planned.digest)
                        if entry is None or self._pins[entry.digest]:
                            continue
                        if catalog is not None and catalog.needed(entry.digest):
                            continue
                        dropped = self._drop(entry)
                        if dropped is not None:
                            trash.append((dropped, entry.size))
                            trashed += entry.size
                            self._trash += entry.size
                    await asyncio.sleep(0)
            finally:  # also when cancelled between chunks (a stopped `docxy cache gc`): the
                if trash:  # blobs already evicted are deleted, not left in tmp/ for an hour
                    stuck = await asyncio.to_thread(_unlink_all, trash)
                    if stuck:
                        self._stuck += self._cannot_delete(stuck)  # still on disk: counted
        finally:
            self._trash -= trashed

    def _cannot_delete(self, stuck: list[tuple[Path, int, OSError]]) -> int:
        """Evicted files that could not be deleted (EIO, EPERM): they stay in ``tmp/``, which
        the next start clears, and count against ``max_size`` until then. Their bytes."""
        nbytes = sum(size for _, size, _ in stuck)
        log.warning(
            "cache: cannot delete %d evicted file(s) in %s (%s); their %d bytes count against "
            "the cache size until the next start clears it",
            len(stuck),
            self.tmp_dir,
            os_error(stuck[0][2]),
            nbytes,
        )
        return nbytes

    def _trash_name(self, prefix: str, entry: BlobEntry) -> Path:
        """A new name in ``tmp/`` for a blob this mirror deletes in a worker thread (one of
        :data:`TRASH_PREFIXES`, which ``docxy cache gc`` leaves to a live mirror)."""
        return self.tmp_dir / f"{prefix}{entry.digest.hex}.{secrets.token_hex(6)}"

    def _drop(self, entry: BlobEntry) -> Path | None:
        """Take an evicted blob out of the index and off its name; returns where it now is, in
        ``tmp/``, for a worker thread to delete (freeing a large file's extents takes a while).
        None if it cannot be moved (it stays cached) or is gone already (it is forgotten)."""
        trash = self._trash_name(EVICTED, entry)
        try:
            os.rename(entry.path, trash)
        except FileNotFoundError:  # gone behind our back (another process evicted or removed
            self._forget(entry, planned=True)  # it): not evicted here, nothing to delete
            self.vanished_bytes += entry.size
            return None
        except OSError as exc:
            self.evict_failed += 1
            log.warning("cache: cannot evict %s: %s", entry.digest, exc)
            return None
        self._forget(entry, planned=True)
        self.evicted += 1
        self.evicted_bytes += entry.size
        log.info("cache: evicted %s (%d bytes)", entry.digest, entry.size)
        return trash

    async def drop_vanished(self, digests: Iterable[Digest]) -> None:
        """Drop from the index those of ``digests`` whose files are gone (removed behind our
        back: ``docxy cache rm --blobs`` or ``gc`` in another process, or by hand), with the
        images that need them, as their next use would (:meth:`lookup`). Asked before a
        manifest that needs them is stored: found gone after, they would take it along, and a
        pull since such a removal would cache its blobs again but not its manifest."""
        entries = [entry for digest in digests if (entry := self._index.get(digest)) is not None]
        if not entries:
            return
        gone = await asyncio.to_thread(_vanished, entries)
        for entry in gone:
            if self._index.get(entry.digest) is entry:
                self._forget(entry)

    def _forget(self, entry: BlobEntry, *, planned: bool = False) -> None:
        """Drop ``entry`` from the index; unless an eviction plan already forgot every image
        needing it (``planned``), the catalogue forgets them now."""
        if self._reading is not None:
            self._gone_while_reading.add(entry.digest)
        if self._verified_here is not None:  # (bounded by the index, if no sizes ever come)
            self._verified_here.discard(entry.digest)
        if self._index.pop(entry.digest, None) is not None:
            self._total -= entry.size
            if self.catalog is not None and not planned:
                try:  # images needing it are no longer offered
                    self.catalog.blob_gone(entry.digest)
                except OSError as exc:  # their files stay (a refusing disk): not a request's 500
                    log.warning(
                        "cache: %s is gone; cannot delete the manifests that need it: %s",
                        entry.digest,
                        exc,
                    )

    # --- administration (docxy cache ls/du/rm/gc) -------------------------------------------

    def list_entries(self) -> list[BlobEntry]:
        """Committed blobs, least recently used first. Waits for the index if it is still being
        read (administration and tests; the request path never lists)."""
        if self._reading is not None:
            self._reading.result()
        self._index_read()
        return list(self._index.values())

    async def commits_done(self) -> None:
        """Wait until every fill whose blob verified has ended: committed, or given up if its
        sync failed. Its clients have every byte by then, but the sync of a big blob takes a
        while, and a stop meanwhile would cancel it and lose the blob (the mirror's shutdown
        waits here; tests, to look at the cache once a pull is done)."""
        while verified := self._verified():
            await verified[0].changed()

    def _verified(self) -> list[InFlight]:
        return [fill for fill in self._fills.values() if fill.verified]

    @property
    def verified_open(self) -> int:
        """Fills whose blob verified, not committed yet (syncing)."""
        return len(self._verified())

    @property
    def fills_open(self) -> int:
        """Blob downloads in progress now."""
        return len(self._fills)

    def usage(self) -> Usage:
        """Never waits: while the index is being read, or its read failed, what is known so
        far (/health)."""
        self._index_ready()
        return Usage(
            len(self._index),
            self._total,
            self.max_size,
            self._in_flight,
            len(self._pins),
            self._reserved,
            self._trash + self._unlinked + self._stuck,
        )

    def remove(self, digest: Digest) -> bool:
        """Delete a committed blob (:meth:`_remove_entry`); False if absent. Raises
        :class:`BlobInUse` while pinned."""
        entry = self._entry(digest)
        if entry is None:
            return False
        self._delete(entry)
        return True

    def delete(self, digest: Digest) -> int | None:
        """:meth:`remove`, saying what it freed: the bytes, or None if it removed nothing (not
        cached, or its file gone already: another process removed it meanwhile, a live mirror's
        eviction; it is forgotten all the same)."""
        entry = self._entry(digest)
        return None if entry is None else self._delete(entry)

    def _delete(self, entry: BlobEntry) -> int | None:
        if self._pins[entry.digest]:
            raise BlobInUse(f"{entry.digest} is being read")
        freed = self._remove_entry(entry)
        self._room_grew()
        return freed

    def _remove_entry(self, entry: BlobEntry) -> int | None:
        """Forget the images that need ``entry`` (their tags and manifests deleted), then
        delete its file and drop it from the index; returns the bytes that freed (None: the
        file was gone already, removed by another process). In that order: cut short (the
        process killed between the two), the cache holds a blob no image needs (eviction's
        first pick), never an image whose blob is gone."""
        if self.catalog is not None:  # raises if the disk keeps one: the blob stays too
            self.catalog.blob_gone(entry.digest, present=True)
        freed = _removed_size(entry.path)
        self._forget(entry, planned=True)
        return freed

    async def gc(
        self,
        *,
        verify: bool = False,
        tmp_age: float = 3600.0,
        evict: bool = True,
        tally: GcTally | None = None,
        spare: Collection[str] = (),
    ) -> GcReport:
        """Drop stray files and temp files older than ``tmp_age`` seconds, optionally re-hash
        every blob, and (``evict``) evict down to the cap (what it could not, because blobs are
        being read or the disk kept them, is the report's ``over_bytes``).

        Beside a live mirror, blobs also go meanwhile without this gc (the mirror evicts):
        the report's ``freed_bytes`` counts only the files this gc removed, ``gone_bytes``
        the blobs it found gone. What it has done is in ``tally`` as it goes: the report of a
        gc cancelled, or stopped by a file the disk keeps (which raises: a manifest or tag
        record its eviction may not delete, before any blob of those images goes); a temp or
        stray file it may not delete (another owner's) is kept, in ``tally.refused``, and the
        rest done. The temp
        files named in ``spare`` are left alone, however old: a process holds them (a live
        mirror's fill of a large blob from a slow upstream runs for over ``tmp_age``)."""
        tally = GcTally() if tally is None else tally
        await self.indexed()
        known = dict(self._index)
        kept: list[tuple[Path, int, OSError]] = []
        try:
            self._clear_tmp(tmp_age, tally, kept, spare=spare)
        except OSError as exc:  # tmp/ itself may not be listed (or made): the rest is done
            tally.refused.append((self.tmp_dir, exc))
        tally.refused.extend((path, exc) for path, _, exc in kept)
        strays = self.scan()
        tally.gone_bytes = sum(e.size for d, e in known.items() if d not in self._index)
        for path in strays:
            try:
                tally.freed_bytes += _size_removed(path)
            except OSError as exc:
                tally.refused.append((path, exc))
                continue
            tally.removed_stray += 1
        if verify:
            await self._verify_all(tally)
        await self.settle()
        tally.evicting(self._eviction_counts)
        if evict:
            await self._evict_to(self.max_size)
            tally.over_bytes = max(0, self._kept_bytes() - self.max_size)
        return tally.report()

    async def _verify_all(self, tally: GcTally) -> None:
        """Re-hash every blob; remove those corrupt, with the images that need them (one the
        disk keeps is said, in a WARNING line, and kept: the rest are verified). A pinned one
        (being read) is hashed too, and if corrupt, said and counted, never removed."""
        for entry in list(self._index.values()):
            stop = threading.Event()
            try:
                intact = await asyncio.to_thread(_hash_matches, entry, stop)
            except asyncio.CancelledError:  # Ctrl-C: asyncio.run waits for the thread
                stop.set()
                raise
            except FileNotFoundError:  # evicted or removed meanwhile (a live mirror's)
                self._forget(entry)
                tally.gone_bytes += entry.size
                continue
            if intact:
                continue
            if self._pins[entry.digest]:  # a client is reading it: left alone, said
                log.warning("cache: %s is corrupt on disk, kept: it is being read", entry.digest)
                tally.corrupt_in_use += 1
                continue
            try:
                freed = self._remove_entry(entry)
            except OSError as exc:  # its file, or an image that needs it (which stays
                # cached whole, with it): the rest are verified all the same
                log.warning(
                    "cache: %s is corrupt on disk, kept: the disk refused a delete: %s",
                    entry.digest,
                    exc,
                )
                tally.corrupt_kept += 1
                continue
            if freed is None:  # evicted or removed meanwhile, since it was hashed
                tally.gone_bytes += entry.size
                continue
            tally.freed_bytes += freed
            log.warning("cache: %s is corrupt on disk, removed", entry.digest)
            tally.removed_corrupt += 1

    def _eviction_counts(self) -> EvictionCounts:
        return (self.evicted, self.evicted_bytes, self.vanished_bytes, self.evict_failed)


def _hash_matches(entry: BlobEntry, stop: threading.Event) -> bool:
    """Whether the blob's file hashes to its digest; False if ``stop`` is set meanwhile (its
    caller was cancelled, and ``asyncio.run`` waits for this thread before it returns: a
    Ctrl-C of ``docxy cache gc --verify`` waited out the hash of a whole large blob)."""
    hasher = entry.digest.hasher()
    with open(entry.path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            if stop.is_set():
                return False  # not a verdict: nobody reads it
            hasher.update(chunk)
    return hasher.hexdigest() == entry.digest.hex


Walked = tuple[list[BlobEntry], list[Path]]


def _plan(
    blobs: list[BlobEntry],
    images: list[Image],
    need: int,
    pinned: frozenset[Digest],
    kept: frozenset[ImageKey] = frozenset(),
) -> tuple[EvictionPlan, dict[ImageKey, float]]:
    """In a worker thread: the plan, and when each image it forgets was last pulled. The
    ``kept`` images (the disk refused to delete their files) are left out, their blobs pinned."""
    if kept:
        pinned = pinned.union(*(image.blobs for image in images if image.key in kept))
        images = [image for image in images if image.key not in kept]
    plan = plan_eviction(blobs, images, need, pinned.__contains__)
    planned = set(plan.images)
    return plan, {image.key: image.last_pulled for image in images if image.key in planned}


def _without(plan: EvictionPlan, images: list[Image], moved: set[ImageKey]) -> EvictionPlan:
    """``plan`` without the ``moved`` images (pulled or stored while it was made), the
    manifests below them (forgetting a child forgets its indexes), and the blobs they need;
    ``images``: the plan's snapshot, then the catalogue now (one stored meanwhile is not in
    the snapshot; a later entry of a key wins)."""
    catalog = {image.key: image for image in images}
    kept = below(moved, catalog)
    needed = {digest for key in kept for digest in catalog[key].blobs}
    blobs = tuple(entry for entry in plan.blobs if entry.digest not in needed)
    forgotten = tuple(key for key in plan.images if key not in kept)
    return EvictionPlan(forgotten, blobs, sum(entry.size for entry in blobs))


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), APPLY_CHUNK):
        yield items[start : start + APPLY_CHUNK]


def _unlink_all(files: Iterable[tuple[Path, int]]) -> list[tuple[Path, int, OSError]]:
    """Delete every file (path, size); those that could not be, with why (the rest go on)."""
    stuck = []
    for path, size in files:
        try:
            _unlink(path)
        except OSError as exc:
            stuck.append((path, size, exc))
    return stuck


def _unlink_quietly_all(paths: Iterable[Path]) -> None:
    for path in paths:
        unlink_quietly(path)


def _unlink(path: Path) -> bool:
    """Whether ``path`` was removed here (False: it was gone already)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _vanished(entries: Iterable[BlobEntry]) -> list[BlobEntry]:
    """Those of ``entries`` whose file is no longer there (in a worker thread)."""
    gone = []
    for entry in entries:
        try:
            os.lstat(entry.path)
        except FileNotFoundError:
            gone.append(entry)
        except OSError:
            pass  # cannot tell now (EIO, EACCES): its next read says
    return gone


def _size_removed(path: Path) -> int:
    """Remove ``path``; the bytes that freed (0 if it was gone already)."""
    return _removed_size(path) or 0


def _removed_size(path: Path) -> int | None:
    """Remove ``path``; the bytes that freed, None if it was gone already."""
    try:
        size = path.lstat().st_size
    except FileNotFoundError:
        return None
    return size if _unlink(path) else None


def held_bytes(st: os.stat_result) -> int:
    """The bytes the disk holds for a file: its blocks, not its length. A fill's temp file
    was preallocated to the blob's length (:mod:`docxy.cache.preallocate`, its length only
    what was written before a crash cut it), and one with holes holds less than its length."""
    return st.st_blocks * 512


def _take_over_on(
    loop: asyncio.AbstractEventLoop, store: DiskBlobStore, read: Future[Walked]
) -> None:
    """In the index read's thread, once it ended: its index taken over on ``loop`` soon; a
    failed read is said already, and raised by the store's next use."""
    if read.exception() is None:
        soon_on(loop, store._index_read)
