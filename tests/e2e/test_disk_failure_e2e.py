"""A cache disk that fills up under a fill, for real: the mirror's cache directory on a tmpfs
smaller than the blob, a real Distribution upstream, real clients over HTTP.

What issue 12 promises ("pass-through when the disk fails"): the kernel's ENOSPC midway through
a fill does not cut the clients streaming it; each gets the rest of the blob from the upstream
(a Range GET from where the temp file ends), whole and right; nothing partial stays on the disk,
and the next miss is passed through while the disk stays full.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lab.bed import Bed
from lab.mirror import stop_mirror
from tests.conftest import StartMirror
from tests.e2e.waiting import poll
from tests.unavailable import need_binary, need_root, skip_or_fail

pytestmark = pytest.mark.e2e

MiB = 1 << 20
REPO = "docxytest/diskfull"
SIZE = 24 * MiB  # three times the disk
DISK = 8 * MiB
DEADLINE = 60.0


@contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``path`` (root only), unmounted after."""
    need_root("mounting a small tmpfs for the cache")
    need_binary("mount")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class Got:
    status: int = 0
    size: int = 0
    digest: str = ""
    error: str = ""


def fetch(base_url: str, path: str, headers: dict[str, str], got: Got) -> None:
    hasher = hashlib.sha256()
    try:
        with (
            httpx.Client(base_url=base_url, timeout=DEADLINE) as client,
            client.stream("GET", path, headers=headers) as answer,
        ):
            got.status = answer.status_code
            for chunk in answer.iter_bytes():
                hasher.update(chunk)
                got.size += len(chunk)
    except httpx.HTTPError as exc:
        got.error = repr(exc)
    got.digest = "sha256:" + hasher.hexdigest()


def token(client: httpx.Client) -> dict[str, str]:
    challenge = client.get("/v2/").headers["WWW-Authenticate"]
    params = dict(part.split("=", 1) for part in challenge.removeprefix("Bearer ").split(","))
    realm, service = params["realm"].strip('"'), params["service"].strip('"')
    answer = client.get(realm, params={"service": service, "scope": f"repository:{REPO}:pull"})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def used(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def test_a_disk_that_fills_up_mid_fill_gives_every_client_the_whole_blob(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    digest = bed.push_big_blob(REPO, SIZE, seed=112)
    with small_disk(tmp_path / "cache", DISK) as cache:
        # max_size far past the disk: the cache thinks it has room, the kernel says ENOSPC.
        mirror = start_mirror("--cache-dir", str(cache), "--set", "cache.max_size=1G")
        with httpx.Client(base_url=mirror.url, timeout=DEADLINE) as client:
            headers = token(client)
        path = f"/v2/{REPO}/blobs/{digest}"
        got = [Got() for _ in range(3)]  # one fill, two followers of it
        threads = [
            threading.Thread(target=fetch, args=(mirror.url, path, headers, one), daemon=True)
            for one in got
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert not any(thread.is_alive() for thread in threads), "a download never ended"
        for one in got:
            assert (one.status, one.error, one.size, one.digest) == (200, "", SIZE, digest)
        log = mirror.log_text(limit=10**7)
        assert "No space left on device" in log and "get the rest from the upstream" in log
        # The next miss, while writes fail lately, is passed through whole.
        again = Got()
        fetch(mirror.url, path, headers, again)
        assert (again.status, again.error, again.size, again.digest) == (200, "", SIZE, digest)
        # Nothing partial is left: the temp file is gone, its blocks freed.
        poll(lambda: used(cache) < MiB, 10.0, "the temp file's blocks freed")
        blobs = cache / "blobs"
        assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
        stop_mirror(mirror)  # before the disk goes
