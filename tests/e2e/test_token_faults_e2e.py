"""The token endpoint's two forms with real clients: what each sends, and what it gets.

    dockerd 20.10   GETs with Basic (``docker login``, then pulls): never POSTs with a
                    password. With an identity token in its config it POSTs the OAuth2
                    refresh grant, and does not fall back to GET on a 405.
    containerd      POSTs the password grant whenever it has a login (``ctr --user``); on a
                    405 it falls back to GET, one round trip and one password check later.

The mirror's access log (one line per request: method, path, status) tells which form
reached ``/auth/token`` and how it was answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from lab.bed import Bed
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.e2e.test_access_e2e import PASSWORD, UsersMirror, login
from tests.e2e.test_access_e2e import users_mirror as users_mirror  # the fixture
from tests.unavailable import CONTAINERD, DOCKER, need_binaries

pytestmark = pytest.mark.e2e

TIMEOUT = 180
TOKEN_LINE = re.compile(r"\b(GET|POST) /auth/token (\d{3})\b")


def token_requests(mirror: Mirror) -> list[tuple[str, int]]:
    """(method, status) of every ``/auth/token`` request in the mirror's access log."""
    found = TOKEN_LINE.findall(mirror.log_text(limit=10**7))
    return [(method, int(status)) for method, status in found]


@pytest.fixture
def open_mirror(start_mirror: StartMirror) -> Mirror:
    return start_mirror()


@pytest.fixture
def open_dockerd(open_mirror: Mirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=open_mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


@pytest.fixture
def users_dockerd(users_mirror: UsersMirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=users_mirror.mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def give_identity_token(daemon: Dockerd, host: str, token: str) -> None:
    """What ``docker login`` stores when the token service answered with a refresh token."""
    config = {"auths": {host: {"identitytoken": token}}}
    (daemon.config_dir / "config.json").write_text(json.dumps(config))


def test_docker_logs_in_and_pulls_with_get_one_token_per_repository(
    bed: Bed, users_mirror: UsersMirror, users_dockerd: Dockerd
) -> None:
    """dockerd 20.10 against the mirror as its own authority: a login and two pulls are GETs
    with Basic, a token asked for each repository (no token is reused across pulls)."""
    assert login(users_dockerd, users_mirror, PASSWORD).returncode == 0
    for repo in ("library/hello", "docxytest/multi"):
        image = bed.images[repo]
        ref = f"{users_mirror.host}/{image.repo}:{image.tag}"
        pulled = users_dockerd.docker("pull", ref, timeout=TIMEOUT)
        assert pulled.returncode == 0, f"{pulled.stderr}\n{users_dockerd.log()[-4000:]}"
    asked = token_requests(users_mirror.mirror)
    assert asked and {method for method, _ in asked} == {"GET"}, asked
    assert len([a for a in asked if a == ("GET", 200)]) >= 3  # the login, then each pull


def test_docker_with_an_identity_token_posts_and_pulls_through_the_upstream(
    bed: Bed, open_mirror: Mirror, open_dockerd: Dockerd, egress: EgressGuard
) -> None:
    """An identity token in docker's config (``docker login`` keeps one when the token
    service gave a refresh token): dockerd POSTs the refresh grant, with no fallback. The
    mirror relays it to the upstream's token service (the bed's takes POST): the pull works
    (a 405 failed it)."""
    host = open_mirror.url.removeprefix("http://")
    give_identity_token(open_dockerd, host, "an-identity-token")
    image = bed.images["library/hello"]
    pulled = open_dockerd.docker("pull", f"{host}/{image.repo}:{image.tag}", timeout=TIMEOUT)
    asked = token_requests(open_mirror)
    assert pulled.returncode == 0, f"{pulled.stderr}\n{asked}"
    assert ("POST", 200) in asked and not any(status == 405 for _, status in asked), asked
    assert any(r.method == "POST" for r in bed.token_log.snapshot())
    assert egress.attempts == []


def test_docker_with_an_identity_token_is_told_to_log_in_again_in_users_mode(
    bed: Bed, users_mirror: UsersMirror, users_dockerd: Dockerd
) -> None:
    """The mirror as authority issues no refresh tokens: one docker kept from elsewhere is
    refused with the way out (``docker login``), not a bare 405; a login then pulls."""
    give_identity_token(users_dockerd, users_mirror.host, "from-another-registry")
    image = bed.images["library/hello"]
    ref = f"{users_mirror.host}/{image.repo}:{image.tag}"
    refused = users_dockerd.docker("pull", ref, timeout=TIMEOUT)
    assert refused.returncode != 0
    assert "docker login again" in refused.stderr, refused.stderr
    assert ("POST", 401) in token_requests(users_mirror.mirror)
    assert login(users_dockerd, users_mirror, PASSWORD).returncode == 0
    pulled = users_dockerd.docker("pull", ref, timeout=TIMEOUT)
    assert pulled.returncode == 0, pulled.stderr


def test_containerds_password_grant_is_answered_without_a_405_round_trip(
    bed: Bed, users_mirror: UsersMirror, egress: EgressGuard
) -> None:
    """``ctr --user`` POSTs the password grant first: the mirror answers it (it answered 405,
    and containerd asked again with GET)."""
    from lab.clients.containerd import running_containerd

    need_binaries(*CONTAINERD)
    image = bed.images["library/hello"]
    ref = f"docker.io/{image.repo}:{image.tag}"
    with running_containerd(egress_proxy=egress.url) as containerd:
        pulled = containerd.pull(ref, mirror_url=users_mirror.mirror.url, user=f"alice:{PASSWORD}")
        assert pulled.returncode == 0, pulled.stderr[-4000:]
        wrong = containerd.pull(ref, mirror_url=users_mirror.mirror.url, user="alice:wrong")
        assert wrong.returncode != 0
    asked = token_requests(users_mirror.mirror)
    assert ("POST", 200) in asked and ("POST", 401) in asked, asked
    assert not any(status == 405 for _, status in asked), asked
    assert egress.attempts == []
