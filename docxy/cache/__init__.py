"""The verifying pull-through cache: blobs, manifests and tags, and who may read them.

``open_cache(directory, max_size=..., tag_ttl=...)`` lays out::

    <directory>/blobs/   <directory>/tmp/     DiskBlobStore
    <directory>/manifests/                    ManifestStore (also the blob store's image catalogue)
    <directory>/access/                       AccessIndex (lives and dies with the manifests)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
from docxy.cache.fill import BlobFollower, BlobWriter, Download, Fetch
from docxy.cache.images import EvictionPlan, Image, ImageCatalog, ImageKey, plan_eviction
from docxy.cache.manifests import (
    CachedManifest,
    ManifestStore,
    TagEntry,
    TagResolution,
    TagState,
    referenced_digests,
)
from docxy.cache.reader import BlobReader
from docxy.cache.stream import tee
from docxy.cache.visibility import ANONYMOUS, AccessIndex, Identity, RepoKey, Visibility, may_serve
from docxy.core.digests import Digest, blob_relpath, digest_of, is_digest, parse_digest
from docxy.core.hosts import earlier_spellings

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
    "parse_digest",
    "plan_eviction",
    "referenced_digests",
    "tee",
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
    registries: Iterable[str] = (),
) -> Cache:
    """Open (and recover) the cache in ``directory`` for a serving process. Quick: the blob
    index and the manifest catalogue are read in worker threads, and the stores serve from disk
    meanwhile (``await cache.blobs.indexed()`` / ``cache.manifests.loaded()`` wait for them).
    Called on the event loop, it takes the index over there as soon as it is read. What an
    earlier version keyed under another spelling of one of the ``registries`` (the upstreams'
    URLs) is moved to its key now (:meth:`ManifestStore.respell`)."""
    directory = Path(directory)
    access = AccessIndex(directory / "access")
    blobs = DiskBlobStore.open(directory, max_size, room_wait=room_wait)
    manifests = ManifestStore.open(
        directory / "manifests",
        access,
        tag_ttl=tag_ttl,
        spellings=earlier_spellings(registries),
    )
    blobs.catalog = manifests  # eviction keeps images whole, least recently pulled go first
    return Cache(blobs=blobs, manifests=manifests, access=access)
