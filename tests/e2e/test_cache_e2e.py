"""The pull-through cache end to end: real dockerd, real Distribution upstream, real disk.

What issue 3 promises a user, through a mirror started with its own `--cache-dir`:

- a cached image pulls with the upstream, its CDN and its token server all down;
- 20 pulls of one tag cost at most one upstream manifest GET (revalidation is by HEAD);
- 5 concurrent pulls of an uncached image fetch each blob once upstream, and the followers
  stream while the upstream is still sending;
- a corrupt or mis-sized upstream blob reaches every client as a failure, is never cached,
  and the next GET (upstream healed) is right; a body cut midway is resumed with a Range GET
  (every client gets it whole, and it is cached);
- private content is not served to anonymous clients, also under a public repository's name
  and while the upstream is down;
- eviction keeps the blobs on disk under `cache.max_size` while pulls go on;
- `kill -9` during a blob write leaves no partial blob, and a restart cleans up.

dockerd falls back to Docker Hub when a mirror pull fails, so dockerd runs behind the egress
guard and only successes are asserted with it; failures are asserted with httpx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from lab import REPO_ROOT
from lab.bed import Bed, Fault, TestImage
from lab.bed.faults_extra import held_cdn
from lab.bed.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    build_image,
    busybox_layer,
    make_layer,
    noise,
    text_layer,
)
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.e2e.waiting import poll
from tests.unavailable import DOCKER, need_binaries

pytestmark = pytest.mark.e2e

HELLO = "library/hello"
MULTI = "docxytest/multi"
PRIVATE = "docxytest/private"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST])
DEADLINE = 30.0
MiB = 1 << 20
HOLD = 2 * MiB  # the held CDN sends this much of a big blob, then waits for the test
STREAMED = 512 * 1024  # what a client must have received while the upstream is held


# --- helpers: polling, the cache directory ---------------------------------------------------


def blob_files(cache: Path) -> dict[str, int]:
    """Committed blobs on disk: "sha256:<hex>" -> size (files under CACHE/blobs/<algo>/xx/)."""
    found: dict[str, int] = {}
    base = cache / "blobs"
    if base.is_dir():
        for path in base.rglob("*"):
            if path.is_file():
                found[f"{path.parent.parent.name}:{path.name}"] = path.stat().st_size
    return found


def temp_files(cache: Path) -> list[Path]:
    base = cache / "tmp"
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


def blob_path(cache: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return cache / "blobs" / algorithm / hexdigest[:2] / hexdigest


def committed(cache: Path, digest: str) -> Path:
    """The blob's file once it is under its final name: a client has its last byte once the
    blob verified, and the file is synced and renamed into place right after."""
    path = blob_path(cache, digest)
    poll(path.is_file, DEADLINE, f"{digest} committed to the cache")
    return path


def cache_ls(cache: Path) -> str:
    """`python -m docxy cache ls --blobs --cache-dir CACHE`, as an operator runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "docxy", "cache", "ls", "--blobs", "--cache-dir", str(cache)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def cached_mirror(start_mirror: StartMirror, cache: Path, *settings: str) -> Mirror:
    args = ["--cache-dir", str(cache)]
    for setting in settings:
        args += ["--set", setting]
    return start_mirror(*args)


# --- helpers: the registry API through the mirror (httpx) ------------------------------------


def bearer(client: httpx.Client, repo: str, auth: tuple[str, str] | None = None) -> dict[str, str]:
    """Headers with a token from the mirror's realm, found the way a client finds it."""
    challenge = client.get("/v2/").headers["WWW-Authenticate"]
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = {"service": params["service"], "scope": f"repository:{repo}:pull"}
    response = client.get(params["realm"], params=query, auth=auth)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}", "Accept": ACCEPT}


@dataclass
class Download:
    """One blob GET through the mirror, read as it arrives."""

    digest: str
    status: int = 0
    received: int = 0
    sha256: str = ""
    error: str = ""
    streaming: threading.Event = field(default_factory=threading.Event)
    """Set once `STREAMED` bytes (or the whole blob, if smaller) arrived, or the GET ended."""

    @property
    def complete_and_right(self) -> bool:
        return self.status == 200 and not self.error and self.sha256 == self.digest

    def fetch(self, base_url: str, repo: str, headers: dict[str, str], size: int) -> None:
        hasher = hashlib.sha256()
        try:
            with (
                httpx.Client(base_url=base_url, timeout=60) as client,
                client.stream("GET", f"/v2/{repo}/blobs/{self.digest}", headers=headers) as answer,
            ):
                self.status = answer.status_code
                for chunk in answer.iter_bytes():
                    hasher.update(chunk)
                    self.received += len(chunk)
                    if self.received >= min(size, STREAMED):
                        self.streaming.set()
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.sha256 = "sha256:" + hasher.hexdigest()
            self.streaming.set()


def start_download(
    mirror: Mirror, repo: str, headers: dict[str, str], digest: str, size: int
) -> tuple[Download, threading.Thread]:
    download = Download(digest)
    thread = threading.Thread(
        target=download.fetch, args=(mirror.url, repo, headers, size), daemon=True
    )
    thread.start()
    return download, thread


def join_all(threads: list[threading.Thread]) -> None:
    end = time.monotonic() + DEADLINE
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a download never finished"


def assert_failed(download: Download, size: int) -> None:
    """The client noticed: a broken transfer or an error status, never a complete 200."""
    assert download.error or download.status >= 500, (
        f"a broken upstream blob reached the client as a complete {download.status} "
        f"({download.received} of {size} bytes, {download.sha256} for {download.digest})"
    )


# --- helpers: dockerd ------------------------------------------------------------------------


@pytest.fixture
def egress(egress: EgressGuard) -> EgressGuard:
    """The shared egress guard, for dockerd tests: they need the Docker binaries."""
    need_binaries(*DOCKER)
    return egress


def user_ref(image: TestImage) -> str:
    return f"{image.short_repo}:{image.tag}"


def docker_pull(daemon: Dockerd, ref: str, egress: EgressGuard) -> None:
    result = daemon.docker("pull", ref)
    assert result.returncode == 0 and egress.attempts == [], (
        f"docker pull {ref} failed or left the machine ({egress.attempts}):\n{result.stderr}\n"
        f"--- dockerd log (tail) ---\n{daemon.log()[-6000:]}"
    )


def docker_run_cat(daemon: Dockerd, ref: str) -> str:
    argv = ["run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt"]
    return daemon.docker(*argv, check=True).stdout


def docker_rmi(daemon: Dockerd, ref: str) -> None:
    daemon.docker("rmi", ref, check=True)


def mirror_blob_gets(mirror: Mirror, repo: str) -> int:
    """Blob GETs the mirror answered 200 for `repo`, from its access log."""
    pattern = re.compile(rf"GET /v2/{re.escape(repo)}/blobs/sha256:[0-9a-f]{{64}} 200 ")
    return len(pattern.findall(mirror.log_text(limit=10**8)))


# --- 1. stale-if-error: a cached image pulls with the whole upstream down --------------------


@pytest.mark.parametrize("tag_ttl", ["300", "0.01"], ids=["tag-fresh", "tag-expired"])
def test_second_docker_pull_with_upstream_and_token_server_down(
    bed: Bed, start_mirror: StartMirror, egress: EgressGuard, tmp_path: Path, tag_ttl: str
) -> None:
    image = bed.images[HELLO]
    ref = user_ref(image)
    mirror = cached_mirror(start_mirror, tmp_path / "cache", f"cache.tag_ttl={tag_ttl}")
    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon:
        docker_pull(daemon, ref, egress)
        docker_rmi(daemon, ref)
        served_before = mirror_blob_gets(mirror, image.repo)

        with bed.outage():
            docker_pull(daemon, ref, egress)
            assert docker_run_cat(daemon, ref) == image.content

        # dockerd really fetched the layers again, from the mirror (nothing else was up)
        assert mirror_blob_gets(mirror, image.repo) - served_before >= len(image.blobs)


# --- 2. quota: one manifest GET for many pulls -----------------------------------------------


@pytest.mark.parametrize("tag_ttl", [None, "0.01"], ids=["default-ttl", "ttl-expired-each-pull"])
def test_twenty_docker_pulls_cost_at_most_one_manifest_get(
    bed: Bed, start_mirror: StartMirror, egress: EgressGuard, tmp_path: Path, tag_ttl: str | None
) -> None:
    image = bed.images[MULTI]
    ref = user_ref(image)
    pulls = 20
    settings = [f"cache.tag_ttl={tag_ttl}"] if tag_ttl else []
    mirror = cached_mirror(start_mirror, tmp_path / "cache", *settings)
    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon:
        for _ in range(pulls):
            docker_pull(daemon, ref, egress)
            docker_rmi(daemon, ref)

    gets = bed.front_log.manifest_requests("GET", MULTI)
    heads = bed.front_log.manifest_requests("HEAD", MULTI)
    assert len(gets) <= 1, [f"{r.method} {r.path}" for r in gets]
    assert len(bed.front_log.cdn_fetches()) == len(image.blobs), "a blob was fetched twice"
    assert mirror_blob_gets(mirror, MULTI) >= pulls * (len(image.blobs) - 1)
    if tag_ttl is not None:
        # the tag expired before every later pull: each was revalidated by an upstream HEAD
        assert len(heads) >= pulls - 1, f"{len(heads)} HEADs"


# --- 3. coalescing: concurrent pulls of one uncached image -----------------------------------


CONCURRENT = "docxytest/concurrent"


def push_concurrent_image(bed: Bed) -> tuple[str, dict[str, int]]:
    """A manifest with a small config and three 4 MiB layers; (tag, digest -> size)."""
    sizes = {bed.push_big_blob(CONCURRENT, 4 * MiB, seed=30 + i): 4 * MiB for i in range(3)}
    config = Blob(DOCKER_CONFIG, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    bed.pusher.push_blob(CONCURRENT, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [{"mediaType": DOCKER_LAYER, "digest": d, "size": n} for d, n in sizes.items()],
    }
    bed.pusher.push_manifest(CONCURRENT, "1", Blob(DOCKER_MANIFEST, json.dumps(manifest).encode()))
    return "1", {config.digest: len(config.data), **sizes}


def test_concurrent_pulls_fetch_each_blob_once_upstream(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    tag, sizes = push_concurrent_image(bed)
    mirror = cached_mirror(start_mirror, tmp_path / "cache")
    bed.front_log.clear()
    downloads: list[Download] = []
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def pull() -> None:
        with httpx.Client(base_url=mirror.url, timeout=60) as client:
            headers = bearer(client, CONCURRENT)
            manifest = client.get(f"/v2/{CONCURRENT}/manifests/{tag}", headers=headers)
            assert manifest.status_code == 200, manifest.text
            described = manifest.json()
        for descriptor in [described["config"], *described["layers"]]:
            digest = descriptor["digest"]
            started = start_download(mirror, CONCURRENT, headers, digest, sizes[digest])
            with lock:
                downloads.append(started[0])
                threads.append(started[1])

    with held_cdn(HOLD) as gate:
        pullers = [threading.Thread(target=pull, daemon=True) for _ in range(5)]
        for puller in pullers:
            puller.start()
        join_all(pullers)
        assert len(downloads) == 5 * len(sizes), "a pull could not get its manifest"
        poll(
            lambda: all(d.streaming.is_set() for d in downloads),
            DEADLINE,
            "every client receiving its blobs while the upstream is still sending them "
            f"(received: {sorted(d.received for d in downloads)})",
        )
        held_while_streaming = gate.held
        gate.release()
        join_all(threads)

    for download in downloads:
        assert download.complete_and_right, download
    fetched = [r.path.removeprefix("/blobs/") for r in bed.front_log.cdn_fetches()]
    assert sorted(fetched) == sorted(sizes), "each blob must be fetched exactly once upstream"
    assert held_while_streaming == 3, "the three big layers were each held once"


# --- 4. broken upstream blobs: a failure for every client, nothing cached; a cut resumed ------


FAULTY = "docxytest/faulty"
FAULTY_SIZE = 6 * MiB


@pytest.mark.parametrize(
    "fault",
    [
        # A cut body is no failure now: the fill goes on from where it broke (next test).
        Fault(site="cdn", kind="corrupt", after_bytes=FAULTY_SIZE - 100),
        Fault(site="cdn", kind="length", length_delta=-10),
        Fault(site="cdn", kind="length", length_delta=10),
    ],
    ids=["wrong-bytes", "short-length", "long-length"],
)
def test_broken_upstream_blob_fails_every_client_and_is_not_cached(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, fault: Fault
) -> None:
    digest = bed.push_big_blob(FAULTY, FAULTY_SIZE, seed=40)
    cache = tmp_path / "cache"
    mirror = cached_mirror(start_mirror, cache)
    with httpx.Client(base_url=mirror.url, timeout=60) as client:
        headers = bearer(client, FAULTY)
    bed.faults.add(dataclasses.replace(fault, times=None))

    with held_cdn(HOLD) as gate:
        first = start_download(mirror, FAULTY, headers, digest, FAULTY_SIZE)
        poll(lambda: first[0].streaming.is_set(), DEADLINE, "the first client streaming")
        second = start_download(mirror, FAULTY, headers, digest, FAULTY_SIZE)
        poll(
            lambda: second[0].streaming.is_set(),
            DEADLINE,
            "a second client following the same fill",
        )
        gate.release()
        join_all([first[1], second[1]])

    assert bed.faults.fired, "the fault never fired: the test proved nothing"
    for download, _ in (first, second):
        assert_failed(download, FAULTY_SIZE)
    poll(lambda: temp_files(cache) == [], DEADLINE, "the failed fill's temp file removed")
    assert digest not in blob_files(cache)
    assert digest.split(":", 1)[1] not in cache_ls(cache)

    bed.faults.clear()
    healed, thread = start_download(mirror, FAULTY, headers, digest, FAULTY_SIZE)
    join_all([thread])
    assert healed.complete_and_right, healed
    assert file_digest(committed(cache, digest)) == digest  # the healed blob is cached


def test_an_upstream_that_breaks_off_midway_is_resumed_for_every_client_and_cached(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    """The CDN cuts every blob body after 4 MiB: the fill goes on with a Range GET from where
    it broke (2 MiB left, under the cut), both clients streaming it get the whole blob, uncut,
    and it is cached once."""
    digest = bed.push_big_blob(FAULTY, FAULTY_SIZE, seed=41)
    cache = tmp_path / "cache"
    mirror = cached_mirror(start_mirror, cache)
    with httpx.Client(base_url=mirror.url, timeout=60) as client:
        headers = bearer(client, FAULTY)
    bed.faults.add(Fault(site="cdn", kind="cut", after_bytes=4 * MiB, times=None))
    with held_cdn(HOLD) as gate:
        first = start_download(mirror, FAULTY, headers, digest, FAULTY_SIZE)
        poll(lambda: first[0].streaming.is_set(), DEADLINE, "the first client streaming")
        second = start_download(mirror, FAULTY, headers, digest, FAULTY_SIZE)
        poll(lambda: second[0].streaming.is_set(), DEADLINE, "a second client following")
        gate.release()
        join_all([first[1], second[1]])
    assert bed.faults.fired, "the fault never fired: the test proved nothing"
    for download, _ in (first, second):
        assert download.complete_and_right, download
    assert file_digest(committed(cache, digest)) == digest
    log = mirror.log_text(limit=10**7)
    assert log.count("broke off after") == 1, log[-4000:]
    assert "fill failed" not in log


# --- 5. private content stays private --------------------------------------------------------


def test_private_content_is_not_served_to_anonymous_by_another_name_or_offline(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    """test_integration covers the private repo's own paths with the upstream up; here the
    anonymous client asks under a public repository's name, and while the upstream is down
    (when the mirror hands out offline tokens that it does not check)."""
    private = bed.images[PRIVATE]
    public_blobs = {*bed.images[MULTI].blobs, *bed.images[HELLO].blobs}
    private_only = [d for d in private.blobs if d not in public_blobs]
    assert private_only, "the private image should have blobs of its own"
    mirror = cached_mirror(start_mirror, tmp_path / "cache")

    with httpx.Client(base_url=mirror.url, timeout=60) as client:
        alice = bearer(client, PRIVATE, (bed.user, bed.password))
        paths = [f"manifests/{private.tag}", f"manifests/{private.digest}"]
        paths += [f"blobs/{d}" for d in private.blobs]
        for path in paths:
            assert client.get(f"/v2/{PRIVATE}/{path}", headers=alice).status_code == 200, path

        leaks: list[str] = []

        def probe(repo: str, headers: dict[str, str], when: str) -> None:
            targets = [f"manifests/{private.digest}", *(f"blobs/{d}" for d in private_only)]
            if repo == PRIVATE:
                targets.append(f"manifests/{private.tag}")
            for target in targets:
                response = client.get(f"/v2/{repo}/{target}", headers=headers)
                if response.status_code < 300:
                    leaks.append(f"{when}: GET /v2/{repo}/{target} -> {response.status_code}")

        probe(MULTI, bearer(client, MULTI), "upstream up, public name")
        probe(MULTI, {"Accept": ACCEPT}, "upstream up, public name, no token")
        with bed.outage():
            for repo in (MULTI, PRIVATE):
                probe(repo, bearer(client, repo), f"upstream down, {repo}")
                probe(repo, {"Accept": ACCEPT}, f"upstream down, {repo}, no token")
    assert leaks == []


# --- 6. eviction under a small cap -----------------------------------------------------------


def push_eviction_images(bed: Bed, count: int) -> list[tuple[str, str]]:
    """`count` runnable images sharing busybox, each with 1.5 MiB of its own; (ref, noise)."""
    pushed = []
    for index in range(count):
        repo = f"docxytest/evict{index}"
        own = make_layer({f"data/noise{index}.bin": noise(3 * MiB // 2, f"evict{index}")})
        text = text_layer(f"docxy test image {repo}:1 linux/amd64\n", False)
        image = build_image([busybox_layer(False), own, text], "amd64", False)
        bed.pusher.push_image(repo, image, "1")
        pushed.append((f"{repo}:1", own.blob.digest))
    return pushed


class DiskSampler:
    """Sums the committed blobs on disk (and the temp files, with ``temp``) every few
    milliseconds while pulls go on."""

    def __init__(self, cache: Path, *, temp: bool = False) -> None:
        self.cache = cache
        self.temp = temp
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                temps = temp_files(self.cache) if self.temp else []
                on_disk = sum(blob_files(self.cache).values()) + sum(
                    p.stat().st_size for p in temps
                )
                self.peak = max(self.peak, on_disk)
            except FileNotFoundError:  # a blob evicted between listing and stat
                pass
            self._stop.wait(0.01)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_eviction_keeps_blobs_under_max_size_while_docker_pulls(
    bed: Bed, start_mirror: StartMirror, egress: EgressGuard, tmp_path: Path
) -> None:
    images = push_eviction_images(bed, 4)
    max_size = len(busybox_layer(False).blob.data) + 3 * MiB + 256 * 1024  # about two images
    cache = tmp_path / "cache"
    mirror = cached_mirror(start_mirror, cache, f"cache.max_size={max_size}")
    with (
        running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon,
        DiskSampler(cache) as sampler,
    ):
        for ref, own_layer in images:
            docker_pull(daemon, ref, egress)
            committed(cache, own_layer)  # its commit may follow dockerd's last byte
            on_disk = blob_files(cache)
            assert sum(on_disk.values()) <= max_size, (ref, on_disk)
            assert own_layer in on_disk, f"{ref}: its layer was not cached (cache not in use?)"
        last_ref = images[-1][0]
        assert docker_run_cat(daemon, last_ref) == f"docxy test image {last_ref} linux/amd64\n"
    assert sampler.peak <= max_size, f"blobs on disk peaked at {sampler.peak} > {max_size}"
    assert images[0][1] not in blob_files(cache), "the least recently used layer was not evicted"


TOO_BIG = "docxytest/toobig"
TOO_BIG_SIZE = 8 * MiB


def test_a_blob_larger_than_the_cache_passes_through_and_is_never_written(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    digest = bed.push_big_blob(TOO_BIG, TOO_BIG_SIZE, seed=75)
    cache = tmp_path / "cache"
    max_size = TOO_BIG_SIZE // 2
    mirror = cached_mirror(start_mirror, cache, f"cache.max_size={max_size}")
    with httpx.Client(base_url=mirror.url, timeout=60) as client:
        headers = bearer(client, TOO_BIG)
    with DiskSampler(cache, temp=True) as sampler:
        for _ in range(2):
            download, thread = start_download(mirror, TOO_BIG, headers, digest, TOO_BIG_SIZE)
            join_all([thread])
            assert download.complete_and_right, download
    assert sampler.peak <= max_size, f"blobs and temp files peaked at {sampler.peak}"
    assert blob_files(cache) == {} and temp_files(cache) == []
    # An access line is written once its response has ended: the client can finish first.
    line = "cache=uncached reason=cache-full"
    poll(
        lambda: mirror.log_text(limit=10**8).count(line) >= 2, DEADLINE, "both pass-throughs logged"
    )
    log = mirror.log_text(limit=10**8)
    assert log.count(line) == 2, log[-4000:]
    assert "larger than the whole cache" in log


# --- 7. kill -9 during a blob write ----------------------------------------------------------


CRASH = "docxytest/crash"
CRASH_SIZE = 8 * MiB


def test_kill_9_during_blob_write_then_restart(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    digest = bed.push_big_blob(CRASH, CRASH_SIZE, seed=70)
    cache = tmp_path / "cache"
    final = blob_path(cache, digest)
    mirror = cached_mirror(start_mirror, cache)
    with httpx.Client(base_url=mirror.url, timeout=60) as client:
        headers = bearer(client, CRASH)

    with held_cdn(HOLD) as gate:
        download, thread = start_download(mirror, CRASH, headers, digest, CRASH_SIZE)
        poll(
            lambda: any(p.stat().st_size >= STREAMED for p in temp_files(cache)),
            DEADLINE,
            "the mirror writing the blob to a temp file",
        )
        mirror.proc.kill()
        mirror.proc.wait(timeout=10)
        gate.cut()
        join_all([thread])

    assert not download.complete_and_right
    assert temp_files(cache), "no partial temp file: the kill was not mid-write"
    assert not final.exists(), "a partial blob under its final name"

    restarted = cached_mirror(start_mirror, cache)
    poll(lambda: temp_files(cache) == [], DEADLINE, "temp files of the killed mirror cleaned up")
    assert not final.exists()
    assert digest.split(":", 1)[1] not in cache_ls(cache)

    with httpx.Client(base_url=restarted.url, timeout=60) as client:
        headers = bearer(client, CRASH)
    again, thread = start_download(restarted, CRASH, headers, digest, CRASH_SIZE)
    join_all([thread])
    assert again.complete_and_right, again
    assert file_digest(committed(cache, digest)) == digest
