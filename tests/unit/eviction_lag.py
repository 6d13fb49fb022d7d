"""How long a large eviction holds up the event loop: a figure, not a test.

``python -m tests.unit.eviction_lag [IMAGES]`` fills a cache in a temporary directory with IMAGES
single-layer images (default 2000, two blobs each; written straight to disk), opens it as the
mirror does at start (how long ``open_cache`` holds the loop, how long the reads in worker
threads take after it), halves ``max_size`` and evicts, while a task ticking every millisecond
notes the longest gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from docxy.cache import RepoKey, digest_of, open_cache
from docxy.tasks import spawn

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def populate(root: Path, images: int) -> None:
    """Blobs written in place, manifests and tags through the store; image ``i`` was pulled at
    second ``i`` (so eviction order is known)."""
    cache = open_cache(root, max_size=1 << 40, tag_ttl=300)
    for i in range(images):
        config, layer = b"cfg%d" % i + b"x" * 100, b"layer%d" % i + b"y" * 1000
        for data in (config, layer):
            path = cache.blobs.path_of(digest_of(data))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (i, i))
        doc = {
            "mediaType": OCI_MANIFEST,
            "config": {"digest": str(digest_of(config))},
            "layers": [{"digest": str(digest_of(layer))}],
        }
        repo = RepoKey("registry.test", f"team/app{i}")
        stored = await cache.manifests.put(
            repo, json.dumps(doc).encode(), OCI_MANIFEST, public=True
        )
        await cache.manifests.set_tag(repo, "latest", stored.digest, public=True)
        os.utime(cache.manifests._content_path(repo.upstream, stored.digest), (i, i))


async def evict(root: Path) -> str:
    started = time.perf_counter()
    cache = open_cache(root, max_size=1 << 40, tag_ttl=300)  # as the mirror opens it at start
    opened = time.perf_counter()
    await cache.blobs.indexed()
    await cache.manifests.loaded()
    read = time.perf_counter()
    opening = (
        f"opened in {(opened - started) * 1000:.0f} ms on the event loop; the blob index and "
        f"the catalogue read in worker threads {read - opened:.2f} s later\n"
    )
    cache.blobs.max_size = cache.blobs.usage().bytes // 2
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = spawn("ticker", tick())
    started = time.perf_counter()
    await cache.blobs._evict_to(cache.blobs.max_size)  # what a fill past the cap starts
    took = time.perf_counter() - started
    done.set()
    await ticker
    gaps.sort()
    return opening + (
        f"evicted {cache.blobs.evicted} blobs in {took:.2f} s; event loop gaps: "
        f"longest {gaps[-1] * 1000:.1f} ms, "
        f"99th percentile {gaps[len(gaps) * 99 // 100] * 1000:.1f} ms over {len(gaps)} ticks"
    )


def main(argv: list[str]) -> int:
    images = int(argv[0]) if argv else 2000
    with tempfile.TemporaryDirectory(prefix="docxy-eviction-lag-") as tmp:
        started = time.perf_counter()
        asyncio.run(populate(Path(tmp), images))
        print(
            f"{images} images, {2 * images} blobs written in {time.perf_counter() - started:.1f} s"
        )
        print(asyncio.run(evict(Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
