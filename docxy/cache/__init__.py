"""The verifying pull-through cache: blobs, manifests and tags, and who may read them.

``open_cache(directory, max_size=..., tag_ttl=...)`` (a serving mirror's) and ``open_for_admin``
(``docxy cache ...`` beside it), both reached from a configuration by :func:`open_configured`,
lay out::

    <directory>/blobs/   <directory>/tmp/     DiskBlobStore
    <directory>/manifests/                    ManifestStore (also the blob store's image catalogue)
    <directory>/access/                       AccessIndex (lives and dies with the manifests)
    <directory>/docxy.lock                    held by the serving mirror (docxy.cache.lock)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from docxy.cache.blobs import ROOM_WAIT, BlobEntry, BlobStore, DiskBlobStore, Fill, GcReport, Usage
from docxy.cache.errors import (
    BlobInUse,
    CacheError,
    CacheUnreadable,
    CacheUnwritable,
    DigestMismatch,
    FetchFailed,
    FetchRefused,
    FillAborted,
    FillClosed,
    SizeMismatch,
    VerifyError,
)
from docxy.cache.files import make_private
from docxy.cache.fill import BlobFollower, BlobWriter, Download, Fetch
from docxy.cache.images import EvictionPlan, Image, ImageCatalog, ImageKey, plan_eviction
from docxy.cache.lock import CacheInUse, hold
from docxy.cache.manifests import (
    CachedManifest,
    ManifestStore,
    TagEntry,
    TagResolution,
    TagState,
    referenced_digests,
)
from docxy.cache.reader import BlobReader
from docxy.cache.visibility import ANONYMOUS, AccessIndex, Identity, RepoKey, Visibility, may_serve
from docxy.core.digests import Digest, blob_relpath, digest_of, is_digest, parse_digest

if TYPE_CHECKING:
    from docxy.config import Config

__all__ = [
    "ANONYMOUS",
    "AccessIndex",
    "BlobEntry",
    "BlobFollower",
    "BlobInUse",
    "BlobReader",
    "BlobStore",
    "BlobWriter",
    "Cache",
    "CacheError",
    "CacheInUse",
    "CacheUnreadable",
    "CacheUnwritable",
    "CachedManifest",
    "Digest",
    "DigestMismatch",
    "DiskBlobStore",
    "Download",
    "EvictionPlan",
    "Fetch",
    "FetchFailed",
    "FetchRefused",
    "Fill",
    "FillAborted",
    "FillClosed",
    "GcReport",
    "Identity",
    "Image",
    "ImageCatalog",
    "ImageKey",
    "ManifestStore",
    "RepoKey",
    "SizeMismatch",
    "TagEntry",
    "TagResolution",
    "TagState",
    "Usage",
    "VerifyError",
    "Visibility",
    "blob_relpath",
    "digest_of",
    "is_digest",
    "may_serve",
    "open_cache",
    "open_configured",
    "open_for_admin",
    "parse_digest",
    "plan_eviction",
    "referenced_digests",
]


@dataclass(frozen=True, slots=True)
class Cache:
    blobs: DiskBlobStore
    manifests: ManifestStore
    access: AccessIndex


def open_cache(
    directory: Path,
    *,
    max_size: int,
    tag_ttl: float,
    room_wait: float = ROOM_WAIT,
    direct_writes: bool = True,
    registries: Iterable[str] = (),
) -> Cache:
    """Open (and recover) the cache in ``directory`` for a serving process. Quick: the blob
    index and the manifest catalogue are read in worker threads, and the stores serve from disk
    meanwhile (``await cache.blobs.indexed()`` / ``cache.manifests.loaded()`` wait for them).
    Called on the event loop, it takes the index over there as soon as it is read. What an
    earlier version keyed under another spelling of one of the ``registries`` (the upstreams'
    URLs) is moved to its key now (:meth:`ManifestStore.respell`). Raises
    :class:`CacheInUse` when another process serves from ``directory`` (:mod:`docxy.cache.lock`)."""
    directory = Path(directory)
    make_private(directory)  # before anything is written in it
    hold(directory)  # before its start-up sweep: another mirror's fills are not ours to clear
    access = AccessIndex(directory / "access", directory / "manifests" / "tmp")
    blobs = DiskBlobStore.open(
        directory, max_size, room_wait=room_wait, direct_writes=direct_writes
    )
    manifests = ManifestStore.open(
        directory / "manifests",
        access,
        tag_ttl=tag_ttl,
        registries=registries,
    )
    blobs.catalog = manifests  # eviction keeps images whole, least recently pulled go first
    manifests.drop_vanished = blobs.drop_vanished  # a manifest stored finds its blobs as they are
    manifests.sizes_read = blobs.hold_to_sizes  # a blob file cut short while stopped is dropped
    blobs.check_at_start()  # a cap over the disk's size said; a cap lowered since, evicted to
    return Cache(blobs=blobs, manifests=manifests, access=access)


def open_for_admin(
    directory: Path, *, max_size: int, tag_ttl: float, registries: Iterable[str] = ()
) -> Cache:
    """The cache in ``directory`` for ``docxy cache ...``, beside a live mirror: without the
    serving-time recovery (a live mirror's temp files are left alone), its blob index read at
    once. What an earlier version keyed under another spelling of one of the ``registries`` is
    moved first, as :func:`open_cache` moves it (else the commands would list, and ``rm``
    miss, entries the mirror serves under their key now). Raises FileNotFoundError when there
    is no cache there, and OSError when a folder of its blobs may not be listed."""
    if not (directory / "blobs").is_dir() and not (directory / "manifests").is_dir():
        raise FileNotFoundError(f"no cache in {directory}")
    blobs = DiskBlobStore(directory, max_size)
    blobs.scan(strict=True)  # a folder it may not list raises: not counted as empty
    access = AccessIndex(directory / "access", directory / "manifests" / "tmp")
    manifests = ManifestStore(directory / "manifests", access, tag_ttl=tag_ttl)
    manifests.upgrade(registries)  # as ManifestStore.open does
    blobs.catalog = manifests  # gc evicts image by image; a removed blob takes its images along
    return Cache(blobs=blobs, manifests=manifests, access=access)


def open_configured(config: Config, *, admin: bool = False) -> Cache:
    """The cache of ``config`` as the mirror opens it (:func:`open_cache`), or for ``docxy
    cache ...`` beside it (``admin``: :func:`open_for_admin`, which raises FileNotFoundError
    when there is none). Either way it is given every configured upstream's registry, so what
    an earlier version keyed under another spelling of one is moved before anything is read."""
    cache = config.cache
    registries = [config.upstream.registry, *(named.registry for named in config.upstreams)]
    if admin:
        return open_for_admin(
            cache.dir, max_size=cache.max_size, tag_ttl=cache.tag_ttl, registries=registries
        )
    return open_cache(
        cache.dir,
        max_size=cache.max_size,
        tag_ttl=cache.tag_ttl,
        room_wait=cache.room_wait,
        direct_writes=cache.direct_writes,
        registries=registries,
    )
