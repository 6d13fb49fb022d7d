"""A large synthetic cache catalogue, to check and time eviction planning at scale.

``python -m tests.unit.big_catalogue [BLOBS IMAGES]`` prints how long :func:`plan_eviction` takes
(default 50000 blobs, 5000 images and 500 indexes over them) for a few amounts to free, and how
long the blob store's snapshot of its index takes on the event loop. A figure, not a test.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from docxy.cache.blobs import BlobEntry
from docxy.cache.images import Image, ImageKey, plan_eviction
from docxy.core.digests import Digest, digest_of

UPSTREAM = "u" * 64


@dataclass(frozen=True, slots=True)
class Catalogue:
    blobs: list[BlobEntry]  # least recently used first
    images: list[Image]  # image manifests, then indexes

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.blobs)


def digest(name: str) -> Digest:
    return digest_of(name.encode())


def make(blobs: int = 50_000, images: int = 5_000, *, seed: int = 1) -> Catalogue:
    """``blobs`` blobs of 1 KB–10 MB; ``images`` images each needing 8 blobs of its own (as long
    as there are) and 3 shared base layers from a common pool; an index over 4 images for every
    10 images; a tenth of the blobs needed by no image."""
    rng = random.Random(seed)
    entries = [
        BlobEntry(digest(f"b{i}"), Path(f"/nowhere/{i}"), rng.randint(1_000, 10_000_000), i)
        for i in range(blobs)
    ]
    digests = [entry.digest for entry in entries]
    owned = int(blobs * 0.8)
    pool = digests[owned : int(blobs * 0.9)] or digests
    found: list[Image] = []
    for i in range(images):
        own = digests[i * 8 : min((i + 1) * 8, owned)]
        shared = rng.sample(pool, min(3, len(pool)))
        key = ImageKey(UPSTREAM, digest(f"m{i}"))
        found.append(Image(key, rng.random() * 1e6, frozenset(own + shared)))
    for j in range(images // 10):
        children = frozenset(found[rng.randrange(images)].key.digest for _ in range(4))
        key = ImageKey(UPSTREAM, digest(f"i{j}"))
        found.append(Image(key, rng.random() * 1e6, children=children))
    return Catalogue(entries, found)


def main(argv: list[str]) -> int:
    blobs, images = (int(argv[0]), int(argv[1])) if len(argv) == 2 else (50_000, 5_000)
    catalogue = make(blobs, images)
    print(f"{len(catalogue.blobs)} blobs, {len(catalogue.images)} images and indexes")
    started = time.perf_counter()
    snapshot = list(catalogue.blobs), list(catalogue.images), frozenset[Digest]()
    print(f"snapshot (on the loop): {(time.perf_counter() - started) * 1000:.1f} ms")
    for share in (0.001, 0.1, 0.2, 0.5):
        need = int(catalogue.total * share)
        started = time.perf_counter()
        plan = plan_eviction(snapshot[0], snapshot[1], need, snapshot[2].__contains__)
        took = time.perf_counter() - started
        print(
            f"free {share:>6.1%}: {took * 1000:7.1f} ms, "
            f"{len(plan.images)} images and {len(plan.blobs)} blobs planned"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
