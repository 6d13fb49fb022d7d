"""A real dockerd (Debian docker.io 20.10) pulling through the mirror as its registry-mirror.

dockerd falls back to registry-1.docker.io whenever a mirror pull fails, so these tests only
cover pulls that must succeed through the mirror (failures are tested with containerd, which has
no fallback). Each daemon runs behind a loopback egress guard: a fallback attempt is refused,
never sent, and every test asserts there was none, which also proves the image came from the
mirror and not from somewhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from lab.bed import Bed, TestImage
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.clients.relay import Exchange, Relay
from lab.mirror import Mirror
from tests.unavailable import DOCKER, need_binaries

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True, scope="module")
def _docker_binaries() -> None:
    need_binaries(*DOCKER)


@pytest.fixture
def dockerd(mirror: Mirror, egress: EgressGuard) -> Iterator[Dockerd]:
    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def user_ref(image: TestImage) -> str:
    """What a user types for `docker pull`: "hello:latest", "docxytest/multi:1"."""
    return f"{image.short_repo}:{image.tag}"


def pull(daemon: Dockerd, image: TestImage) -> None:
    result = daemon.docker("pull", user_ref(image))
    assert result.returncode == 0, (
        f"docker pull {user_ref(image)} failed:\n{result.stderr}\n"
        f"--- dockerd log (tail) ---\n{daemon.log()[-6000:]}"
    )


def inspect(daemon: Dockerd, image: TestImage) -> dict[str, object]:
    result = daemon.docker("image", "inspect", user_ref(image), check=True)
    found = json.loads(result.stdout)
    assert isinstance(found, list) and len(found) == 1
    entry = found[0]
    assert isinstance(entry, dict)
    return entry


def cat_test_file(daemon: Dockerd, image: TestImage) -> str:
    result = daemon.docker(
        "run", "--rm", "--network", "none", user_ref(image), "cat", "/docxy-test.txt", check=True
    )
    return result.stdout


def assert_no_egress(egress: EgressGuard, daemon: Dockerd) -> None:
    assert egress.attempts == [], (
        "dockerd tried to leave the machine (the mirror pull failed and it fell back):\n"
        f"{egress.attempts}\n--- dockerd log (tail) ---\n{daemon.log()[-6000:]}"
    )


def test_pull_multi_layer_repository_and_run_it(
    bed: Bed, dockerd: Dockerd, egress: EgressGuard
) -> None:
    image = bed.images["docxytest/multi"]

    pull(dockerd, image)

    details = inspect(dockerd, image)
    assert f"docxytest/multi@{image.digest}" in str(details["RepoDigests"])
    layers = details["RootFS"]
    assert isinstance(layers, dict) and len(layers["Layers"]) == len(image.blobs) - 1
    assert cat_test_file(dockerd, image) == image.content
    assert_no_egress(egress, dockerd)


def test_pull_official_image_index_picks_amd64(
    bed: Bed, dockerd: Dockerd, egress: EgressGuard
) -> None:
    image = bed.images["library/hello"]
    assert image.platforms, "library/hello should be a multi-platform index"

    pull(dockerd, image)

    details = inspect(dockerd, image)
    assert details["Architecture"] == "amd64"
    assert f"hello@{image.digest}" in str(details["RepoDigests"])
    assert cat_test_file(dockerd, image) == image.content
    assert_no_egress(egress, dockerd)


def test_private_repository_with_docker_hub_credentials(
    bed: Bed, dockerd: Dockerd, egress: EgressGuard
) -> None:
    """dockerd presents the credentials it holds for Docker Hub to the mirror.

    (Without them the mirror pull fails and dockerd falls back to Docker Hub, so the anonymous
    case is tested with containerd.)
    """
    image = bed.images["docxytest/private"]
    assert image.private
    dockerd.set_docker_hub_credentials(bed.user, bed.password)

    pull(dockerd, image)

    assert cat_test_file(dockerd, image) == image.content
    scope = f"repository:{image.repo}:pull"
    from_alice = [t for t in bed.token_log if scope in t.scopes and t.basic_user == bed.user]
    assert from_alice and from_alice[0].status == 200, list(bed.token_log)
    assert_no_egress(egress, dockerd)


def test_docker_login_to_the_mirror_by_its_own_name(
    bed: Bed, mirror: Mirror, dockerd: Dockerd, egress: EgressGuard
) -> None:
    """Used as a registry in its own right (`docker pull 127.0.0.1:PORT/repo`), the mirror is
    no docker.io mirror, so dockerd has nothing to fall back to and failures are safe here:
    anonymous is refused, `docker login` then makes the private pull work."""
    image = bed.images["docxytest/private"]
    host = mirror.url.removeprefix("http://")
    ref = f"{host}/{image.repo}:{image.tag}"

    anonymous = dockerd.docker("pull", ref)
    assert anonymous.returncode != 0
    assert re.search(r"denied|unauthorized|authentication required", anonymous.stderr, re.I)

    login = dockerd.docker("login", host, "-u", bed.user, "--password-stdin", stdin=bed.password)
    assert login.returncode == 0 and "Login Succeeded" in login.stdout, login.stderr

    pulled = dockerd.docker("pull", ref)
    assert pulled.returncode == 0, f"{pulled.stderr}\n{dockerd.log()[-6000:]}"
    run = dockerd.docker("run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt")
    assert run.stdout == image.content, run.stderr
    assert_no_egress(egress, dockerd)


def test_second_daemon_is_served_from_the_mirror_cache(
    bed: Bed, mirror: Mirror, dockerd: Dockerd, egress: EgressGuard
) -> None:
    """A fresh daemon (empty image store) pulls what the mirror already holds: no blob is
    fetched from upstream again."""
    image = bed.images["docxytest/multi"]
    pull(dockerd, image)
    first_fetches = len(bed.front_log.cdn_fetches())
    assert first_fetches >= len(image.blobs)

    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as other:
        pull(other, image)
        assert cat_test_file(other, image) == image.content
        assert_no_egress(egress, other)

    assert len(bed.front_log.cdn_fetches()) == first_fetches


def test_interrupted_layer_download_resumes_with_range(
    bed: Bed, mirror: Mirror, egress: EgressGuard
) -> None:
    """A layer download cut halfway is resumed by dockerd with `Range: bytes=N-`.

    dockerd keeps the partial layer, retries after ~5 s asking for the rest, and insists on
    206 (a 200 makes it start over). The relay between dockerd and the mirror cuts the first
    download of the 2 MiB layer and records what dockerd asked for and what the mirror said.
    """
    image = bed.images["docxytest/multi"]
    layer = max(image.blobs[1:], key=lambda digest: bed_blob_size(image, digest))

    def cut_layer(method: str, target: str) -> bool:
        return method == "GET" and target.split("?")[0].endswith(f"/blobs/{layer}")

    with (
        Relay(mirror.port, cut=cut_layer) as relay,
        running_dockerd(mirror_url=relay.url, egress_proxy=egress.url) as daemon,
    ):
        pull(daemon, image)
        assert cat_test_file(daemon, image) == image.content
        exchanges = [e for e in relay.exchanges if e.target.split("?")[0].endswith(layer)]
        assert_no_egress(egress, daemon)

    assert exchanges and exchanges[0].cut, f"the layer download was not cut: {exchanges}"
    resumed = [e for e in exchanges[1:] if "range" in e.request_headers]
    assert resumed, f"dockerd did not resume with Range: {describe(exchanges)}"
    first = resumed[0]
    offset = int(first.request_headers["range"].removeprefix("bytes=").rstrip("-"))
    size = bed_blob_size(image, layer)
    assert 0 < offset < size
    assert first.status == 206, f"mirror answered a Range request with: {describe([first])}"
    assert first.response_headers.get("content-range") == f"bytes {offset}-{size - 1}/{size}"
    assert first.response_headers.get("content-length") == str(size - offset)


def bed_blob_size(image: TestImage, digest: str) -> int:
    manifest = json.loads(image.manifest)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        if descriptor["digest"] == digest:
            size = descriptor["size"]
            assert isinstance(size, int)
            return size
    raise KeyError(digest)


def describe(exchanges: list[Exchange]) -> str:
    return "\n".join(
        f"{e.method} {e.target} range={e.request_headers.get('range')} -> {e.status} "
        f"content-range={e.response_headers.get('content-range')} cut={e.cut}"
        for e in exchanges
    )
