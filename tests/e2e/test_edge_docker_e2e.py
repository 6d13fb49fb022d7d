"""A real docker CLI and dockerd meet the mirror's repository rules and limits: the reason is
what the user reads.

The mirror is named as a registry in its own right (``docker pull 127.0.0.1:PORT/repo``), so
dockerd has no Docker Hub to fall back to and prints the mirror's own refusal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.bed import Bed
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.unavailable import DOCKER, need_binaries

pytestmark = pytest.mark.e2e


@pytest.fixture
def ruled_mirror(start_mirror: StartMirror) -> Mirror:
    return start_mirror("--set", "access.repositories=library/*")


@pytest.fixture
def dockerd(ruled_mirror: Mirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=ruled_mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def test_docker_prints_why_a_repository_is_refused(
    bed: Bed, ruled_mirror: Mirror, dockerd: Dockerd, egress: EgressGuard
) -> None:
    host = ruled_mirror.url.removeprefix("http://")
    multi = bed.images["docxytest/multi"]
    refused = dockerd.docker("pull", f"{host}/{multi.repo}:{multi.tag}")
    assert refused.returncode != 0
    assert "denied: repository docxytest/multi is not served by this mirror" in refused.stderr, (
        refused.stderr
    )
    hello = bed.images["library/hello"]
    served = dockerd.docker("pull", f"{host}/{hello.repo}:{hello.tag}")
    assert served.returncode == 0, served.stderr
    assert egress.attempts == []
