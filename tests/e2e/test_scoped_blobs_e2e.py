"""Repository-scoped blobs against the real bed (a Distribution registry behind a Hub-like front).

A cached blob is served under a repository only once the mirror knows that repository holds it:
images sharing layers still share the cache (a real docker pull fetches each layer once), and a
layer the mirror fetched with its upstream account never comes out under another name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from lab.bed import Bed, TestImage
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.unavailable import DOCKER, need_binaries

pytestmark = pytest.mark.e2e

HELLO, MULTI, PRIVATE = "library/hello", "docxytest/multi", "docxytest/private"


@pytest.fixture
def dockerd(mirror: Mirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def pull_and_run(daemon: Dockerd, image: TestImage) -> None:
    ref = f"{image.short_repo}:{image.tag}"
    pulled = daemon.docker("pull", ref)
    assert pulled.returncode == 0, f"{pulled.stderr}\n{daemon.log()[-6000:]}"
    run = daemon.docker("run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt")
    assert run.stdout == image.content, run.stderr


def test_two_images_sharing_a_layer_fetch_it_upstream_once(
    bed: Bed, dockerd: Dockerd, egress: EgressGuard
) -> None:
    hello, multi = bed.images[HELLO], bed.images[MULTI]
    shared = set(hello.blobs) & set(multi.blobs)
    assert shared, "the bed's images should share their busybox layer"

    pull_and_run(dockerd, hello)
    pull_and_run(dockerd, multi)

    fetched = Counter(r.path.removeprefix("/blobs/") for r in bed.front_log.cdn_fetches())
    assert set(fetched) == set(hello.blobs) | set(multi.blobs)
    assert max(fetched.values()) == 1, f"a blob was fetched upstream twice: {fetched}"
    shared_gets = bed.front_log.where(
        lambda r: (
            r.site == "front"
            and r.kind == "blob"
            and r.method == "GET"
            and r.path.rsplit("/", 1)[-1] in shared
        )
    )
    assert [r.repo for r in shared_gets] == [HELLO] * len(shared)  # multi's came from cache
    assert egress.attempts == []


def test_a_layer_read_with_the_mirrors_account_stays_in_its_repository(
    bed: Bed, start_mirror: StartMirror
) -> None:
    account = {"DOCXY_UPSTREAM_USERNAME": bed.user, "DOCXY_UPSTREAM_PASSWORD": bed.password}
    mirror = start_mirror(env=account)
    image = bed.images[PRIVATE]
    only_private = set(image.blobs) - set(bed.images[HELLO].blobs)
    assert only_private
    with httpx.Client(base_url=mirror.url, timeout=30) as client:
        for digest in sorted(only_private):  # anonymous clients, through the mirror's account
            cached = client.get(f"/v2/{PRIVATE}/blobs/{digest}")
            assert cached.status_code == 200
            token = client.get(
                "/auth/token", params={"service": bed.service, "scope": "repository:hello:pull"}
            ).json()["token"]
            for auth in ({}, {"Authorization": f"Bearer {token}"}):
                for method in ("GET", "HEAD"):
                    leaked = client.request(method, f"/v2/hello/blobs/{digest}", headers=auth)
                    assert leaked.status_code in (401, 404), leaked.status_code
                    assert cached.content not in leaked.content
