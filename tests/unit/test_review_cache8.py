"""Small files a crash or a full disk left behind in the manifest and access trees, which no
start and no ``docxy cache gc`` removed: a manifest's ``.json`` record without its manifest file
(ENOSPC between the two writes), the repository records of a manifest no longer cached (a kill
in an eviction right after the manifest file's unlink), and access records' temp files (written
beside the record, out of reach of the start-up sweep). The stale repository records also came
back into use when the digest was cached again: a repository the operator removed an image from
served it again without asking upstream. Each fault test failed before its fix."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

import docxy.cache.manifests as manifests_mod
from docxy.cache import ImageKey, RepoKey, open_cache
from docxy.cache.files import unlink_quietly, write_atomic
from docxy.cache.visibility import upstream_key
from docxy.cli.main import main
from tests.unit.test_cachecli import HOST, Populated, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

OLD = time.time() - 2 * 3600  # older than gc's one hour for temp files


def _gc(root: Path) -> int:
    return main(["cache", "gc", "--cache-dir", str(root), "--upstream", f"https://{HOST}"])


def _paths(pop: Populated, digest_name: str) -> tuple[Path, Path, Path]:
    """The manifest file, its ``.json`` record and its access folder."""
    digest = getattr(pop, digest_name)
    up = upstream_key(HOST)
    manifest = pop.root / "manifests" / "by-digest" / up / digest.algorithm / digest.hex[:2]
    manifest = manifest / digest.hex
    access = pop.root / "access" / "by-digest" / up / digest.algorithm / digest.hex[:2]
    return manifest, manifest.with_name(manifest.name + ".json"), access / digest.hex


def _age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (OLD, OLD))


class Killed(BaseException):
    """A SIGKILL, as far as the code under test can tell (nothing after it runs)."""


# --- the stale repository records: a scoping fault --------------------------------------------


def test_records_left_by_a_cut_delete_grant_nothing_once_the_digest_is_cached_again(
    tmp_path: Path,
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, _, access = _paths(pop, "busybox")
    content = manifest.read_bytes()
    os.unlink(manifest)  # an eviction (or `rm`) killed right after the manifest file's unlink
    assert access.is_dir()

    async def again() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        # cached again, through another repository
        other = RepoKey(HOST, "someone/else")
        await cache.manifests.put(other, content, "application/json", public=True)
        busybox = RepoKey(HOST, "library/busybox")
        assert cache.access.visibility(busybox, pop.busybox) is None, "stale record served"
        assert cache.access.visibility(other, pop.busybox) is not None

    asyncio.run(again())


def test_a_delete_cut_after_its_first_unlink_leaves_no_repository_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, _, access = _paths(pop, "busybox")
    real = unlink_quietly

    def killed_after_one(path: Path) -> None:
        real(path)
        raise Killed

    async def evict() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        monkeypatch.setattr("docxy.cache.manifests.unlink_quietly", killed_after_one)
        cache.manifests._delete([ImageKey(upstream_key(HOST), pop.busybox)], {})

    with pytest.raises(Killed):
        asyncio.run(evict())
    # Either the manifest is still cached (records or not: a miss asks upstream), or no record
    # of it is left to be used when it is cached again.
    assert manifest.exists() or not access.exists()


# --- leftovers gc removes ----------------------------------------------------------------------


def test_gc_removes_a_manifest_record_left_by_enospc_between_its_two_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    real = write_atomic
    calls: list[Path] = []

    def full_disk(path: Path, data: bytes, tmp_dir: Path, *, sync: bool = True) -> None:
        calls.append(path)
        if len(calls) == 2:  # the manifest's own file, after its .json record
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, tmp_dir, sync=sync)

    async def go() -> bool:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        monkeypatch.setattr(manifests_mod, "write_atomic", full_disk)
        stored = await cache.manifests.put(
            RepoKey(HOST, "library/x"), b'{"schemaVersion":2}', "application/json", public=True
        )
        monkeypatch.setattr(manifests_mod, "write_atomic", real)
        return stored.kept

    assert not asyncio.run(go())
    orphan = calls[0]
    assert orphan.name.endswith(".json") and orphan.exists()
    assert _gc(root) == 0
    assert orphan.exists(), "a record as young as a live put's: left alone"
    _age(orphan)
    assert _gc(root) == 0
    assert not orphan.exists()


def test_gc_removes_the_records_a_cut_eviction_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop, "busybox")
    kept, kept_meta, kept_access = _paths(pop, "alpine")
    os.unlink(manifest)  # the crash: _delete unlinked it, then died
    _age(meta, *access.iterdir())
    open_cache(pop.root, max_size=1 << 20, tag_ttl=300)  # a restart
    assert _gc(pop.root) == 0
    out = capsys.readouterr().out
    assert not meta.exists() and not access.exists()
    assert kept.exists() and kept_meta.exists() and kept_access.is_dir()  # cached: kept
    assert "stray files removed:" in out


def test_gc_removes_old_access_temp_files_left_beside_a_record(tmp_path: Path) -> None:
    """An earlier version wrote a record's temp file in the record's own folder."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    _, _, access = _paths(pop, "alpine")
    marker = next(access.iterdir())
    old = marker.with_name(marker.name + ".0123456789ab")
    young = marker.with_name(marker.name + ".ba9876543210")
    old.write_bytes(b'{"upst')
    young.write_bytes(b'{"upst')
    _age(old)
    assert _gc(pop.root) == 0
    assert not old.exists()
    assert young.exists(), "a live writer's, maybe: left alone"
    assert marker.exists()


def test_an_access_record_cut_while_written_leaves_nothing_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    _, _, access = _paths(pop, "alpine")
    before = set(access.iterdir())

    def killed(src: object, dst: object) -> None:
        raise Killed

    cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
    monkeypatch.setattr("docxy.cache.files.unlink_quietly", lambda path: None)  # killed: none
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        cache.access.record(RepoKey(HOST, "new/repo"), pop.alpine, public=True)
    monkeypatch.undo()
    open_cache(pop.root, max_size=1 << 20, tag_ttl=300)  # the restart
    assert set(access.iterdir()) == before


# --- the serving start, which lists the manifest tree already ----------------------------------


def test_the_serving_start_removes_the_leftovers_of_manifests_not_cached(tmp_path: Path) -> None:
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop, "busybox")
    _, orphan_meta, _ = _paths(pop, "alpine")
    kept, kept_meta, kept_access = _paths(pop, "hello")
    os.unlink(manifest)  # a delete cut short: its .json and records are left
    os.unlink(orphan_meta.with_name(orphan_meta.name.removesuffix(".json")))  # and ENOSPC's

    async def restart() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        for _ in range(50):  # the delete runs in a worker thread
            if not meta.exists() and not access.exists() and not orphan_meta.exists():
                break
            await asyncio.sleep(0.02)

    asyncio.run(restart())
    assert not meta.exists() and not access.exists() and not orphan_meta.exists()
    assert kept.exists() and kept_meta.exists() and kept_access.is_dir()


def test_a_put_during_the_start_keeps_what_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard, passing before the fix too: a manifest stored again as the start reads the
    catalogue keeps its files and records (the start removes only those of manifests not
    cached once it is read, a put's in it already)."""
    pop = asyncio.run(_populate(tmp_path / "cache"))
    manifest, meta, access = _paths(pop, "busybox")
    content = manifest.read_bytes()
    os.unlink(manifest)
    busybox = RepoKey(HOST, "library/busybox")

    async def restart() -> None:
        cache = open_cache(pop.root, max_size=1 << 20, tag_ttl=300)
        stored = await cache.manifests.put(busybox, content, "application/json", public=True)
        assert stored.kept
        await cache.manifests.loaded()
        await asyncio.sleep(0.2)

    asyncio.run(restart())
    assert manifest.exists() and meta.exists() and access.is_dir()
