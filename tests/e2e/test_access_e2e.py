"""Users mode with real clients: `docker login` against the mirror, skopeo with credentials.

    the mirror   `python -m docxy serve` in front of the Docker-Hub-like bed with
                 auth.mode = users; its users added with `docxy users add` (another process)
    dockerd      a private daemon; the CLI logs in to 127.0.0.1:PORT (a registry dockerd treats
                 as insecure, so plain HTTP) and pulls 127.0.0.1:PORT/hello
    skopeo       `--creds`, right and wrong

Token expiry and scope are checked against the running server with tokens it issued (an
expired one is signed with the server's own key from its key file, so no test waits for a
clock).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from docxy.access.keys import KeyRing
from docxy.access.scopes import Access
from docxy.access.tokens import TokenSpec, issue
from docxy.access.users import UsersFile
from lab import REPO_ROOT
from lab.bed import Bed, TestImage
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.e2e.skopeo import run_skopeo
from tests.unavailable import CONTAINERD, DOCKER, need_binaries

pytestmark = pytest.mark.e2e

TIMEOUT = 180
PASSWORD = "correct horse battery"


def docxy_cli(
    auth_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "DOCXY_AUTH_DIR": str(auth_dir)}
    return subprocess.run(
        [sys.executable, "-m", "docxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@dataclass
class UsersMirror:
    mirror: Mirror
    auth_dir: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.mirror.port}"

    def add_user(self, name: str, password: str) -> None:
        result = docxy_cli(self.auth_dir, "users", "add", name, "--password-stdin", stdin=password)
        assert result.returncode == 0, result.stderr

    def remove_user(self, name: str) -> None:
        result = docxy_cli(self.auth_dir, "users", "rm", name)
        assert result.returncode == 0, result.stderr

    def token(self, scope: str, user: str = "alice", password: str = PASSWORD) -> httpx.Response:
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        return httpx.get(
            f"{self.mirror.url}/auth/token",
            params={"service": self.host, "scope": scope},
            headers={"Authorization": f"Basic {credentials}"},
            timeout=30,
        )

    def get(self, path: str, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["Accept"] = "application/vnd.oci.image.index.v1+json"
        return httpx.get(f"{self.mirror.url}{path}", headers=headers, timeout=30)


@pytest.fixture
def users_mirror(start_mirror: StartMirror, tmp_path: Path) -> UsersMirror:
    auth_dir = tmp_path / "access"
    env = {"DOCXY_AUTH_MODE": "users", "DOCXY_AUTH_DIR": str(auth_dir)}
    mirror = start_mirror(env=env)
    served = UsersMirror(mirror, auth_dir)
    served.add_user("alice", PASSWORD)
    return served


@pytest.fixture
def dockerd(users_mirror: UsersMirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=users_mirror.mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def ref(served: UsersMirror, image: TestImage) -> str:
    return f"{served.host}/{image.short_repo}:{image.tag}"


def login(daemon: Dockerd, served: UsersMirror, password: str) -> subprocess.CompletedProcess[str]:
    return daemon.docker(
        "login", served.host, "-u", "alice", "--password-stdin", stdin=password, timeout=TIMEOUT
    )


def test_docker_login_with_the_right_password_pulls(
    bed: Bed, users_mirror: UsersMirror, dockerd: Dockerd
) -> None:
    result = login(dockerd, users_mirror, PASSWORD)
    assert result.returncode == 0, result.stderr
    image = bed.images["library/hello"]
    pulled = dockerd.docker("pull", ref(users_mirror, image), timeout=TIMEOUT)
    assert pulled.returncode == 0, f"{pulled.stderr}\n{dockerd.log()[-4000:]}"
    assert image.digest in pulled.stdout


def test_wrong_password_and_no_login_are_refused_with_the_reason(
    bed: Bed, users_mirror: UsersMirror, dockerd: Dockerd
) -> None:
    result = login(dockerd, users_mirror, "wrong")
    assert result.returncode != 0
    assert "incorrect username or password" in result.stderr
    image = bed.images["library/hello"]
    pulled = dockerd.docker("pull", ref(users_mirror, image), timeout=TIMEOUT)
    assert pulled.returncode != 0
    assert "docker login first" in pulled.stderr or "unauthorized" in pulled.stderr, pulled.stderr


def test_a_removed_user_can_no_longer_pull(
    bed: Bed, users_mirror: UsersMirror, dockerd: Dockerd
) -> None:
    assert login(dockerd, users_mirror, PASSWORD).returncode == 0
    token = users_mirror.token("repository:docxytest/multi:pull").json()["token"]
    users_mirror.remove_user("alice")
    image = bed.images["docxytest/multi"]
    pulled = dockerd.docker("pull", ref(users_mirror, image), timeout=TIMEOUT)
    assert pulled.returncode != 0
    assert "incorrect username or password" in pulled.stderr, pulled.stderr
    # and a token issued before the removal stops working at once
    answer = users_mirror.get(f"/v2/docxytest/multi/manifests/{image.tag}", token)
    assert answer.status_code == 401


def test_tokens_work_only_for_their_repository_and_lifetime(
    bed: Bed, users_mirror: UsersMirror
) -> None:
    hello = bed.images["library/hello"]
    path = f"/v2/library/hello/manifests/{hello.tag}"
    assert users_mirror.get(path, None).status_code == 401
    answer = users_mirror.token("repository:library/hello:pull")
    assert answer.status_code == 200
    token = answer.json()["token"]
    assert users_mirror.get(path, token).status_code == 200
    other = users_mirror.get("/v2/docxytest/multi/manifests/1", token)
    assert other.status_code == 401 and other.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert 'error="insufficient_scope"' in other.headers["WWW-Authenticate"]
    # a token the server signed with its own key, expired a minute ago
    ring = KeyRing(users_mirror.auth_dir, grace=3600)
    spec = TokenSpec(users_mirror.mirror.url, users_mirror.host, 300)
    scope = [Access("repository", "library/hello", ("pull",))]
    alices = UsersFile(users_mirror.auth_dir / "users").fingerprint("alice")
    expired = issue(ring, spec, "alice", scope, time.time() - 360, fingerprint=alices)
    assert users_mirror.get(path, expired).status_code == 401
    fresh = issue(ring, spec, "alice", scope, time.time(), fingerprint=alices)
    assert users_mirror.get(path, fresh).status_code == 200  # the same key, in its lifetime
    # without the fingerprint of alice's password hash the mirror honours none of her tokens
    bare = issue(ring, spec, "alice", scope, time.time())
    assert users_mirror.get(path, bare).status_code == 401
    assert users_mirror.token("repository:library/hello:pull", password="wrong").status_code == 401


def skopeo_inspect(
    served: UsersMirror, image: TestImage, home: Path, *creds: str
) -> subprocess.CompletedProcess[str]:
    return run_skopeo(
        home,
        "inspect",
        "--raw",  # the manifest only: the mirror has no tags/list
        "--tls-verify=false",
        *creds,
        f"docker://{served.host}/{image.repo}:{image.tag}",
    )


def test_skopeo_with_credentials(bed: Bed, users_mirror: UsersMirror, tmp_path: Path) -> None:
    image = bed.images["docxytest/multi"]
    good = skopeo_inspect(users_mirror, image, tmp_path, "--creds", f"alice:{PASSWORD}")
    assert good.returncode == 0, good.stderr
    bad = skopeo_inspect(users_mirror, image, tmp_path, "--creds", "alice:wrong")
    assert bad.returncode != 0 and "incorrect username or password" in bad.stderr, bad.stderr
    anonymous = skopeo_inspect(users_mirror, image, tmp_path, "--no-creds")
    assert anonymous.returncode != 0, anonymous.stdout


def test_containerd_with_credentials(
    bed: Bed, users_mirror: UsersMirror, egress: EgressGuard
) -> None:
    """containerd (hosts.toml naming the mirror, no fallback): `ctr --user` with the right
    password pulls; a wrong password and none are refused."""
    from lab.clients.containerd import running_containerd

    need_binaries(*CONTAINERD)
    image = bed.images["library/hello"]
    ref = f"docker.io/{image.repo}:{image.tag}"
    url = users_mirror.mirror.url
    with running_containerd(egress_proxy=egress.url) as containerd:
        anonymous = containerd.pull(ref, mirror_url=url)
        assert anonymous.returncode != 0
        assert "401" in anonymous.stderr or "unauthorized" in anonymous.stderr.lower()
        wrong = containerd.pull(ref, mirror_url=url, user="alice:wrong")
        assert wrong.returncode != 0
        assert "401" in wrong.stderr or "unauthorized" in wrong.stderr.lower(), wrong.stderr
        right = containerd.pull(ref, mirror_url=url, user=f"alice:{PASSWORD}")
        assert right.returncode == 0, right.stderr[-4000:]
    assert egress.attempts == []


def test_password_guessing_is_throttled_by_the_peer_address(
    start_mirror: StartMirror, tmp_path: Path
) -> None:
    """The running server counts wrong passwords by the TCP peer (no trusted proxy: a
    rotating ``X-Forwarded-For`` changes nothing), and another address logs in as before.
    Two a minute: the bucket refills one every 30 s, far longer than these requests take."""
    auth_dir = tmp_path / "access"
    env = {
        "DOCXY_AUTH_MODE": "users",
        "DOCXY_AUTH_DIR": str(auth_dir),
        "DOCXY_LIMITS_FAILED_LOGINS_PER_MINUTE": "2",
    }
    users_mirror = UsersMirror(start_mirror(env=env), auth_dir)
    users_mirror.add_user("alice", PASSWORD)
    credentials = base64.b64encode(b"alice:guess").decode()
    url = f"{users_mirror.mirror.url}/auth/token"
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    statuses = []
    with httpx.Client(transport=transport, timeout=30) as guesser:
        for attempt in range(4):
            headers = {
                "Authorization": f"Basic {credentials}",
                "X-Forwarded-For": f"198.51.100.{attempt}",
                "Forwarded": f"for=198.51.100.{attempt}",
            }
            statuses.append(guesser.get(url, headers=headers).status_code)
    assert statuses == [401, 401, 429, 429]
    assert users_mirror.token("repository:library/hello:pull").status_code == 200  # 127.0.0.1


def test_with_the_cache_off_a_user_pulls_through_the_mirrors_own_token(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path
) -> None:
    """Every request passes through with the cache off, and the bed, like Docker Hub, answers
    none without a token: a user's requests go with the mirror's own (its token for that
    repository), never with the token the mirror issued the user."""
    auth_dir = tmp_path / "access"
    env = {"DOCXY_AUTH_MODE": "users", "DOCXY_AUTH_DIR": str(auth_dir)}
    served = UsersMirror(start_mirror(env={**env, "DOCXY_CACHE_ENABLED": "false"}), auth_dir)
    served.add_user("alice", PASSWORD)
    image = bed.images["docxytest/multi"]
    source = f"docker://{served.host}/{image.repo}:{image.tag}"
    creds = ("--src-tls-verify=false", "--src-creds", f"alice:{PASSWORD}")
    copied = run_skopeo(tmp_path, "copy", *creds, source, f"dir:{tmp_path / 'copy'}")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copy" / "manifest.json").is_file()


def test_a_repository_the_upstream_refuses_the_mirror_is_denied_with_the_reason(
    bed: Bed, users_mirror: UsersMirror, tmp_path: Path
) -> None:
    """The bed's docxytest/private is not the mirror's to pull (it has no upstream login).
    Relayed, the upstream's 401 sent the client back here for another token, and then it
    printed a 401's words ('authentication required', with a login that worked); now the
    refusal says why, and that no login to the mirror changes it."""
    image = bed.images["docxytest/private"]
    refused = skopeo_inspect(users_mirror, image, tmp_path, "--creds", f"alice:{PASSWORD}")
    assert refused.returncode != 0
    assert "denied: the upstream answered 401 to the mirror's own login" in refused.stderr
    assert "a login to this mirror cannot change that" in refused.stderr, refused.stderr


def test_warm_with_a_wrong_password_prints_the_token_services_reason(
    bed: Bed, users_mirror: UsersMirror
) -> None:
    args = ["warm", "--mirror", users_mirror.mirror.url, "--username", "alice"]
    result = docxy_cli(users_mirror.auth_dir, *args, "--password-stdin", "hello", stdin="wrong\n")
    assert result.returncode == 1
    assert "unauthorized: the token service answered 401: incorrect username or password" in (
        result.stderr
    ), result.stderr
