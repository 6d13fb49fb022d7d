"""Review of the operator's command line (``docxy cache``, ``docxy health``, ``docxy users``):
faults an operator would meet, each shown by a test that failed before its fix."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Digest, RepoKey, open_cache
from docxy.cli import cache as cachecli
from tests.unit.test_cachecli import HOST, OCI_INDEX, OCI_MANIFEST, Populated, _populate, run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


def test_rm_blobs_does_not_count_a_blob_a_live_mirror_evicted_meanwhile_as_freed(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a live mirror, a blob ``rm --blobs`` listed may be evicted by the mirror before
    rm gets to it: rm did not free it, and may not say it removed it (gc already counts such
    blobs apart, as gone meanwhile)."""
    looked = cachecli.open_by_processes
    evicted = cache.blob_path("busybox-l")

    def mirror_evicts_meanwhile(paths: object) -> dict[Path, int]:
        found = looked(paths)  # type: ignore[arg-type]
        os.unlink(evicted)  # the live mirror's eviction, between rm's listing and its delete
        return found

    monkeypatch.setattr(cachecli, "open_by_processes", mirror_evicts_meanwhile)
    code, out, _ = run(capsys, cache, "rm", "busybox:1", "--blobs")
    assert code == 0, out
    config_size = len(b"busybox-cfg " * 100)
    assert f"removed blob {cache.blobs['busybox-l']}" not in out
    assert f"removed blob {cache.blobs['busybox-cfg']} (1.2 KiB)" in out
    assert f"freed {cachecli.human_size(config_size)}" in out
    gone = [line for line in out.splitlines() if str(cache.blobs["busybox-l"]) in line]
    assert gone == [f"blob {cache.blobs['busybox-l']} (1000 B) was gone already (meanwhile)"]


@pytest.mark.parametrize("action", ["du", "ls"])
def test_a_cache_it_may_not_read_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """Run as another user than the mirror's, where the mirror's umask left its directories
    0700: listing tmp/ (du's downloads in progress) or the manifests' directory (ls's noted
    tags, du's count of them) is refused. rm and gc say such a refusal in one line; du and ls
    ended in a traceback."""
    scandir, stat = os.scandir, os.stat

    def refused(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def scandir_refusing(path: Any = ".") -> Any:
        if Path(path) == cache.root / "tmp":
            refused(path)
        return scandir(path)

    def stat_refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(str(cache.root / "manifests" / "by-digest")):
            refused(path)
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir_refusing)
    monkeypatch.setattr(os, "stat", stat_refusing)
    code, out, err = run(capsys, cache, action)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"docxy cache {action}: cannot read {cache.root}: {cache.root}/")
    assert lines[0].endswith(" Permission denied")
    assert code == 1


def test_gc_verify_says_a_corrupt_blob_it_kept_because_it_is_being_read(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """Beside a live mirror, gc --verify leaves alone the blobs a process has open: it did not
    even hash them, and reported 'corrupt blobs removed: 0' and exit 0, as if all were sound.
    A corrupt layer a client is pulling (the one most worth knowing of) passed as good."""
    cache.blob_path("amd64-l").write_bytes(b"bit rot")  # corrupt, and being read
    with cache.blob_path("amd64-l").open("rb"):
        code, out, _ = run(capsys, cache, "gc", "--verify")
    assert cache.blob_path("amd64-l").exists()  # still left alone
    report = dict(
        (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in out.splitlines())
    )
    assert report["corrupt blobs removed"] == "0"
    assert report["corrupt blobs being read"].startswith("1 (kept:"), out
    assert code == 1, out


def test_gc_help_says_it_evicts_only_down_to_a_cap_given_to_it(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """``docxy cache --help`` said gc would 'evict down to max_size' and du measure 'against
    cache.max_size': an operator whose mirror has its cap in a unit file ran ``docxy cache gc``
    and nothing was evicted (rightly: the default may not be the mirror's cap). The help says
    the cap must be given to the command, and ``gc --help`` says how."""
    from docxy.cli.main import main

    code, out, _ = run(capsys, cache, "gc")
    assert code == 0
    assert re.search(r"^blobs evicted: +none, cache\.max_size is not set", out, re.M), out
    assert main(["cache", "--help"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert re.search(r"gc .*evicts? down to cache\.max_size only when (it is )?given", listing)
    assert re.search(r"du .*against cache\.max_size only when (it is )?given", listing)
    assert main(["cache", "gc", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "--set cache.max_size=" in usage, usage


def _cached_by_digest(
    root: Path, repo: str, content: bytes, media_type: str, *, tag: str | None = None
) -> Digest:
    """Store a manifest in the cache at ``root`` with no tag pointing at it (an image pulled
    by digest: ``docker pull app@sha256:...``), or with ``tag`` on it."""

    async def put() -> Digest:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        stored = await cache.manifests.put(RepoKey(HOST, repo), content, media_type, public=True)
        if tag is not None:
            await cache.manifests.set_tag(RepoKey(HOST, repo), tag, stored.digest, public=True)
        await cache.manifests.loaded()
        return stored.digest

    return asyncio.run(put())


def _cached_manifest(root: Path, repo: str, digest: Digest) -> bytes | None:
    """The content of manifest ``digest`` the cache at ``root`` offers, or None."""

    async def look() -> bytes | None:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        await cache.manifests.loaded()
        found = await cache.manifests.get(RepoKey(HOST, repo), digest, pulled=False)
        return None if found is None else found.content

    return asyncio.run(look())


def _descriptor_of(cache: Populated, name: str, media_type: str = "x/layer") -> dict[str, Any]:
    size = cache.blob_path(name).stat().st_size
    return {"mediaType": media_type, "digest": str(cache.blobs[name]), "size": size}


def test_rm_blobs_keeps_a_blob_an_image_pulled_by_digest_needs(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """``rm --blobs`` deletes 'the blobs it references that no other cached tag references':
    it looked only at tags, so a layer of an image cached by digest alone (pulled as
    ``busybox@sha256:...``, no tag) was deleted with busybox:1, and that cached image with it."""
    pinned = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor_of(cache, "alpine-cfg", "application/json"),
            "layers": [_descriptor_of(cache, "busybox-l")],
        }
    ).encode()
    by_digest = _cached_by_digest(cache.root, "library/busybox", pinned, OCI_MANIFEST)
    code, out, err = run(capsys, cache, "rm", "busybox:1", "--blobs")
    assert code == 0, err
    assert f"removed blob {cache.blobs['busybox-cfg']}" in out
    assert str(cache.blobs["busybox-l"]) not in out, out
    assert cache.blob_path("busybox-l").exists()
    assert _cached_manifest(cache.root, "library/busybox", by_digest) is not None


def test_rm_blobs_keeps_a_platform_an_index_pulled_by_digest_needs(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """An index cached by digest alone that lists one of hello:latest's platforms (amd64)
    needs that platform's blobs: ``rm hello --blobs`` takes only arm64's."""
    amd64 = {
        "mediaType": OCI_MANIFEST,
        "digest": str(cache.children[0]),
        "size": len(_cached_manifest(cache.root, "library/hello", cache.children[0]) or b""),
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd64]})
    by_digest = _cached_by_digest(cache.root, "library/hello", index.encode(), OCI_INDEX)
    code, out, err = run(capsys, cache, "rm", "hello", "--blobs")
    assert code == 0, err
    removed = {name for name, digest in cache.blobs.items() if f"removed blob {digest}" in out}
    assert removed == {"arm64-cfg", "arm64-l"}, out
    assert _cached_manifest(cache.root, "library/hello", by_digest) is not None


@pytest.mark.parametrize("action", ["ls", "du", "gc", "rm"])
def test_a_cache_the_disk_will_not_open_exits_1_not_2(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """Exit 2 is a configuration or usage error (README, docxy/cli/exits.py); a cache the disk
    refuses is a command that ran and could not do what was asked: 1, as ls and du exit where
    they may not read a file, rm and gc where they may not change one. Opening a cache whose
    blobs/ is gone on a read-only disk (its mkdir refused: EROFS) exited 2. (Opening makes no
    blobs/ since: test_review_leftovers; what refuses it here is a blobs/ it may not list.)"""
    walk = os.walk

    def unlistable(top: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        if Path(top) == cache.root / "blobs":
            kwargs["onerror"](OSError(errno.EACCES, "Permission denied", str(top)))
            return iter(())
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", unlistable)
    code, _, err = run(capsys, cache, action, *(["alpine:3.20"] if action == "rm" else []))
    assert "Traceback" not in err, err
    assert code == 1, err
    assert err.splitlines() == [
        f"docxy cache {action}: cannot open {cache.root}: {cache.root}/blobs Permission denied"
    ]


def test_rm_blobs_takes_the_image_itself_so_it_keeps_no_blob_of_another(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """``rm twin:1 --blobs`` of an image whose blobs busybox:1 needs too removes none of them,
    and must remove the image all the same, not only its tag: its manifest, left cached by
    digest, would keep those blobs from a later ``rm busybox:1 --blobs``, as an image pulled
    by digest does."""
    twin = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor_of(cache, "busybox-cfg", "application/json"),
            "layers": [_descriptor_of(cache, "busybox-l")],
        }
    ).encode()
    digest = _cached_by_digest(cache.root, "library/twin", twin, OCI_MANIFEST, tag="1")
    code, out, err = run(capsys, cache, "rm", "twin:1", "--blobs")
    assert code == 0, err
    assert "removed blob" not in out, out
    assert _cached_manifest(cache.root, "library/twin", digest) is None
    code, out, err = run(capsys, cache, "rm", "busybox:1", "--blobs")
    assert code == 0, err
    removed = {name for name, digest in cache.blobs.items() if f"removed blob {digest}" in out}
    assert removed == {"busybox-cfg", "busybox-l"}, out  # "shared" is alpine's too


@pytest.mark.parametrize("action", ["du", "ls", "gc"])
def test_blobs_it_may_not_list_are_not_an_empty_cache(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """Run as another user than the mirror's, whose umask left blobs/ (or a folder in it) 0700:
    the walk of blobs/ skipped what it may not list without a word, so ``du`` said 'blobs: 0'
    and 'size: 0 B', ``ls`` listed no blob, gc had nothing to check, all exit 0."""
    scandir = os.scandir
    refused = cache.blob_path("busybox-l").parent  # blobs/sha256/<2 hex>

    def scandir_refusing(path: Any = ".") -> Any:
        if Path(path) == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_refusing)
    code, out, err = run(capsys, cache, action)
    assert "Traceback" not in err, err
    assert code == 1, out
    assert err.splitlines() == [
        f"docxy cache {action}: cannot open {cache.root}: {refused} Permission denied"
    ]


def test_the_mirror_says_the_blob_folders_it_may_not_list(
    cache: Populated, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The mirror's own index (not strict) leaves such a folder's blobs out, as before, and
    says so in a WARNING rather than not at all."""
    from docxy.cache.blobs import DiskBlobStore

    scandir = os.scandir
    refused = cache.blob_path("busybox-l").parent

    def scandir_refusing(path: Any = ".") -> Any:
        if Path(path) == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_refusing)
    store = DiskBlobStore(cache.root, 1 << 20)
    store.scan()
    assert cache.blobs["busybox-l"] not in {e.digest for e in store.list_entries()}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{refused}: Permission denied" in line for line in warnings), warnings
