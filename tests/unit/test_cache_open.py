"""open_cache(): one directory, three stores, recovered on start."""

from __future__ import annotations

from pathlib import Path

from docxy.cache import BlobWriter, RepoKey, TagState, digest_of, open_cache


async def test_open_cache_lays_out_and_recovers(tmp_path: Path) -> None:
    cache = open_cache(tmp_path, max_size=1 << 20, tag_ttl=60)
    repo = RepoKey("registry-1.docker.io", "library/alpine")
    layer = b"layer bytes"
    writer = await cache.blobs.fetch_or_join(digest_of(layer))
    assert isinstance(writer, BlobWriter)
    async with writer:
        await writer.write(layer)
        assert await writer.commit(len(layer)) is not None
    manifest = await cache.manifests.put(repo, b'{"layers": []}', "application/json", public=True)
    await cache.manifests.set_tag(repo, "3", manifest.digest, public=True)
    (tmp_path / "tmp" / "sha256-dead.beef").write_bytes(b"partial")

    again = open_cache(tmp_path, max_size=1 << 20, tag_ttl=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "access",
        "blobs",
        "docxy.lock",
        "manifests",
        "tmp",
    ]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert again.blobs.lookup(digest_of(layer)) is not None
    assert (await again.manifests.resolve_tag(repo, "3")).state is TagState.FRESH
    # The access records are the cached manifests' (put records its repository): a record of
    # a digest no cached manifest has is a leftover the serving start deletes.
    visibility = again.access.visibility(repo, manifest.digest)
    assert visibility is not None and visibility.public
