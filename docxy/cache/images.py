"""Image-aware eviction: which cached images to forget and which blobs to delete, as pure data.

An *image* here is one cached manifest: an image manifest needs its config and layer blobs; an
index needs its child manifests. Evicting blob by blob would leave a cached tag whose layers are
gone, so that with the upstream down the image fails half-way through a pull. Instead:

1. blobs no cached image needs go first, least recently used first;
2. then whole images, least recently pulled first: an image is forgotten (its manifest, so a tag
   pointing at it resolves upstream again), then its blobs that no kept image needs are deleted;
3. an index goes with its children, and a child with the indexes that point at it, so an index
   the cache still offers never leads to a missing child.

:func:`plan_eviction` decides; the stores apply the plan, manifests first, so the cache never
offers a manifest whose blobs are already gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from docxy.core import jsondoc
from docxy.core.digests import Digest, parse_digest
from docxy.core.errors import DigestInvalid

if TYPE_CHECKING:
    from docxy.cache.blobs import BlobEntry


@dataclass(frozen=True, slots=True)
class ImageKey:
    """A cached manifest: ``upstream`` is the store's key for the upstream registry."""

    upstream: str
    digest: Digest


@dataclass(frozen=True, slots=True)
class Image:
    key: ImageKey
    last_pulled: float
    blobs: frozenset[Digest] = field(default_factory=frozenset)  # config and layers
    children: frozenset[Digest] = field(default_factory=frozenset)  # an index's manifests


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    images: tuple[ImageKey, ...]  # forget these manifests first...
    blobs: tuple[BlobEntry, ...]  # ...then delete these blobs
    freed: int


class ImageCatalog(Protocol):
    """What the blob store asks of the manifest store (:class:`ManifestStore` implements it)."""

    async def loaded(self) -> None:
        """Wait until the catalogue is read from disk (before planning an eviction)."""
        ...

    def images(self) -> list[Image]: ...

    def forget_images(self, keys: Iterable[ImageKey], *, offer_kept: bool = True) -> None:
        """Stop offering these images, and every index pointing at one of them; a delete the
        disk refuses raises (``offer_kept``: the images not deleted offered again)."""
        ...

    async def evict_images(self, keys: Iterable[ImageKey]) -> None:
        """:meth:`forget_images`, the files deleted off the event loop."""
        ...

    def blob_gone(self, digest: Digest, *, present: bool = False) -> None:
        """Forget the images needing blob ``digest`` (``present``: the caller deletes it after;
        if this raises, it keeps it, and the images not deleted are offered again)."""
        ...

    def needed(self, digest: Digest) -> bool:
        """Whether an image the cache still offers needs blob ``digest``, or one it is
        storing (the blob store's eviction deletes no such blob)."""
        ...

    def undeletable(self) -> set[ImageKey]:
        """Images an eviction must leave alone (the disk refused to delete their files)."""
        ...

    def pulled_above(self, keys: Iterable[ImageKey]) -> dict[ImageKey, float]:
        """Those of ``keys`` cached, with every cached index above them (transitively), each
        with when it was last pulled: an eviction plan forgets all of them (an index goes with
        its children), so one stored or pulled since the plan's snapshot must stop it."""
        ...


def needs(content: bytes) -> tuple[frozenset[Digest], frozenset[Digest]]:
    """``(blobs, child manifests)`` a manifest points at; invalid entries are skipped.

    The blobs are what a registry checks the repository holds when the manifest is pushed:
    its ``config`` and ``layers``, not a layer with ``urls`` (a foreign layer, which it does
    not look for) nor any other field's descriptors (an unknown ``blobs`` list is kept in the
    bytes unchecked). A cached manifest makes its blobs known in each repository it was
    served for (:meth:`ManifestStore.blob_visibility`): a descriptor nobody checked would
    let any repository's manifest name another's private blob into it."""
    blobs, children, _ = needs_sized(content)
    return blobs, children


def needs_sized(
    content: bytes,
) -> tuple[frozenset[Digest], frozenset[Digest], dict[Digest, int]]:
    """:func:`needs`, with the size the manifest gives each of those blobs (in one parse: the
    catalogue read at start holds the blob files to these sizes, see
    :meth:`DiskBlobStore.hold_to_sizes`)."""
    doc = jsondoc.object_in(content)
    if doc is None:
        return frozenset(), frozenset(), {}
    children = _digests(doc.get("manifests"))
    layers = doc.get("layers")
    descriptors = [doc.get("config"), *(layers if isinstance(layers, list) else [])]
    sizes: dict[Digest, int] = {}
    blobs = _digests(descriptors, pushed=True, sizes=sizes)
    return blobs, children, sizes


def _digests(
    items: Any, *, pushed: bool = False, sizes: dict[Digest, int] | None = None
) -> frozenset[Digest]:
    """The digests of the descriptors ``items``; ``pushed``: only those a registry checks are
    there when the manifest is pushed (not a foreign layer's, with ``urls``). Given ``sizes``,
    the ``size`` each descriptor that has one gives its digest is put there."""
    found = set()
    for item in items if isinstance(items, list) else []:
        if pushed and isinstance(item, dict) and item.get("urls"):
            continue  # a foreign layer: the registry never checked it is there
        if isinstance(item, dict) and isinstance(item.get("digest"), str):
            try:
                digest = parse_digest(item["digest"])
            except DigestInvalid:
                continue
            found.add(digest)
            size = item.get("size")
            if sizes is not None and type(size) is int and size >= 0:
                sizes[digest] = size
    return frozenset(found)


def plan_eviction(
    blobs: Iterable[BlobEntry],
    images: Iterable[Image],
    need: int,
    pinned: Callable[[Digest], bool],
) -> EvictionPlan:
    """What to evict to free ``need`` bytes of blobs (fewer if pinned blobs stand in the way).

    ``blobs`` are the stored blobs, least recently used first; pinned ones (being read) stay.
    Images are only forgotten up to the last one whose forgetting freed bytes, so a plan that
    cannot free anything more forgets nothing more. Linear in the blobs and images, plus one
    sort of the images: the blob store runs it in a worker thread over a snapshot.
    """
    present = {entry.digest: entry for entry in blobs}
    catalog = {image.key: image for image in images}
    parents = parents_of(catalog.values())
    users: Counter[Digest] = Counter(d for image in catalog.values() for d in image.blobs)
    chosen: list[BlobEntry] = []
    freed = 0

    def take(digest: Digest) -> None:
        nonlocal freed
        entry = present.pop(digest, None)
        if entry is not None:
            chosen.append(entry)
            freed += entry.size

    for digest in [d for d in present if not users[d] and not pinned(d)]:
        if freed >= need:
            break
        take(digest)
    forgotten: list[ImageKey] = []
    useful = 0  # forgotten[:useful] are worth forgetting
    if freed < need:
        ordered = sorted(catalog.values(), key=_recency(catalog, parents))
    else:
        ordered = []
    for image in ordered:
        if freed >= need:
            break
        if image.key not in catalog:
            continue  # already gone with its index or child
        before = freed
        for gone in with_relatives(image.key, catalog, parents):
            forgotten.append(gone.key)
            for digest in gone.blobs:
                users[digest] -= 1
                if not users[digest] and not pinned(digest) and freed < need:
                    take(digest)
        if freed > before:
            useful = len(forgotten)
    if useful < len(forgotten):  # nothing freed after these: keep them, and their blobs
        forgotten = forgotten[:useful]
    return EvictionPlan(tuple(forgotten), tuple(chosen), freed)


Parents = dict[ImageKey, list[ImageKey]]


def parents_of(images: Iterable[Image]) -> Parents:
    """Each child manifest's key → the keys of the indexes pointing at it (same upstream)."""
    parents: Parents = {}
    for image in images:
        for child in image.children:
            parents.setdefault(ImageKey(image.key.upstream, child), []).append(image.key)
    return parents


def below(keys: Iterable[ImageKey], catalog: Mapping[ImageKey, Image]) -> set[ImageKey]:
    """Those of ``keys`` in ``catalog`` and every cached manifest below them (an index's
    platforms, an index of indexes'), each key's children sharing its upstream."""
    found: set[ImageKey] = set()
    todo = list(keys)
    while todo:
        key = todo.pop()
        image = catalog.get(key)
        if key in found or image is None:
            continue
        found.add(key)
        todo.extend(ImageKey(key.upstream, child) for child in image.children)
    return found


def dependents(digest: Digest, images: Iterable[Image]) -> list[ImageKey]:
    """Images no longer whole without blob ``digest``: those needing it, with their relatives."""
    catalog = {image.key: image for image in images}
    parents = parents_of(catalog.values())
    found: list[ImageKey] = []
    for key in [k for k, image in catalog.items() if digest in image.blobs]:
        found.extend(gone.key for gone in with_relatives(key, catalog, parents, children=False))
    return found


def _recency(
    catalog: dict[ImageKey, Image], parents: Parents
) -> Callable[[Image], tuple[float, str, str]]:
    """An index counts as pulled when any of its children last was, and a child as its index."""

    def family_time(image: Image) -> float:
        times = [image.last_pulled]
        for child in image.children:
            found = catalog.get(ImageKey(image.key.upstream, child))
            if found is not None:
                times.append(found.last_pulled)
        times.extend(catalog[key].last_pulled for key in parents.get(image.key, ()))
        return max(times)

    return lambda image: (family_time(image), image.key.upstream, str(image.key.digest))


def with_relatives(
    key: ImageKey, catalog: dict[ImageKey, Image], parents: Parents, *, children: bool = True
) -> list[Image]:
    """Remove ``key`` from ``catalog`` with every index pointing at a removed manifest and (with
    ``children``) every child only removed indexes pointed at; returns what was removed.

    ``parents`` is :func:`parents_of` the catalogue before any removal; removed keys in it are
    skipped, so one index serves a whole plan."""
    removed: list[Image] = []
    todo = [key]
    while todo:
        image = catalog.pop(todo.pop(), None)
        if image is None:
            continue
        removed.append(image)
        up = image.key.upstream
        todo.extend(k for k in parents.get(image.key, ()) if k in catalog)
        for child in image.children if children else ():
            child_key = ImageKey(up, child)
            still_wanted = any(k in catalog for k in parents.get(child_key, ()))
            if child_key in catalog and not still_wanted:
                todo.append(child_key)
    return removed
