"""A real containerd 1.6 (`ctr images pull --hosts-dir`) pulling through the mirror.

This is how Kubernetes nodes and Docker 29 pull: the hosts.toml for docker.io names the mirror
and nothing else, containerd adds `?ns=docker.io` to every request, sends no `/v2/` ping,
resolves a tag with HEAD and takes the manifest size from that HEAD's Content-Length. It never
falls back to Docker Hub, so expected failures (a private repository without or with wrong
credentials) are tested here rather than with dockerd.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from lab.bed import Bed, TestImage
from lab.clients.containerd import Containerd, running_containerd
from lab.clients.egress import EgressGuard
from lab.clients.relay import Exchange, Relay
from lab.mirror import Mirror
from tests.unavailable import CONTAINERD, need_binaries

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True, scope="module")
def _containerd_binaries() -> None:
    need_binaries(*CONTAINERD)


@pytest.fixture
def containerd(egress: EgressGuard) -> Iterator[Containerd]:
    with running_containerd(egress_proxy=egress.url) as daemon:
        yield daemon


def docker_io_ref(image: TestImage) -> str:
    return f"docker.io/{image.repo}:{image.tag}"


@pytest.fixture
def recorder(mirror: Mirror) -> Iterator[Relay]:
    """A recording relay in front of the mirror: what containerd sent and what it got back."""
    with Relay(mirror.port) as relay:
        yield relay


def pull(
    containerd: Containerd, mirror_url: str, image: TestImage, user: str | None = None
) -> None:
    result = containerd.pull(docker_io_ref(image), mirror_url=mirror_url, user=user)
    assert result.returncode == 0, (
        f"ctr pull {docker_io_ref(image)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


def image_digest(containerd: Containerd, image: TestImage) -> str:
    listing = containerd.ctr("images", "ls", check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == docker_io_ref(image):
            return fields[2]
    raise AssertionError(f"{docker_io_ref(image)} not in `ctr images ls`:\n{listing}")


def cat_test_file(containerd: Containerd, image: TestImage, name: str) -> str:
    result = containerd.run_image(docker_io_ref(image), name, "cat", "/docxy-test.txt")
    assert result.returncode == 0, f"ctr run failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def served(exchanges: list[Exchange]) -> set[tuple[str, str]]:
    """(method, path) of the requests the mirror answered 200, query string dropped."""
    return {(e.method, e.target.split("?")[0]) for e in exchanges if e.status == 200}


def assert_namespaced(exchanges: list[Exchange]) -> None:
    """Every request containerd sent carried ns=docker.io, and none was a /v2/ ping."""
    assert exchanges, "containerd sent nothing through the relay"
    for exchange in exchanges:
        path, _, query = exchange.target.partition("?")
        assert query == "ns=docker.io", exchange
        assert path not in ("/v2", "/v2/"), exchange


def test_pull_official_image_index(
    bed: Bed, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    image = bed.images["library/hello"]

    pull(containerd, recorder.url, image)

    assert image_digest(containerd, image) == image.digest
    assert cat_test_file(containerd, image, "hello") == image.content
    exchanges = recorder.exchanges
    assert_namespaced(exchanges)
    answered = served(exchanges)
    assert ("HEAD", f"/v2/library/hello/manifests/{image.tag}") in answered
    assert ("GET", f"/v2/library/hello/manifests/{image.digest}") in answered
    assert ("GET", f"/v2/library/hello/manifests/{image.amd64_digest}") in answered
    for digest in image.blobs:
        assert ("GET", f"/v2/library/hello/blobs/{digest}") in answered
    others = [d for platform, d in image.platforms.items() if platform != "linux/amd64"]
    assert others and not any(digest in e.target for e in exchanges for digest in others)
    assert egress.attempts == []


def test_pull_multi_layer_repository(
    bed: Bed, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    image = bed.images["docxytest/multi"]

    pull(containerd, recorder.url, image)

    assert image_digest(containerd, image) == image.digest
    assert cat_test_file(containerd, image, "multi") == image.content
    assert_namespaced(recorder.exchanges)
    for digest in image.blobs:
        assert ("GET", f"/v2/docxytest/multi/blobs/{digest}") in served(recorder.exchanges)
    assert egress.attempts == []


def get_manifest_by_tag(mirror_url: str, image: TestImage) -> httpx.Response:
    """GET a manifest by tag as a plain registry client would (token dance if challenged)."""
    url = f"{mirror_url}/v2/{image.repo}/manifests/{image.tag}?ns=docker.io"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    with httpx.Client(timeout=30) as client:
        challenge = client.get(url, headers=accept)
        if challenge.status_code != 401:
            return challenge
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers["www-authenticate"]))
        realm = params.pop("realm")
        token = client.get(realm, params=params).json()["token"]
        return client.get(url, headers=accept | {"Authorization": f"Bearer {token}"})


def test_manifest_head_content_length_is_the_manifest_size(
    bed: Bed, mirror: Mirror, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    """containerd resolves a tag by HEAD and trusts its Content-Length as the manifest size.

    A wrong length makes the GET by digest that follows fail its size check. Three pulls by
    fresh containerds: cold mirror, warm mirror, and after a client fetched the manifest by tag
    (so the mirror can answer the HEAD from its tag cache).
    """
    image = bed.images["docxytest/multi"]
    tag_path = f"/v2/docxytest/multi/manifests/{image.tag}?ns=docker.io"

    pull(containerd, recorder.url, image)
    for step in ("warm", "tag cached"):
        if step == "tag cached":
            by_tag = get_manifest_by_tag(recorder.url, image)
            assert by_tag.status_code == 200 and by_tag.content == image.manifest
        with running_containerd(egress_proxy=egress.url) as node:
            pull(node, recorder.url, image)
            assert image_digest(node, image) == image.digest

    heads = [e for e in recorder.exchanges if e.method == "HEAD" and e.status == 200]
    assert [e.target for e in heads] == [tag_path] * 3
    for head in heads:
        assert head.response_headers.get("content-length") == str(len(image.manifest)), head
        assert head.response_headers.get("docker-content-digest") == image.digest, head
    line = rf"HEAD /v2/docxytest/multi/manifests/{image.tag} 200 \d+ bytes cache=(\w+)"
    assert re.findall(line, mirror.log_text(200000))[-1] == "hit", "last HEAD not from cache"


def test_private_repository_needs_credentials(
    bed: Bed, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    image = bed.images["docxytest/private"]
    ref = docker_io_ref(image)

    anonymous = containerd.pull(ref, mirror_url=recorder.url)
    assert anonymous.returncode != 0
    assert re.search(r"401|unauthorized|denied", anonymous.stderr, re.IGNORECASE), anonymous.stderr

    wrong = containerd.pull(ref, mirror_url=recorder.url, user=f"{bed.user}:not-the-password")
    assert wrong.returncode != 0
    assert image.digest not in {
        e.response_headers.get("docker-content-digest") for e in recorder.exchanges
    }

    pull(containerd, recorder.url, image, user=f"{bed.user}:{bed.password}")
    assert image_digest(containerd, image) == image.digest
    assert cat_test_file(containerd, image, "private") == image.content
    assert_namespaced(recorder.exchanges)
    assert egress.attempts == []


def test_mirror_log_shows_the_requests_it_served(
    bed: Bed, mirror: Mirror, containerd: Containerd
) -> None:
    """Straight to the mirror (no relay): its access log lists what containerd fetched."""
    image = bed.images["library/hello"]

    pull(containerd, mirror.url, image)

    log = mirror.log_text(200000)
    assert re.search(rf"HEAD /v2/library/hello/manifests/{image.tag} 200 ", log), log[-4000:]
    for digest in image.blobs:
        assert re.search(rf"GET /v2/library/hello/blobs/{digest} 200 ", log), log[-4000:]


def test_missing_tag_fails_without_leaving_the_mirror(
    bed: Bed, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    image = bed.images["docxytest/multi"]
    ref = f"docker.io/{image.repo}:no-such-tag"

    result = containerd.pull(ref, mirror_url=recorder.url)

    assert result.returncode != 0
    assert "not found" in result.stderr, result.stderr
    heads = [e for e in recorder.exchanges if e.method == "HEAD"]
    assert heads and heads[-1].status == 404, heads
    assert egress.attempts == []


def test_cached_image_pulls_while_upstream_is_down(
    bed: Bed, recorder: Relay, containerd: Containerd, egress: EgressGuard
) -> None:
    """Docker Hub has an outage: a node that never had the image still gets it from the
    mirror's cache (the tag was fetched moments ago, well within cache.tag_ttl)."""
    image = bed.images["library/hello"]
    pull(containerd, recorder.url, image)
    bed.front.stop()
    bed.cdn.stop()

    with running_containerd(egress_proxy=egress.url) as node:
        pull(node, recorder.url, image)
        assert image_digest(node, image) == image.digest
        assert cat_test_file(node, image, "offline") == image.content
    assert egress.attempts == []
