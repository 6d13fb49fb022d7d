"""Manifests by digest (immutable) and tags → digest with a TTL, on disk, per upstream.

Layout under ``root``::

    by-digest/<sha256 of upstream>/<algo>/<xx>/<hex>        the manifest bytes
    by-digest/<sha256 of upstream>/<algo>/<xx>/<hex>.json   {"media_type": ...}
    tags/<sha256 of [upstream, repo, tag]>.json             {"upstream", "repo", "tag", "digest",
                                                             "fetched_at", "public"}
    tmp/                                                    atomic-write staging (the access
                                                            records' too), cleared on open

Every file is written to ``tmp/``, fsynced and renamed into place, and a manifest is re-hashed on
every read, so a crash can only lose an entry, never serve a wrong one. Names never become paths.
A manifest is cached once its own file is in place, written after its ``.json`` record: a write
the disk refuses halfway leaves no manifest, and none in the catalogue either.

The store is also the blob store's :class:`~docxy.cache.images.ImageCatalog`: it keeps what each
cached manifest needs and when it was last pulled (the file's mtime, so it survives restarts), and
forgets whole images when eviction asks or when a blob one of them needs goes away. A manifest
whose blobs are no longer all there is never offered. It also answers which repositories hold a
blob (:meth:`ManifestStore.blob_visibility`): those a cached manifest pointing at it was served
for, so that knowledge lives exactly as long as the manifests do, restarts included.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from docxy.cache.errors import CacheError, DigestMismatch
from docxy.cache.files import clear_dir, globbed, os_error, unlink_quietly, write_atomic
from docxy.cache.images import Image, ImageKey, below, needs, needs_sized
from docxy.cache.startup import StartRead, waited_off_loop
from docxy.cache.visibility import AccessIndex, RepoKey, Visibility, is_temp_name
from docxy.cache.visibility import upstream_key as _upstream_key
from docxy.core import jsondoc
from docxy.core.digests import Digest, digest_of, parse_digest
from docxy.core.errors import DigestInvalid
from docxy.core.hosts import earlier_spellings, key_now, url_host
from docxy.tasks import spawn
from docxy.threads import running_loop

log = logging.getLogger(__name__)

K = TypeVar("K")
T = TypeVar("T")
V = TypeVar("V")

#: A tag record that points at no cached manifest is deleted once it is this old (seconds).
#: A HEAD of a tag notes it for the GET by digest that follows (:meth:`ManifestStore.set_tag`);
#: a client that has the image already sends no GET, and the record would stay for ever.
#: Such records are looked for at most this often: when a tag record is written, the first
#: time this long after the start (so a note lives one to two of these, as a rule).
ORPHAN_AGE = 3600.0
#: A manifest whose delete the disk refused is left out of evictions for this long (seconds),
#: then tried again: one WARNING per try while the disk still refuses.
REFUSED_RETRY = 600.0
#: ``docxy cache gc`` removes a ``.json`` record without its manifest file, or a temp file,
#: once it is this old (seconds): a live mirror's put writes the one just before the other.
LEFTOVER_AGE = 3600.0

#: Files :meth:`ManifestStore.tidy` removed, and those the disk refused (with why).
Tidied = tuple[int, list[tuple[Path, OSError]]]


class NotKept(enum.Enum):
    """Why a manifest fetched just now is not cached (:attr:`CachedManifest.not_kept`)."""

    UNWRITABLE = "cache-unwritable"  # its disk refused the write (full, read-only)
    #: An eviction took it out of the cache while its files were written (deleted once written).
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True)
class CachedManifest:
    digest: Digest
    media_type: str
    content: bytes
    #: How this manifest is known in the repository it was asked for (None: never seen there).
    visibility: Visibility | None
    #: Fetched just now, and the cache did not keep it: why (None: kept, or read from cache).
    not_kept: NotKept | None = None

    @property
    def kept(self) -> bool:
        """False: fetched just now, and not cached (:attr:`not_kept` says why)."""
        return self.not_kept is None


class TagState(enum.Enum):
    FRESH = "fresh"  # serve the cached manifest
    STALE = "stale"  # revalidate with an upstream HEAD; serve the cached one if the upstream fails
    MISSING = "missing"  # fetch from upstream


@dataclass(frozen=True, slots=True)
class TagEntry:
    repo: RepoKey
    tag: str
    digest: Digest
    fetched_at: float
    public: bool

    @property
    def visibility(self) -> Visibility:
        return Visibility(self.repo, self.public)


@dataclass(frozen=True, slots=True)
class TagResolution:
    state: TagState
    entry: TagEntry | None = None
    manifest: CachedManifest | None = None

    @property
    def visibility(self) -> Visibility | None:
        return None if self.entry is None else self.entry.visibility


class ManifestStore:
    """Manifest and tag cache; every method does its file I/O in a worker thread."""

    def __init__(
        self,
        root: Path,
        access: AccessIndex,
        *,
        tag_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.access = access
        self.tag_ttl = tag_ttl
        self._clock = clock
        self._images: dict[ImageKey, Image] | None = None  # read from disk on first use
        self._tag_files: dict[Path, ImageKey] = {}  # tag record -> the image it points at
        self._tags_of: dict[ImageKey, set[Path]] = {}  # ...and back
        self._holders: dict[Digest, set[ImageKey]] = {}  # blob -> cached images that need it
        self._parents: dict[ImageKey, set[ImageKey]] = {}  # child manifest -> indexes above it
        #: Blobs of manifests a :meth:`put` is about to add to the catalogue (how many such
        #: puts need each): needed already (:meth:`needed`), so an eviction applied while the
        #: put awaits keeps them.
        self._storing: dict[Digest, int] = {}
        #: Cached manifest -> the repositories (hashed) it was served for -> publicly or not:
        #: the access records, in memory for blob_visibility (asked for every unknown pairing).
        self._seen: dict[ImageKey, dict[str, bool]] = {}
        self._scanning: StartRead[Scanned] | None = None  # the catalogue read in a thread (open)
        self._journal: list[Callable[[], None]] = []  # changes made while it was being read
        #: Files an eviction's worker thread is deleting (manifests by key, tag records by
        #: path) -> that delete: a pull that writes one of them again waits for it first.
        self._deleting: dict[ImageKey | Path, asyncio.Future[Any]] = {}
        #: Manifests whose delete the disk refused (read-only, another owner's file) -> when:
        #: offered still, as their files say, and left out of the evictions of the next
        #: :data:`REFUSED_RETRY` seconds (:meth:`undeletable`), which would stop at them every
        #: time; then tried again, in case the operator mended the file meanwhile.
        self._undeletable: dict[ImageKey, float] = {}
        #: Tag records a :meth:`set_tag` is writing (how many at once), and those it started
        #: to write while a sweep runs: that sweep deletes none of them.
        self._writing: dict[Path, int] = {}
        #: Tag records a write of which the disk refused while others were in flight: their
        #: pointer is set as the record on disk says once the last one ends (set_tag).
        self._refused: set[Path] = set()
        #: Those being read back so: whether a set_tag of it began meanwhile, each read's.
        self._reading_back: dict[Path, list[_ReadBack]] = {}
        self._touched: set[Path] | None = None
        self._swept_at = clock()  # the last look for orphaned tag records (none: the start)
        #: Drops from the blob index the blobs among these whose files are gone, with the
        #: images needing them (the blob store's ``drop_vanished``, set by ``open_cache``):
        #: asked before a manifest that needs them is stored (see :meth:`put`).
        self.drop_vanished: Callable[[Iterable[Digest]], Awaitable[None]] | None = None
        #: Given, once the catalogue read at start is taken over, the size the cached
        #: manifests give each blob they need (the blob store's ``hold_to_sizes``, set by
        #: ``open_cache``): a blob file cut short while the mirror was stopped is found so.
        self.sizes_read: Callable[[Mapping[Digest, int]], None] | None = None
        #: The sizes each manifest stored while the catalogue is read gives its blobs: a blob
        #: they give another size than the manifests read do is held to none (a descriptor
        #: with a wrong size, which not every registry checks, is not the file's fault).
        self._sizes_meanwhile: list[dict[Digest, int]] = []

    @classmethod
    def open(
        cls,
        root: Path,
        access: AccessIndex,
        *,
        tag_ttl: float,
        clock: Callable[[], float] = time.time,
        registries: Iterable[str] = (),
    ) -> ManifestStore:
        """Open for serving: remove temp files left by a crash, move what earlier versions
        keyed otherwise (:meth:`upgrade`), and read the catalogue (every manifest and tag) in
        a worker thread, so a large cache does not hold up the first answers. Manifests and
        tags are served meanwhile, straight from disk; what changes is noted and replayed on
        the catalogue once it is read. A read that fails stays failed (what needs the
        catalogue raises its error) until its first use a while later reads again
        (:class:`~docxy.cache.startup.StartRead`)."""
        store = cls(root, access, tag_ttl=tag_ttl, clock=clock)
        try:
            clear_dir(store._tmp)
        except OSError as exc:  # a read-only disk: small files, left; what is cached is served
            log.warning("cache: cannot clear %s: %s", store._tmp, exc)
        store.upgrade(registries)
        store._scanning = StartRead(
            "docxy-manifest-catalogue",
            "reading the manifest catalogue",
            store._scan,
            fresh=store._read_afresh,
        )
        return store

    def upgrade(self, registries: Iterable[str]) -> None:
        """Move what earlier versions keyed otherwise, before the catalogue is read (by the
        mirror at its start, and by ``docxy cache ...`` beside it, which would else list, and
        ``rm`` miss, what the mirror serves under the keys of now): repository records of the
        earlier layout (:meth:`migrate_access`), and what was cached under another spelling of
        one of ``registries`` (the upstreams' URLs: :meth:`respell`)."""
        self.migrate_access()
        for old, new in self.earlier_spellings(registries).items():
            try:
                self.respell(old, new)
            except OSError as exc:  # what is left stays under the old key: fetched once more
                log.warning("cache: cannot move the entries of %s to %s: %s", old, new, exc)

    def earlier_spellings(self, registries: Iterable[str]) -> dict[str, str]:
        """Upstreams cached under a spelling of one of ``registries`` that is not its key now
        → that key. A written default port (``ghcr.io:443``) is looked for by name
        (:func:`~docxy.core.hosts.earlier_spellings`); a host written in capitals (``GHCR.io``,
        keyed as written until 29ab523) cannot be (the settings give it lower-cased now), so
        each folder of manifests under a key no registry has now is asked by one of its
        repository records which upstream it is (one file read per such folder). Such a move
        cut short once those records moved on (:meth:`respell`) leaves the manifests not moved
        yet where they are, unused: fetched again when pulled, evicted when room is needed."""
        registries = list(registries)
        found = earlier_spellings(registries)
        base = self.root / "by-digest"
        current = {_upstream_key(url_host(url)) for url in registries}
        known = current | {_upstream_key(old) for old in found}
        try:
            folders = list(base.iterdir()) if base.is_dir() else []
        except OSError as exc:  # its manifests will not be read either: said there
            log.warning("cache: cannot list %s: %s", base, exc)
            folders = []
        for folder in folders:
            if folder.name in known or not folder.is_dir():
                continue
            upstream = self.access.upstream_of(folder.name)
            new = key_now(upstream, registries) if upstream is not None else None
            if upstream is not None and new is not None:
                found[upstream] = new
        return found

    def migrate_access(self) -> None:
        """Move repository records of the earlier layout (once, after an upgrade), keeping only
        those of manifests still cached (see :meth:`AccessIndex.migrate`)."""
        moved = self.access.migrate(
            lambda up, digest: self._key_path(ImageKey(up, digest)).exists()
        )
        if moved:
            log.info("cache: moved %d repository records to the per-manifest layout", moved)

    def respell(self, old: str, new: str) -> None:
        """Move what is cached under upstream ``old`` to ``new``, the key of the same registry
        now (``ghcr.io:443`` or ``GHCR.io`` → ``ghcr.io``: :meth:`earlier_spellings`), so an
        upgrade fetches none of it again. Before the catalogue is read. Tags first, then the
        repository records, the manifests' folder last: while it is there a move cut short
        goes on at the next open; without it there is nothing to do (one ``stat``). A tag
        fetched again under ``new`` since (the newer) is kept, as is a manifest already there."""
        old_key, new_key = _upstream_key(old), _upstream_key(new)
        manifests = self.root / "by-digest" / old_key
        if not manifests.is_dir():
            return
        tags = 0
        for entry in self.list_tags():
            if entry.repo.upstream != old:
                continue
            moved = TagEntry(
                RepoKey(new, entry.repo.repo),
                entry.tag,
                entry.digest,
                entry.fetched_at,
                entry.public,
            )
            there = _parse_tag(self._tag_path(moved.repo, moved.tag))
            if there is None or there.fetched_at < moved.fetched_at:
                self._write_tag(moved)
            unlink_quietly(self._tag_path(entry.repo, entry.tag))
            tags += 1
        self.access.respell(old, new)
        count = _merge_into(manifests, self.root / "by-digest" / new_key)
        log.info("cache: moved %d manifests and %d tags of %s to %s", count, tags, old, new)

    @property
    def _tmp(self) -> Path:
        return self.root / "tmp"

    def _content_path(self, upstream: str, digest: Digest) -> Path:
        return self._key_path(ImageKey(_upstream_key(upstream), digest))

    def _key_path(self, key: ImageKey) -> Path:
        return self.root / "by-digest" / key.upstream / key.digest.relpath()

    def _tag_path(self, repo: RepoKey, tag: str) -> Path:
        return self.root / "tags" / f"{repo.hashed(tag)}.json"

    # --- manifests by digest ----------------------------------------------------------------

    async def get(
        self, repo: RepoKey, digest: Digest, *, pulled: bool = True
    ) -> CachedManifest | None:
        """The cached manifest ``digest`` of ``repo.upstream``, with its visibility in ``repo``.

        ``pulled=False``: a look (``docxy cache rm`` working out what other images need), not
        a pull: the manifest's last-pulled time, which eviction goes by, is left alone."""
        found = await asyncio.to_thread(self._read_manifest, repo, digest, pulled)
        if found is None:
            return None
        content, media_type, visibility = found
        key = ImageKey(_upstream_key(repo.upstream), digest)
        if self._images is not None and key not in self._images:
            return None  # evicted while it was read: no longer offered, its blobs may be gone
        if pulled:
            self._pulled(key, content)
        return CachedManifest(digest, media_type, content, visibility)

    async def put(
        self,
        repo: RepoKey,
        content: bytes,
        media_type: str,
        *,
        public: bool,
        digest: Digest | None = None,
    ) -> CachedManifest:
        """Store a manifest fetched from ``repo`` and record its visibility there.

        ``digest`` (the one asked for, or the upstream's Docker-Content-Digest) must match the
        content, else :class:`DigestMismatch` and nothing is stored. A disk that refuses the
        write (full, read-only) does not fail the pull: the manifest is returned, not kept; so
        is one an eviction took while it was written (:attr:`CachedManifest.not_kept` says
        which).
        """
        actual = digest_of(content, digest.algorithm if digest else "sha256")
        if digest is not None and actual != digest:
            raise DigestMismatch(f"manifest for {digest} hashes to {actual}")
        key = ImageKey(_upstream_key(repo.upstream), actual)
        # The blobs it needs are needed from now on, before it joins the catalogue: an
        # eviction applied while drop_vanished's thread runs would else delete one no cached
        # image needs yet (a layer of an image evicted while it was read), and the image
        # would be stored without it.
        blobs = self._blobs_under(key.upstream, content)
        _count(self._storing, blobs, 1)
        try:
            if self.drop_vanished is not None:
                # Blobs it needs that went behind our back (`docxy cache rm --blobs` beside us
                # removed this very image, maybe) are forgotten now, with the images that need
                # them: their next use would forget this one with them, once stored. An
                # index's are its platforms' (cached already: a pull stores the index first).
                await self.drop_vanished(blobs)
            if not self._in_memory() and not (self._scanning and self._scanning.failed()):
                self._sizes_meanwhile.append(needs_sized(content)[2])
            # In the catalogue first: from now on, eviction keeps the blobs it needs (an
            # eviction deleting this manifest's files right now among them: it looks once
            # they are gone).
            self._pulled(key, content)
        finally:
            _count(self._storing, blobs, -1)
        await self._deleted(key)  # ...and the files written after that delete, not under it
        try:
            visibility = await asyncio.to_thread(
                self._write_manifest, repo, actual, content, media_type, public
            )
        except OSError as exc:
            log.warning("cache: cannot store manifest %s (%s); served uncached", actual, exc)
            kept = await asyncio.to_thread(self._on_disk, key)
            if not kept:  # not cached before either
                self._or_later(lambda: self._not_cached(key))
            why = None if kept else NotKept.UNWRITABLE
            return CachedManifest(actual, media_type, content, Visibility(repo, public), why)
        if self._in_memory() and key not in self._catalogue():  # evicted while written
            why = None if await self._delete_stored(key) else NotKept.EVICTED
            return CachedManifest(actual, media_type, content, visibility, why)
        if visibility is not None:
            hashed, seen_public = repo.hashed(), visibility.public
            self._or_later(lambda: self._note_seen(key, hashed, seen_public))
        return CachedManifest(actual, media_type, content, visibility)

    async def _delete_stored(self, key: ImageKey) -> bool:
        """Delete the files :meth:`put` just wrote of manifest ``key``, which an eviction (or a
        blob found gone) took out of the catalogue while they were written: its delete found
        none of them yet, and left behind, they would be offered again at the next start,
        without the blobs deleted since. A pull storing it again meanwhile keeps them: then
        True (it is cached after all), else False (not cached, even if the disk kept them)."""
        await self._deleted(key)
        if key in self._catalogue():
            return True
        deleting = self._deleting_in_thread(
            "cache: delete a manifest evicted while stored",
            _refused(partial(self._delete, [key], {})),
            [key],
        )
        refused = await asyncio.shield(deleting)
        if refused is not None:
            log.warning(
                "cache: cannot delete manifest %s, evicted while stored: %s", key.digest, refused
            )
        else:
            log.info("cache: manifest %s was evicted while stored; served uncached", key.digest)
        return False

    def _blobs_under(self, upstream: str, content: bytes) -> set[Digest]:
        """The blobs manifest ``content`` needs, and those of the cached manifests below it
        (an index's platforms, an index of indexes'), as the catalogue knows them now."""
        blobs, children = needs(content)
        images = self._images or {}
        found = set(blobs)
        for key in below((ImageKey(upstream, child) for child in children), images):
            found |= images[key].blobs
        return found

    async def confirm(self, repo: RepoKey, manifest: CachedManifest) -> CachedManifest:
        """Record cached ``manifest`` as held by ``repo`` (publicly), as a fetch from there
        would: an upstream ``HEAD`` in ``repo`` with the mirror's own token named its digest.
        Returned with its visibility there. A disk that refuses the record (read-only, full)
        does not fail the pull: the manifest is served, and confirmed again next time."""
        key = ImageKey(_upstream_key(repo.upstream), manifest.digest)
        await self._deleted(key)
        try:
            await asyncio.to_thread(self._record_held, repo, key)
        except OSError as exc:
            log.warning("cache: cannot record manifest %s in %s (%s)", key.digest, repo.repo, exc)
        else:
            hashed = repo.hashed()
            self._or_later(lambda: self._note_seen(key, hashed, True))
        return replace(manifest, visibility=Visibility(repo, public=True))

    def _record_held(self, repo: RepoKey, key: ImageKey) -> None:
        """In a worker thread: the public record of ``key`` in ``repo``, if it is still cached
        (an eviction since it was read took its records along: none is left behind)."""
        if self._on_disk(key):
            self.access.record(repo, key.digest, public=True)

    def _note_seen(self, key: ImageKey, repo: str, public: bool) -> None:
        if self._images is not None and key in self._images:
            known = self._seen.setdefault(key, {})
            known[repo] = known.get(repo, False) or public

    def _read_manifest(
        self, repo: RepoKey, digest: Digest, pulled: bool = True
    ) -> tuple[bytes, str, Visibility | None] | None:
        """In a worker thread: content, media type and visibility in ``repo``, or None."""
        path = self._content_path(repo.upstream, digest)
        meta_path = _meta_path(path)
        try:
            meta = json.loads(meta_path.read_bytes())  # the mirror's own record
            content = path.read_bytes()
            media_type = meta["media_type"]
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Out of descriptors or memory, a disk error: the files may be whole, so they stay
            # (a fetch of the manifest writes them anew). A miss now.
            log.warning("cache: cannot read manifest %s now (%s): a miss, kept", digest, exc)
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cache: unreadable manifest %s (%s), dropped", digest, exc)
            media_type, content = None, b""
        if not isinstance(media_type, str) or digest_of(content, digest.algorithm) != digest:
            # In :meth:`_delete`'s order: its repository records, its file, its record last.
            # Cut short (a kill), it leaves no records of a manifest not cached, nor a file
            # without its record (both would vouch for those repositories once it is put again).
            try:
                self.access.forget_digest(_upstream_key(repo.upstream), digest)
                unlink_quietly(path)
                unlink_quietly(meta_path)
            except OSError as exc:  # a failing disk gone read-only: a miss all the same
                log.warning(
                    "cache: corrupt manifest %s on disk, not served; cannot delete it: %s",
                    digest,
                    exc,
                )
            else:
                log.warning("cache: corrupt manifest %s on disk, dropped", digest)
            return None
        if pulled:
            try:
                os.utime(path)  # last pulled: eviction forgets the least recently pulled first
            except OSError:
                pass
        return content, media_type, self.access.visibility(repo, digest)

    def _write_manifest(
        self, repo: RepoKey, digest: Digest, content: bytes, media: str, public: bool
    ) -> Visibility | None:
        """In a worker thread: store the manifest, record it in ``repo``; its visibility there.

        The manifest's own file goes last: once it is there, the manifest is cached (for
        :meth:`_scan` as for :meth:`get`), so a write that fails halfway leaves none."""
        path = self._content_path(repo.upstream, digest)
        meta = json.dumps({"media_type": media, "size": len(content)}).encode()
        if not self._on_disk(ImageKey(_upstream_key(repo.upstream), digest)):
            # Records of a manifest not cached are left of a delete cut short (an earlier
            # version's, or its forget refused; a file without its record, of a corrupt
            # one's drop cut short): they vouch for nothing now. A put of the same manifest
            # racing this one may lose its record: a miss there, asked upstream.
            self.access.forget_digest(_upstream_key(repo.upstream), digest)
        write_atomic(_meta_path(path), meta, self._tmp)
        write_atomic(path, content, self._tmp)
        self.access.record(repo, digest, public=public)
        return self.access.visibility(repo, digest)

    # --- tags -------------------------------------------------------------------------------

    async def resolve_tag(self, repo: RepoKey, tag: str) -> TagResolution:
        """FRESH within ``tag_ttl`` of the last fetch or revalidation, else STALE; MISSING if
        the tag or its manifest is not cached."""
        entry = await asyncio.to_thread(self._read_tag, repo, tag)
        if entry is None:
            return TagResolution(TagState.MISSING)
        manifest = await self.get(repo, entry.digest)
        if manifest is None:
            return TagResolution(TagState.MISSING)
        age = self._clock() - entry.fetched_at
        state = TagState.FRESH if 0 <= age < self.tag_ttl else TagState.STALE
        return TagResolution(state, entry, manifest)

    async def set_tag(self, repo: RepoKey, tag: str, digest: Digest, *, public: bool) -> TagEntry:
        """Point ``tag`` at ``digest`` as of now (after a GET, or a HEAD that confirmed it).

        A public tag stays public when a private fetch confirms the same digest. A disk that
        refuses the write leaves the tag as it was (the pull goes on, uncached).
        """
        path = self._tag_path(repo, tag)
        self._writing[path] = self._writing.get(path, 0) + 1
        for reading in self._reading_back.get(path, ()):
            reading.written = True  # its end sets the pointer: not that read back
        if self._touched is not None:
            self._touched.add(path)
        try:
            return await self._set_tag(path, repo, tag, digest, public)
        finally:
            if (left := self._writing.pop(path) - 1) > 0:
                self._writing[path] = left
            elif path in self._refused:  # the last write of it ended: the disk says
                self._refused.discard(path)
                # (a task: set even if this pull is cancelled meanwhile; waited for, so the
                # pull that saw the refusal ends with the pointer set as it was before)
                await asyncio.shield(
                    spawn("cache: tag pointer after a refused write", self._point_as_on_disk(path))
                )
            self._sweep_due()

    async def _set_tag(
        self, path: Path, repo: RepoKey, tag: str, digest: Digest, public: bool
    ) -> TagEntry:
        await self._deleted(path)
        # Pointed at the new image before the record is written, with no await in between: an
        # eviction of the old image starting meanwhile would take the record (still the old
        # one's in the map) and delete it once written. One of the new image takes it, as it
        # should; the pointer is not set again after the write.
        # While the catalogue is read at start, the pointer is journaled so, replayed over
        # the one the read finds: the catalogue may be taken over, and an eviction of the old
        # image run, before the write is done.
        key = ImageKey(_upstream_key(repo.upstream), digest)
        self._in_memory()  # (the catalogue taken over if it is read: the pointer set there)
        self._point_tag(path, key)
        old = await asyncio.to_thread(self._read_tag, repo, tag)
        if old is not None and old.digest == digest and old.public:
            public = True
        entry = TagEntry(repo, tag, digest, self._clock(), public)
        try:
            await asyncio.to_thread(self._write_tag, entry)
        except OSError as exc:
            log.warning("cache: cannot store tag %s:%s (%s); not cached", repo.repo, tag, exc)
            # The pointer goes where the record on disk points once no write of it is in
            # flight (set_tag, the last to end): another pull's write of the same tag may land
            # after this one was refused, or have been refused too; what either read before
            # its write is no longer what the disk says.
            self._refused.add(path)
        return entry

    async def _point_as_on_disk(self, path: Path) -> None:
        """Tag record ``path`` (a write of it refused) points where the record says: read it
        in a worker thread, then the pointer set (replayed over the catalogue's own while it
        is read at start). Not if a write of it began meanwhile (the record read may be the
        one before it, the pointer already its): that one's end says."""
        reading = _ReadBack()
        readers = self._reading_back.setdefault(path, [])
        readers.append(reading)
        try:
            key = await asyncio.to_thread(self._tag_record_key, path)
        finally:
            readers.remove(reading)
            if not readers:
                del self._reading_back[path]
        if not reading.written:
            self._or_later(partial(self._point_tag, path, key))

    def _tag_record_key(self, path: Path) -> ImageKey | None:
        entry = _parse_tag(path)
        if entry is None:
            return None
        return ImageKey(_upstream_key(entry.repo.upstream), entry.digest)

    def _sweep_due(self) -> None:
        """Start :meth:`sweep_tags` if the last look (or the start) was :data:`ORPHAN_AGE` ago."""
        now = self._clock()
        if 0 <= now - self._swept_at < ORPHAN_AGE:
            return
        self._swept_at = now
        spawn("cache: sweep tag records", self.sweep_tags())

    async def sweep_tags(self) -> int:
        """Delete the tag records that point at no cached manifest and were written (noted,
        fetched or confirmed) :data:`ORPHAN_AGE` or more ago; returns how many. Not one that a
        :meth:`set_tag` writes while it runs; one noted again after it took it waits for the
        delete, as after an eviction. A record that cannot be read (a line each, as for any
        read of it) or deleted (one line) stays."""
        await self.loaded()
        images = self._catalogue()
        self._swept_at = self._clock()
        cutoff = self._swept_at - ORPHAN_AGE
        orphans = [path for path, key in self._tag_files.items() if key not in images]
        if not orphans or self._touched is not None:  # none, or another sweep runs
            return 0
        # Those being written now, and those whose writes start while the records are read:
        # whatever the read finds of them, they are new.
        touched = set(self._writing)
        self._touched = touched
        try:
            old = await asyncio.to_thread(_written_before, orphans, cutoff)
        finally:
            self._touched = None
        doomed = [
            path
            for path in old
            if (key := self._tag_files.get(path)) is not None
            and key not in images
            and path not in touched
            and path not in self._writing
            and path not in self._deleting
        ]
        if not doomed:
            return 0
        keys = {path: self._tag_files[path] for path in doomed}
        for path in doomed:
            self._point_tag(path, None)
        deleting = self._deleting_in_thread(
            "cache: delete orphaned tag records", asyncio.to_thread(_unlink_all, doomed), doomed
        )
        failed = await asyncio.shield(deleting)
        for path, _ in failed:  # still there: still a record of the map (the next sweep's)
            if path not in self._tag_files:
                self._point_tag(path, keys[path])
        gone = len(doomed) - len(failed)
        if gone:
            log.info(
                "cache: deleted %d tag record(s) older than %g s whose manifest is not cached",
                gone,
                ORPHAN_AGE,
            )
        if failed:
            path, why = failed[0]
            log.warning(
                "cache: cannot delete %d orphaned tag record(s) (%s: %s)",
                len(failed),
                path.name,
                why,
            )
        return gone

    async def forget_tag(self, repo: RepoKey, tag: str) -> bool:
        """Drop a tag (e.g. the upstream answered 404 for it); False if it was not cached."""
        path = self._tag_path(repo, tag)
        existed = await asyncio.to_thread(_unlink_existed, path)
        self._point_tag(path, None)
        return existed

    def list_tags(self) -> list[TagEntry]:
        """Every cached tag, oldest fetch first (for ``docxy cache ls``)."""
        found = []
        tags_dir = self.root / "tags"
        if tags_dir.is_dir():
            for path in tags_dir.glob("*.json"):
                entry = _parse_tag(path)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: e.fetched_at)

    def points_at_cached(self, entry: TagEntry) -> bool:
        """Whether the manifest tag ``entry`` points at is cached (its record beside it), or
        the tag is only noted (:meth:`set_tag` after a HEAD). Reads the disk (administration,
        as :meth:`list_tags`)."""
        return self._on_disk(ImageKey(_upstream_key(entry.repo.upstream), entry.digest))

    def _read_tag(self, repo: RepoKey, tag: str) -> TagEntry | None:
        entry = _parse_tag(self._tag_path(repo, tag))
        if entry is None or entry.repo != repo or entry.tag != tag:
            return None
        return entry

    def _write_tag(self, entry: TagEntry) -> None:
        record = {
            "upstream": entry.repo.upstream,
            "repo": entry.repo.repo,
            "tag": entry.tag,
            "digest": str(entry.digest),
            "fetched_at": entry.fetched_at,
            "public": entry.public,
        }
        path = self._tag_path(entry.repo, entry.tag)
        write_atomic(path, json.dumps(record).encode(), self._tmp)

    # --- the image catalogue (for eviction) ------------------------------------------------

    def images(self) -> list[Image]:
        """Every cached manifest with what it needs and when it was last pulled."""
        return list(self._catalogue().values())

    def _catalogue(self) -> dict[ImageKey, Image]:
        """The catalogue; if it is still being read at start, waits for it (blocking, see
        :meth:`loaded`). A failed read raises its error (see :class:`StartRead`)."""
        if self._images is None:
            scanned = self._scan() if self._scanning is None else self._scanning.result()
            self._adopt(*scanned)
        assert self._images is not None
        return self._images

    def _read_afresh(self) -> None:
        """Before the catalogue is read again after a failed read: drop what was noted for
        the failed one. The fresh read finds those changes on disk; replayed on it, one
        noted long ago (a blob found gone, its image pulled and its blob fetched again since)
        would undo what the disk says now."""
        self._journal.clear()
        self._sizes_meanwhile.clear()

    def _in_memory(self) -> bool:
        """Whether the catalogue is in memory (taking over a finished background read). Not
        while its read failed: what is cached is served from disk, as while it is read, and
        the read is tried again a while later (:class:`StartRead`); a pull or a put failed
        with its error, a 500 each, until a restart."""
        if self._images is None and self._scanning is not None and self._scanning.done():
            try:
                self._catalogue()
            except OSError:  # said when it failed (once)
                return False
        return self._images is not None

    def _or_later(self, change: Callable[[], None]) -> None:
        """Make ``change`` to the catalogue now, or once it is read (:meth:`_later`)."""
        if self._in_memory():
            change()
        else:
            self._later(change)

    def _later(self, change: Callable[[], None]) -> None:
        """Note ``change`` for the catalogue being read; none while its read failed: the
        fresh read finds it on disk (noted, and kept till then, one a pull, the notes grew
        without bound while a disk kept failing, and were replayed late: :meth:`_read_afresh`)."""
        if self._scanning is None or not self._scanning.failed():
            self._journal.append(change)

    def _adopt(
        self,
        images: dict[ImageKey, Image],
        tags: dict[Path, ImageKey],
        seen: dict[ImageKey, dict[str, bool]],
        sizes: Mapping[Digest, int],
        leftovers: set[ImageKey],
    ) -> None:
        """Take a catalogue read from disk, with its indexes; then hand ``sizes`` (what the
        manifests read give their blobs) to :attr:`sizes_read`, and delete the ``leftovers``
        (:meth:`_drop_leftovers`)."""
        self._images, self._tag_files, self._tags_of, self._seen = images, {}, {}, seen
        self._holders, self._parents = {}, {}
        for image in images.values():
            self._index(image)
        for path, key in tags.items():
            self._point_tag(path, key)
        journal, self._journal = self._journal, []
        for change in journal:
            change()
        meanwhile, self._sizes_meanwhile = self._sizes_meanwhile, []
        if self.sizes_read is not None:
            self.sizes_read(_undisputed(sizes, meanwhile))
        self._drop_leftovers(leftovers)

    def _drop_leftovers(self, leftovers: set[ImageKey]) -> None:
        """Delete, in a worker thread, the ``.json`` records and repository records the read
        at start found of manifests not cached (a kill or a full disk left them: no manifest
        file, or one without its ``.json`` record, which goes too); none of one the catalogue
        holds now (a put of it since), and a put of one meanwhile waits for the delete. Only
        in a serving process (it holds the cache's lock: no other writer), on its loop;
        ``docxy cache gc`` removes them otherwise."""
        images = self._images or {}
        doomed = [key for key in leftovers if key not in images and key not in self._deleting]
        if not doomed or self._scanning is None or running_loop() is None:
            return
        self._deleting_in_thread(
            "cache: delete the leftovers of manifests not cached",
            asyncio.to_thread(self._delete_leftovers, doomed),
            doomed,
        )

    def _delete_leftovers(self, keys: list[ImageKey]) -> None:
        """In a worker thread: the records of manifests ``keys`` (and a manifest file without
        its ``.json``), if they are not cached. Those the disk keeps (read-only, another
        owner's: a root run's) are said in one WARNING at each start, not one a manifest: gc
        names each file and how to hand them over."""
        removed, kept = 0, []
        for key in keys:
            path = self._key_path(key)
            if self._on_disk(key):
                continue
            try:
                self.access.forget_digest(key.upstream, key.digest)
                unlink_quietly(path)  # (:meth:`_delete`'s order)
                unlink_quietly(_meta_path(path))
            except OSError as exc:
                kept.append((key, exc))
                continue
            removed += 1
        if removed:
            log.info("cache: deleted the records of %d manifests not cached", removed)
        if kept:
            first, why = kept[0]
            log.warning(
                "cache: cannot delete the records of %d manifests not cached (%s: %s); kept, "
                "unused: `docxy cache gc` names each file and how to hand them to the cache's "
                "owner",
                len(kept),
                first.digest,
                os_error(why),
            )

    async def loaded(self) -> None:
        """Wait, without blocking the loop, until the catalogue is read (see :meth:`open`).
        A failed read raises its error (at once, or once the read in flight fails)."""
        if self._scanning is not None and not self._scanning.done():
            await waited_off_loop(self._scanning.future)  # (not cancelled with its waiter)
        self._catalogue()

    def _on_disk(self, key: ImageKey) -> bool:
        """In a worker thread: whether manifest ``key`` is cached, its record beside it."""
        path = self._key_path(key)
        return path.is_file() and _meta_path(path).is_file()

    def _not_cached(self, key: ImageKey) -> None:
        """Manifest ``key`` joined the catalogue but could not be stored: not an image of the
        cache (a tag pointing at it stays, as one noted from a HEAD does)."""
        assert self._images is not None
        image = self._images.pop(key, None)
        if image is not None:
            self._unindex(image)
        self._seen.pop(key, None)

    def _index(self, image: Image) -> None:
        for digest in image.blobs:
            self._holders.setdefault(digest, set()).add(image.key)
        for child in image.children:
            self._parents.setdefault(ImageKey(image.key.upstream, child), set()).add(image.key)

    def _unindex(self, image: Image) -> None:
        for digest in image.blobs:
            _discard(self._holders, digest, image.key)
        for child in image.children:
            _discard(self._parents, ImageKey(image.key.upstream, child), image.key)

    def _point_tag(self, path: Path, key: ImageKey | None) -> None:
        """Tag record ``path`` now points at ``key`` (None: it is gone)."""
        if not self._in_memory():
            self._later(lambda: self._point_tag(path, key))
            return
        old = self._tag_files.pop(path, None)
        if old is not None:
            _discard(self._tags_of, old, path)
        if key is not None:
            self._tag_files[path] = key
            self._tags_of.setdefault(key, set()).add(path)

    def undeletable(self) -> set[ImageKey]:
        """The cached manifests an eviction must leave alone: those whose delete the disk
        refused (see :meth:`evict_images`) in the last :data:`REFUSED_RETRY` seconds, and the
        manifests below them (forgetting a child forgets the indexes above it)."""
        now = self._clock()
        refused = [key for key, when in self._undeletable.items() if _refused_lately(now, when)]
        return below(refused, self._catalogue())

    def needed(self, digest: Digest) -> bool:
        """Whether a cached image needs blob ``digest``, or one a :meth:`put` is storing."""
        self._catalogue()
        return digest in self._holders or digest in self._storing

    def pulled_above(self, keys: Iterable[ImageKey]) -> dict[ImageKey, float]:
        """``keys`` cached and the cached indexes above them → when each was last pulled (see
        :meth:`ImageCatalog.pulled_above`)."""
        images = self._catalogue()
        found = self._with_indexes(keys)
        return {key: images[key].last_pulled for key in found if key in images}

    def blob_visibility(self, repo: RepoKey, digest: Digest) -> Visibility | None:
        """How blob ``digest`` is known in ``repo``: through a cached manifest that needs it and
        was served for ``repo`` (public if any such manifest is), else None (not known there;
        nor while the catalogue's read failed: the upstream is asked)."""
        try:
            self._catalogue()
        except OSError:
            return None
        upstream, hashed = _upstream_key(repo.upstream), repo.hashed()
        found: Visibility | None = None
        for key in self._holders.get(digest, ()):
            if key.upstream != upstream:
                continue
            public = self._seen.get(key, {}).get(hashed)
            if public:
                return Visibility(repo, public=True)
            if public is not None:
                found = Visibility(repo, public=False)
        return found

    def forget_images(self, keys: Iterable[ImageKey], *, offer_kept: bool = True) -> None:
        """Drop these manifests, every index pointing at one of them, and the tags pointing at
        any of those: they are no longer offered, so a pull asks the upstream again (and fails
        cleanly, at its first step, if it is down). A delete the disk refuses raises (the
        callers say so: the blob store in one WARNING, ``docxy cache`` in one line; neither
        deletes a blob those images need); the images it did not delete are offered again, as
        :meth:`evict_images` does, unless not ``offer_kept`` (a blob they need is gone: an
        image is never offered without its blobs, and their files wait for the next start)."""
        keys = list(keys)
        put_back = self._put_back(keys)
        gone, tags = self._unoffer(keys)
        deleted: list[ImageKey] = []
        try:
            self._delete(gone, tags, deleted)
        except OSError:
            if offer_kept:
                put_back(gone, deleted)
            raise

    async def evict_images(self, keys: Iterable[ImageKey]) -> None:
        """:meth:`forget_images`, with the files deleted in a worker thread (slow on some file
        systems); the images are no longer offered from the call on (:meth:`get` misses). A
        pull that stores one of those manifests or tags again meanwhile waits for the delete
        (:meth:`_deleted`), or its new files would be deleted under it. A delete the disk
        refuses raises, and the images whose manifest files are still there are offered again,
        as those files say, their tags untouched: the next eviction keeps the blobs they need
        (their files would bring them back at the next start, without those blobs), and leaves
        the one refused out (:meth:`undeletable`)."""
        keys = list(keys)
        put_back = self._put_back(keys)
        gone, tags = self._unoffer(keys)
        if not gone:
            return
        deleted: list[ImageKey] = []  # those whose manifest file is gone, in the thread
        deleting = self._deleting_in_thread(
            "cache: delete evicted manifests",
            _refused(partial(self._delete, gone, tags, deleted)),
            [*gone, *chain.from_iterable(tags.values())],
        )
        refused = await asyncio.shield(deleting)  # cancelled, the thread deletes on: waited for
        if refused is not None:  # raised here, not by the task (a "crashed" traceback)
            put_back(gone, deleted)
            raise refused

    def _put_back(
        self, keys: Iterable[ImageKey]
    ) -> Callable[[list[ImageKey], list[ImageKey]], None]:
        """What :meth:`_unoffer` of ``keys`` is about to take out (the images, with the indexes
        above them, their tag pointers and access records), to put back after a refused
        delete: the function returned, given what it took out (``gone``) and what was deleted
        of it, offers the others again and notes the first, the one refused (the rest were not
        tried), as :meth:`undeletable`."""
        images = self._catalogue()
        before = {key: images[key] for key in self._with_indexes(keys) if key in images}
        pointers = {path: key for key in before for path in self._tags_of.get(key, ())}
        seen = {key: self._seen[key] for key in before if key in self._seen}

        def put_back(gone: list[ImageKey], deleted: list[ImageKey]) -> None:
            left = [key for key in gone if key not in deleted]
            if left:
                self._refused_delete(left[0])
            kept = {key: before[key] for key in left if key in before}
            self._offer_again(
                kept, {path: key for path, key in pointers.items() if key in kept}, seen
            )

        return put_back

    def _refused_delete(self, key: ImageKey) -> None:
        """Note that the disk refused to delete manifest ``key`` now (see :meth:`undeletable`),
        dropping the notes of earlier refusals that expired: read, they change nothing."""
        now = self._clock()
        for old, when in list(self._undeletable.items()):
            if not _refused_lately(now, when):
                del self._undeletable[old]
        self._undeletable[key] = now

    def _offer_again(
        self,
        kept: dict[ImageKey, Image],
        pointers: dict[Path, ImageKey],
        seen: dict[ImageKey, dict[str, bool]],
    ) -> None:
        """Put images :meth:`_unoffer` took out back in the catalogue, with their tag pointers
        and access records, but for those a pull stored again meanwhile."""
        images = self._catalogue()
        for key, image in kept.items():
            if key not in images:
                images[key] = image
                self._index(image)
                if key in seen:
                    self._seen.setdefault(key, {}).update(seen[key])
        for path, key in pointers.items():
            if path not in self._tag_files:
                self._point_tag(path, key)

    async def _deleted(self, *files: ImageKey | Path) -> None:
        """Wait until no eviction is deleting any of ``files`` (see :meth:`evict_images`)."""
        while pending := {self._deleting[f] for f in files if f in self._deleting}:
            await asyncio.wait(pending)

    def _deleting_in_thread(
        self, name: str, delete: Coroutine[Any, Any, T], files: Iterable[ImageKey | Path]
    ) -> asyncio.Task[T]:
        """Start ``delete`` (of ``files``: manifests by key, tag records by path) as a task: a
        pull that writes one of them again meanwhile waits for it (:meth:`_deleted`)."""
        deleting: asyncio.Task[T] = spawn(name, delete)
        files = list(files)
        for item in files:
            self._deleting[item] = deleting
        deleting.add_done_callback(lambda _: self._deleted_all(files, deleting))
        return deleting

    def _deleted_all(self, files: Iterable[ImageKey | Path], deleting: asyncio.Future[Any]) -> None:
        for item in files:
            if self._deleting.get(item) is deleting:
                del self._deleting[item]

    def _unoffer(
        self, keys: Iterable[ImageKey]
    ) -> tuple[list[ImageKey], dict[ImageKey, list[Path]]]:
        """Take the images (with the indexes above them) out of the catalogue and their tags out
        of the tag map; returns them, indexes first, and each one's tag records, for
        :meth:`_delete`."""
        images = self._catalogue()
        gone = self._with_indexes(keys)
        tags: dict[ImageKey, list[Path]] = {}
        indexes: list[ImageKey] = []
        for key in gone:
            image = images.pop(key, None)
            if image is not None:
                self._unindex(image)
                if image.children:
                    indexes.append(key)
            self._seen.pop(key, None)
            self._undeletable.pop(key, None)
            for tag_path in list(self._tags_of.get(key, ())):
                tags.setdefault(key, []).append(tag_path)
                self._point_tag(tag_path, None)
        if gone:
            names = sorted(_short(gone))
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            log.info("cache: forgot %d manifests (%s%s)", len(gone), ", ".join(names[:8]), more)
        first = set(indexes)
        return indexes + [key for key in gone if key not in first], tags

    def _delete(
        self,
        gone: Iterable[ImageKey],
        tags: Mapping[ImageKey, Iterable[Path]],
        deleted: list[ImageKey] | None = None,
    ) -> None:
        """The files of forgotten images, image by image (indexes before the rest, ``gone``'s
        order): its repository records, its manifest file, then its tag records and its ``.json``
        record (each one whose manifest file went is added to ``deleted``). Cut short (the process
        killed), what is left on disk is whole: no index of a deleted platform manifest (a tag
        record left of a deleted one is a note, :meth:`sweep_tags`'s). A manifest file the disk
        refuses to delete (read-only, another owner's), or a repository record, stops it there, for
        the same reason, and raises, that image and the rest untouched: the caller deletes no blob
        they need (they would be back, without it, at the next start). A record refused after its
        manifest file went raises once the rest are deleted."""
        failed: OSError | None = None
        for key in gone:
            path = self._key_path(key)
            # Its repository records before its file: cut short between the two, a manifest is
            # left with none (a miss: asked upstream), never records of one no longer cached,
            # which would vouch for it in those repositories once it is cached again.
            self.access.forget_digest(key.upstream, key.digest)
            unlink_quietly(path)  # without it, the manifest is no longer cached
            if deleted is not None:
                deleted.append(key)
            for record in [*tags.get(key, ()), _meta_path(path)]:
                try:
                    unlink_quietly(record)
                except OSError as exc:
                    failed = failed or exc
        if failed is not None:
            raise failed

    def _with_indexes(self, keys: Iterable[ImageKey]) -> set[ImageKey]:
        """``keys`` and, transitively, the cached indexes pointing at them."""
        found: set[ImageKey] = set()
        todo = list(keys)
        while todo:
            key = todo.pop()
            if key not in found:
                found.add(key)
                todo.extend(self._parents.get(key, ()))
        return found

    def blob_gone(self, digest: Digest, *, present: bool = False) -> None:
        """A blob left the cache: forget every image that is no longer whole without it.

        ``present``: it is still there, to be deleted once they are forgotten (``docxy cache
        rm --blobs``, ``gc --verify``): a refused delete raises, the caller keeps the blob, and
        the images not deleted are offered again, whole. Else it is gone already: those are
        not offered again (see :meth:`forget_images`)."""
        self._catalogue()
        self.forget_images(list(self._holders.get(digest, ())), offer_kept=present)

    def _pulled(self, key: ImageKey, content: bytes) -> None:
        if self._images is None and self._scanning is None:
            return  # read from disk, with this one, on first use
        now = time.time()
        self._or_later(lambda: self._note_pull(key, now, content))

    def _note_pull(self, key: ImageKey, when: float, content: bytes) -> None:
        assert self._images is not None
        old = self._images.get(key)
        if old is None:
            blobs, children = needs(content)  # parsed once, when it joins the catalogue
            self._images[key] = Image(key, when, blobs, children)
            self._index(self._images[key])
        else:
            self._images[key] = Image(key, when, old.blobs, old.children)

    def tidy(self, age: float = LEFTOVER_AGE) -> Tidied:
        """For ``docxy cache gc``, beside a live mirror maybe: remove what a kill or a full
        disk left that nothing else would. A ``.json`` record without its manifest file (the
        disk refused the file after it), the records of a manifest no longer cached (a delete
        cut short by an earlier version), temp files in ``tmp/`` and those earlier versions
        wrote beside a repository record; those a live writer may hold (younger than ``age``
        seconds) are left. Returns how many files went, and those the disk kept."""
        cutoff = time.time() - age
        tidied: Tidied = (0, [])
        base = self.root / "by-digest"
        for meta in globbed(base, "*/*/*/*.json"):
            if not meta.with_name(meta.name.removesuffix(".json")).exists():
                tidied = _plus(tidied, _remove_older(meta, cutoff))
        for folder in {self._tmp, self.access.tmp_dir}:
            try:
                paths = list(folder.iterdir()) if folder.is_dir() else []
            except OSError as exc:  # one folder it may not list stops nothing else
                tidied = _plus(tidied, (0, [(folder, exc)]))
                continue
            for path in paths:
                tidied = _plus(tidied, _remove_older(path, cutoff))
        for upstream, digest, folder in self.access.digest_dirs():
            try:
                found = self._tidy_records(ImageKey(upstream, digest), folder, cutoff)
            except FileNotFoundError:  # forgotten since listed (a live mirror's put, delete)
                continue
            except OSError as exc:  # a folder it may not list (an old root run's): said, skipped
                found = (0, [(folder, exc)])
            tidied = _plus(tidied, found)
        return tidied

    def _tidy_records(self, key: ImageKey, folder: Path, cutoff: float) -> Tidied:
        """The repository records of manifest ``key`` in ``folder`` older than ``cutoff``, if
        it is not cached; else their old temp files. A record younger than that is left: a
        live mirror's put may have cached its manifest since this looked (a put forgets the
        records of a manifest it finds uncached, the serving start those left over)."""
        cached = self._on_disk(key)
        tidied: Tidied = (0, [])
        for path in folder.iterdir():
            if not cached or is_temp_name(path.name):
                tidied = _plus(tidied, _remove_older(path, cutoff))
        if not cached:
            with contextlib.suppress(OSError):  # a record left (young, or the disk kept it)
                folder.rmdir()
        return tidied

    def _scan(self) -> Scanned:
        images: dict[ImageKey, Image] = {}
        sizes: dict[Digest, int] = {}
        mixed: set[Digest] = set()  # blobs manifests give different sizes: held to none
        base = self.root / "by-digest"
        # A file time in the future (set while the clock ran ahead, since set right) counts as
        # now: else eviction took it for the latest pull until then, before any real one.
        now = time.time()
        listed: set[ImageKey] = set()  # manifest files, read or not
        records: set[ImageKey] = set()  # .json records: those of no manifest file are leftovers
        for path in globbed(base, "*/*/*/*"):
            upstream_key, algorithm, _, hex_ = path.relative_to(base).parts
            try:
                if hex_.endswith(".json"):
                    records.add(ImageKey(upstream_key, Digest(algorithm, hex_[:-5])))
                    continue
                key = ImageKey(upstream_key, Digest(algorithm, hex_))
                if not _meta_path(path).is_file():
                    # Its record is gone (an earlier version's drop of a corrupt manifest, cut
                    # short): not cached (as for get), a leftover, its records with it.
                    records.add(key)
                    continue
                listed.add(key)
                content = path.read_bytes()
                mtime = min(path.stat().st_mtime, now)
            except (DigestInvalid, OSError):
                continue  # the .json beside it, or a file that went away
            blobs, children, given = needs_sized(content)
            images[key] = Image(key, mtime, blobs, children)
            for digest, size in given.items():
                if sizes.setdefault(digest, size) != size:
                    mixed.add(digest)
        for digest in mixed:
            del sizes[digest]
        tags: dict[Path, ImageKey] = {}
        for entry in self.list_tags():
            path = self._tag_path(entry.repo, entry.tag)
            tags[path] = ImageKey(_upstream_key(entry.repo.upstream), entry.digest)
        seen: dict[ImageKey, dict[str, bool]] = {}
        for upstream, digest, marker in self.access.markers():
            key = ImageKey(upstream, digest)
            if key not in images:
                records.add(key)
            elif marker.suffix in (".public", ".private"):
                known = seen.setdefault(key, {})
                known[marker.stem] = known.get(marker.stem, False) or marker.suffix == ".public"
        return images, tags, seen, sizes, records - listed


def _undisputed(sizes: Mapping[Digest, int], others: list[dict[Digest, int]]) -> dict[Digest, int]:
    """``sizes`` without the blobs any of ``others`` gives another size."""
    kept = dict(sizes)
    for given in others:
        for digest, size in given.items():
            if kept.get(digest, size) != size:
                del kept[digest]
    return kept


def _meta_path(path: Path) -> Path:
    """The record (media type, size) beside a manifest's file."""
    return path.with_name(path.name + ".json")


def _remove_older(path: Path, cutoff: float) -> Tidied:
    """Remove file ``path`` if last changed before ``cutoff``: (1, []) if it went, (0, [])
    if young or gone already, (0, [(path, why)]) if the disk refused."""
    try:
        if not path.is_file() or path.stat().st_mtime >= cutoff:
            return 0, []
        path.unlink()
    except FileNotFoundError:
        return 0, []
    except OSError as exc:
        return 0, [(path, exc)]
    return 1, []


def _plus(a: Tidied, b: Tidied) -> Tidied:
    return a[0] + b[0], a[1] + b[1]


def _merge_into(source: Path, target: Path) -> int:
    """Move the manifests of folder ``source`` into ``target`` (records first: a manifest is
    cached once its own file is in place), keeping what ``target`` has; ``source`` goes.
    Returns how many manifests moved."""
    files = sorted(
        (path for path in source.rglob("*") if path.is_file()),
        key=lambda path: not path.name.endswith(".json"),
    )
    count = 0
    for path in files:
        moved = target / path.relative_to(source)
        if moved.exists():
            continue
        moved.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, moved)
        count += not path.name.endswith(".json")
    shutil.rmtree(source)
    return count


async def _refused(delete: Callable[[], None]) -> OSError | None:
    """``delete()`` in a worker thread; the error a refusing disk raised, if one did."""
    try:
        await asyncio.to_thread(delete)
    except OSError as exc:
        return exc
    return None


def _refused_lately(now: float, refused_at: float) -> bool:
    """Whether a delete refused at ``refused_at`` is left alone still (a clock set back since
    the refusal: no longer)."""
    return 0 <= now - refused_at < REFUSED_RETRY


def _written_before(paths: Iterable[Path], cutoff: float) -> list[Path]:
    """Those of the tag records ``paths`` last written at ``cutoff`` or before (their
    ``fetched_at``); one gone or unreadable meanwhile is not among them."""
    return [
        path
        for path in paths
        if (entry := _parse_tag(path)) is not None and entry.fetched_at <= cutoff
    ]


def _unlink_all(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Delete ``paths`` (one already gone is fine); returns those that could not be, and why."""
    failed = []
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append((path, exc.strerror or str(exc)))
    return failed


def _unlink_existed(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


#: The catalogue read from disk: images, tag pointers, repository records, blob sizes, and the
#: manifests not cached that left a ``.json`` record or repository records (see :meth:`_adopt`).
Scanned = tuple[
    dict[ImageKey, Image],
    dict[Path, ImageKey],
    dict[ImageKey, dict[str, bool]],
    dict[Digest, int],
    set[ImageKey],
]


def _discard(index: dict[K, set[V]], key: K, value: V) -> None:
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]


def _count(counts: dict[K, int], keys: Iterable[K], step: int) -> None:
    """Add ``step`` to the count of each of ``keys``; a count that falls to 0 goes."""
    for key in keys:
        if (left := counts.get(key, 0) + step) > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


def _short(keys: Iterable[ImageKey]) -> list[str]:
    return [f"{key.digest.algorithm}:{key.digest.hex[:12]}" for key in keys]


class _ReadBack:
    """A tag record read back after a refused write (:meth:`ManifestStore._point_as_on_disk`):
    ``written`` once a write of it began meanwhile."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


def _parse_tag(path: Path) -> TagEntry | None:
    try:
        data = json.loads(path.read_bytes())  # the mirror's own record
        fetched_at = data["fetched_at"]
        public = data["public"]
        if not isinstance(fetched_at, int | float) or not isinstance(public, bool):
            raise TypeError("bad field types")
        return TagEntry(
            RepoKey(str(data["upstream"]), str(data["repo"])),
            str(data["tag"]),
            parse_digest(data["digest"]),
            float(fetched_at),
            public,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, CacheError) as exc:
        log.warning("cache: unreadable tag record %s (%s), ignored", path.name, exc)
        return None


def referenced_digests(content: bytes) -> list[Digest]:
    """Digests a manifest or index points at (config, layers, child manifests), in order.

    What it is made of, as :func:`docxy.cache.images.needs` counts it, foreign layers (``urls``)
    included: never its ``subject``, the image an artifact (a signature, an SBOM) is about,
    which is not part of the artifact, nor a field that no cached manifest type has (a
    ``blobs`` list). For ``docxy cache rm``; invalid entries are skipped.
    """
    doc = jsondoc.object_in(content)
    if doc is None:
        return []
    descriptors: list[Any] = [doc.get("config")]
    for key in ("layers", "manifests"):
        items = doc.get(key)
        if isinstance(items, list):
            descriptors.extend(items)
    found: list[Digest] = []
    for descriptor in descriptors:
        if isinstance(descriptor, dict):
            try:
                digest = parse_digest(descriptor.get("digest"))  # type: ignore[arg-type]
            except DigestInvalid:
                continue
            if digest not in found:
                found.append(digest)
    return found
