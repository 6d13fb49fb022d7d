"""Faults of the disk cache under what a small VPS does to it (a review: ``docxy.cache``): a
cache disk the kernel remounted read-only, with what the fill it cut left in ``tmp/``.

The read-only disk is a real one: the cache directory bind-mounted onto itself and remounted
read-only (root only; skipped elsewhere). Processes listen on 127.0.0.158-160, ports 9500-9599.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from docxy.cache import RepoKey, open_cache
from docxy.core.digests import digest_of
from docxy.http.state import mirror_state
from lab import REPO_ROOT
from lab.mirror import mirror_env
from lab.processes import stop_process
from lab.registry import registry_config
from tests.unavailable import skip_or_fail
from tests.unit.test_cache_faults import OCI_MANIFEST, manifest_of
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import TAG
from tests.unit.test_pull_scoped_blobs import AS_ANON, Hub

REGISTRY_HOST, MIRROR_HOST = "127.0.0.158", "127.0.0.159"
PORTS = range(9500, 9600)


def _port(host: str) -> int:
    """A port of this review's range free on ``host`` now."""
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS} on {host}")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` read-only (a bind mount of itself, remounted ``ro``) while in the block."""
    bound = subprocess.run(["mount", "--bind", str(directory), str(directory)], check=False)
    if bound.returncode != 0:
        skip_or_fail("cannot bind-mount here (not root?)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def _cut_fill(cache: Path) -> tuple[bytes, int]:
    """A cache as the remount left it: one blob committed, the temp file of the fill the
    remount cut (its delete refused too) in ``tmp/``, and a manifest write's in
    ``manifests/tmp/``. The blob, and the bytes left in the two temp files."""
    blob = b"committed layer " * 4096
    digest = digest_of(blob)
    path = cache / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    (cache / "tmp").mkdir()
    (cache / "tmp" / f"sha256-{'ab' * 32}.0123456789ab").write_bytes(b"p" * 30_000)
    (cache / "manifests" / "tmp").mkdir(parents=True)
    (cache / "manifests" / "tmp" / f"{'cd' * 32}.0123456789ab").write_bytes(b"{")
    return blob, 30_000


# --- 1. a read-only cache disk with a cut fill's temp file: the mirror did not start -------


async def test_a_read_only_cache_with_a_leftover_temp_file_opens_and_serves_its_blobs(
    tmp_path: Path,
) -> None:
    """ext4 ``errors=remount-ro`` mid-fill: the write fails, and so does the delete of the
    temp file. The running mirror serves its hits on, but at its next start the clean-up of
    ``tmp/`` raised EROFS: the cache did not open, so the mirror did not start at all. The
    file it cannot delete is said and left, its bytes counted against ``max_size``."""
    cache = tmp_path / "cache"
    blob, left = _cut_fill(cache)
    # counted by the blocks it holds (test_review_cachedir): at least its bytes written
    held = sum(path.stat().st_blocks * 512 for path in (cache / "tmp").iterdir())
    assert held >= left
    with read_only(cache):
        opened = open_cache(cache, max_size=1 << 20, tag_ttl=300)
        await opened.blobs.indexed()
        await opened.manifests.loaded()
        reader = opened.blobs.open_read(digest_of(blob))
        assert reader is not None
        async with reader:
            assert await reader.read_all() == blob
        usage = opened.blobs.usage()
        assert (usage.entries, usage.bytes) == (1, len(blob))
        assert usage.freeing == held  # on disk still: no fill may count on those bytes
    assert (cache / "tmp").is_dir() and any((cache / "tmp").iterdir())


def test_the_mirror_starts_on_a_read_only_cache_disk_with_a_leftover_temp_file(
    tmp_path: Path,
) -> None:
    """The same, as a user sees it: ``docxy serve`` (its upstream a registry on loopback)
    exited with ``cache.dir: cannot use ...: Read-only file system``; supervisord restarted
    it for ever, the cached images unserved. It answers /health now."""
    cache = tmp_path / "cache"
    _cut_fill(cache)
    registry_port = _port(REGISTRY_HOST)
    config = registry_config(registry_port, tmp_path / "storage")
    config = config.replace(f"127.0.0.1:{registry_port}", f"{REGISTRY_HOST}:{registry_port}")
    (tmp_path / "registry.yml").write_text(config)
    registry = subprocess.Popen(
        ["/usr/bin/docker-registry", "serve", str(tmp_path / "registry.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mirror: subprocess.Popen[bytes] | None = None
    try:
        with read_only(cache):
            port = _port(MIRROR_HOST)
            env = mirror_env(tmp_path, {"PYTHONPATH": str(REPO_ROOT)})
            log = tmp_path / "mirror.log"
            with log.open("wb") as out:
                mirror = subprocess.Popen(
                    [sys.executable, "-m", "docxy", "serve", "--listen", f"{MIRROR_HOST}:{port}",
                     "--upstream", f"http://{REGISTRY_HOST}:{registry_port}"],
                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                )  # fmt: skip
            status, deadline = None, time.monotonic() + 20
            while time.monotonic() < deadline and mirror.poll() is None:
                try:
                    status = httpx.get(f"http://{MIRROR_HOST}:{port}/health", timeout=2).status_code
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            said = log.read_text(errors="replace")
            assert mirror.poll() is None, f"the mirror exited:\n{said[-2000:]}"
            assert status == 200, said[-2000:]
            assert "cannot delete" in said  # the leftover is said, not silently kept
            stop_process(mirror, grace=10)
    finally:
        if mirror is not None:
            stop_process(mirror, grace=10)
        stop_process(registry, grace=5)


# --- 2. a manifest read back wrong from a disk gone read-only: a 500 -------------------------


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_a_corrupt_cached_manifest_on_a_read_only_disk_is_a_miss_not_a_500(
    tmp_path: Path, by: str
) -> None:
    """A failing disk: its manifest file reads back other bytes (the re-hash on every read
    catches them), and the kernel has remounted it read-only. The store dropped such a
    manifest by deleting its files, and the refused delete (EROFS) escaped ``get``: every pull
    of the image was a 500 while the upstream was there to serve it. A miss now: the manifest
    comes from the upstream, its files left as they are (a WARNING says so)."""
    hub = Hub()
    async with mirror(tmp_path, hub) as app:
        client = app.test_client()
        first = await client.get(TAG, headers=AS_ANON)
        assert first.status_code == 200
        content = await first.get_data(as_text=False)
        cache = mirror_state(app).cache
        assert cache is not None
        digest = digest_of(content)
        hub.repos["library/base"].manifests[str(digest)] = content  # the upstream's by digest
        found = list((tmp_path / "cache" / "manifests" / "by-digest").glob(f"*/*/*/{digest.hex}"))
        assert len(found) == 1
        found[0].write_bytes(content.replace(b"{", b"{ ", 1))  # other bytes, still JSON
        cache.manifests.tag_ttl = 3600  # the tag is fresh: the cached manifest is read
        path = TAG if by == "tag" else TAG.replace("/1", f"/{digest}")
        with read_only(tmp_path / "cache"):
            again = await client.get(path, headers=AS_ANON)
            assert again.status_code == 200, await again.get_data()
            assert await again.get_data() == content


# --- 3. file times a clock running ahead left: eviction took what was pulled just now ---------

YEAR = 365 * 86400.0


def _image(root: Path, name: str) -> tuple[bytes, list[bytes]]:
    """An image of a config and a 100 kB layer, its blobs committed under ``root``; the
    manifest and the blobs."""
    blobs = [f'{{"image": "{name}"}}'.encode(), name.encode() * (100_000 // len(name))]
    for blob in blobs:
        digest = digest_of(blob)
        path = root / "blobs" / "sha256" / digest.hex[:2] / digest.hex
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return manifest_of(*blobs), blobs


async def test_an_image_pulled_since_the_start_outlives_one_whose_file_time_is_in_the_future(
    tmp_path: Path,
) -> None:
    """A VPS that booted with its clock a year ahead (a wrong RTC, a restored snapshot) until
    NTP set it right: what the mirror touched meanwhile keeps file times a year ahead, and
    eviction, which goes by them (least recently pulled first), took them for the latest
    pulls for a year: it evicted the image pulled a moment ago and kept the one not pulled
    since. A time in the future is read as the time the cache is opened: older than any pull
    after it."""
    root = tmp_path / "cache"
    repo = RepoKey("https://registry.example", "library/app")
    ahead, pulled = _image(root, "ahead"), _image(root, "pulled")
    first = open_cache(root, max_size=1 << 30, tag_ttl=300)
    await first.blobs.indexed()
    for manifest, _ in (ahead, pulled):
        assert (await first.manifests.put(repo, manifest, OCI_MANIFEST, public=True)).kept
    future, past = time.time() + YEAR, time.time() - 3600
    for (manifest, blobs), when in ((ahead, future), (pulled, past)):
        digest = digest_of(manifest)
        for path in (root / "manifests" / "by-digest").glob(f"*/*/*/{digest.hex}"):
            os.utime(path, (when, when))
        for blob in blobs:
            os.utime(root / "blobs" / "sha256" / digest_of(blob).hex[:2] / digest_of(blob).hex,
                     (when, when))  # fmt: skip
    total = sum(len(blob) for _, blobs in (ahead, pulled) for blob in blobs)
    # Room for both at start (a cache over its cap evicts at once, before this pull), then
    # for one image only.
    restarted = open_cache(root, max_size=total, tag_ttl=300)
    await restarted.blobs.indexed()
    await restarted.manifests.loaded()
    assert await restarted.manifests.get(repo, digest_of(pulled[0])) is not None  # pulled now
    restarted.blobs.max_size = total - 1
    await restarted.blobs.gc()
    assert await restarted.manifests.get(repo, digest_of(pulled[0]), pulled=False) is not None
    assert await restarted.manifests.get(repo, digest_of(ahead[0]), pulled=False) is None
    assert all(restarted.blobs.holds(digest_of(blob)) for blob in pulled[1])
