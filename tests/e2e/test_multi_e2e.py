"""Many upstreams through one mirror, with real clients and two real registries on loopback.

    [upstream]  the Docker-Hub-like bed's front: token service, CDN (lab.bed)
    hub.test    the bed's registry itself, not its front           (token auth, own realm)
    lab.test    a plain private registry with htpasswd Basic auth  (lab.basic_upstream)

dockerd pulls by path prefix (``127.0.0.1:PORT/lab.test/team/tool:1``), containerd with a
hosts.toml for ``lab.test`` (it sends ``?ns=lab.test``), skopeo by host name (a forwarder on
127.0.0.2 is one of hub.test's ``hosts``). Bad inputs are sent raw to a mirror whose every
upstream is a recording listener, and to another listener no setting names: refused, nothing
sent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from docxy.cli.main import main
from lab.basic_upstream import BasicUpstream, start_basic_upstream
from lab.bed import Bed
from lab.bed.images import sha256_digest
from lab.clients.containerd import Containerd, running_containerd
from lab.clients.dockerd import running_dockerd
from lab.clients.egress import EgressGuard
from lab.clients.forward import Forwarder
from lab.mirror import Mirror, launch_mirror, stop_mirror
from tests.conftest import StartMirror
from tests.e2e.skopeo import run_skopeo
from tests.unavailable import DOCKER, need_binaries, need_binary

pytestmark = pytest.mark.e2e

TIMEOUT = 240


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BasicUpstream]:
    with start_basic_upstream(tmp_path_factory.mktemp("lab")) as started:
        yield started


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    with Forwarder() as forward:
        yield forward


def upstreams_env(bed: Bed, lab: BasicUpstream, hub_host: str = "") -> dict[str, str]:
    """The env form of the settings: a list with URLs, then keys per upstream."""
    env = {
        "DOCXY_UPSTREAMS": f"lab.test={lab.url},hub.test={bed.registry.url}",
        "DOCXY_UPSTREAMS_LAB_TEST_USERNAME": lab.user,
        "DOCXY_UPSTREAMS_LAB_TEST_PASSWORD": lab.password,
    }
    if hub_host:
        env["DOCXY_UPSTREAMS_HUB_TEST_HOSTS"] = hub_host
    return env


@pytest.fixture
def multi(start_mirror: StartMirror, bed: Bed, lab: BasicUpstream) -> Mirror:
    return start_mirror(env=upstreams_env(bed, lab))


# --- real clients ---------------------------------------------------------------------------


def test_dockerd_pulls_each_upstream_by_path_prefix(
    multi: Mirror, bed: Bed, lab: BasicUpstream, egress: EgressGuard
) -> None:
    need_binaries(*DOCKER)
    multi_image = bed.images["docxytest/multi"]
    refs = {
        f"127.0.0.1:{multi.port}/lab.test/{lab.image.repo}:1": lab.image,
        f"127.0.0.1:{multi.port}/hub.test/{multi_image.repo}:1": multi_image,
    }
    with running_dockerd(mirror_url=multi.url, egress_proxy=egress.url) as daemon:
        for ref, image in refs.items():
            pulled = daemon.docker("pull", ref)
            assert pulled.returncode == 0, f"{pulled.stderr}\n{daemon.log()[-4000:]}"
            shown = daemon.docker("image", "inspect", ref, check=True)
            assert json.loads(shown.stdout)[0]["RepoDigests"] == [
                f"{ref.rpartition(':')[0]}@{image.digest}"
            ]
            ran = daemon.docker(
                "run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt", check=True
            )
            assert ran.stdout == image.content
    assert egress.attempts == []
    assert not [r for r in bed.front_log.snapshot() if r.path.startswith("/v2/docxytest/")]
    # The bed's token service was asked for hub.test's repository, by its own name.
    scopes = [scope for request in bed.token_log.snapshot() for scope in request.scopes]
    assert f"repository:{multi_image.repo}:pull" in scopes
    assert not any("hub.test" in scope or "lab.test" in scope for scope in scopes)


def test_containerd_pulls_a_non_docker_hub_registry_with_ns(
    multi: Mirror, lab: BasicUpstream, egress: EgressGuard
) -> None:
    need_binaries("containerd", "ctr", "containerd-shim-runc-v2")
    with running_containerd(egress_proxy=egress.url) as daemon:
        hosts = _lab_hosts_dir(daemon, multi)
        ref = f"lab.test/{lab.image.repo}:1"
        pulled = daemon.pull(ref, hosts_dir=hosts, timeout=TIMEOUT)
        assert pulled.returncode == 0, f"{pulled.stdout[-2000:]}\n{pulled.stderr[-4000:]}"
        listing = daemon.ctr("images", "ls", check=True).stdout
        assert any(
            line.split()[:1] == [ref] and lab.image.digest in line for line in listing.splitlines()
        )
    assert egress.attempts == []  # nothing tried https://lab.test: the mirror answered
    # The plain repository path reached lab.test: the bed ([upstream]) has no team/tool at all.
    assert any(f"/v2/{lab.image.repo}/manifests/1 " in line for line in lab.fetched_by_docxy())


def test_containerd_pulls_a_digest_pinned_image_of_a_basic_auth_upstream(
    multi: Mirror, lab: BasicUpstream, egress: EgressGuard
) -> None:
    """A digest-pinned reference (as Kubernetes manifests often have) makes containerd resolve
    with a HEAD of the manifest by digest. lab.test takes only the mirror's own login (Basic),
    which containerd does not hold: the mirror must answer that HEAD itself."""
    need_binaries("containerd", "ctr", "containerd-shim-runc-v2")
    with running_containerd(egress_proxy=egress.url) as daemon:
        hosts = _lab_hosts_dir(daemon, multi)
        ref = f"lab.test/{lab.image.repo}@{lab.image.digest}"
        pulled = daemon.pull(ref, hosts_dir=hosts, timeout=TIMEOUT)
        assert pulled.returncode == 0, f"{pulled.stdout[-2000:]}\n{pulled.stderr[-4000:]}"
    assert egress.attempts == []  # nothing tried https://lab.test: the mirror answered


def _lab_hosts_dir(daemon: Containerd, mirror: Mirror) -> Path:
    directory = daemon.root / "hosts-lab"
    (directory / "lab.test").mkdir(parents=True, exist_ok=True)
    (directory / "lab.test" / "hosts.toml").write_text(
        f'server = "https://lab.test"\n\n[host."{mirror.url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    return directory


def test_skopeo_by_host_name_with_the_clients_credentials_for_that_upstream(
    start_mirror: StartMirror, bed: Bed, lab: BasicUpstream, forwarder: Forwarder, tmp_path: Path
) -> None:
    need_binary("skopeo")
    mirror = start_mirror(env=upstreams_env(bed, lab, hub_host=forwarder.host))
    forwarder.target(mirror.port)
    public, private = bed.images["docxytest/multi"], bed.images["docxytest/private"]
    for image, creds in (
        (public, ["--src-no-creds"]),
        (private, ["--src-creds", f"{bed.user}:{bed.password}"]),
    ):
        layout = tmp_path / image.repo.replace("/", "-")
        copied = run_skopeo(
            tmp_path, "--insecure-policy", "copy", "--src-tls-verify=false", *creds,
            f"docker://{forwarder.host}/{image.repo}:{image.tag}", f"dir:{layout}",
            timeout=TIMEOUT,
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        # dir: keeps the manifest as the registry sent it, byte for byte.
        assert sha256_digest((layout / "manifest.json").read_bytes()) == image.digest
    assert forwarder.connections > 0
    # Alice's credentials went to the bed's token service, through hub.test's realm, only.
    with_basic = [r for r in bed.token_log.snapshot() if r.had_basic_auth]
    assert with_basic and all(r.basic_user == bed.user for r in with_basic)
    # hub.test is the bed's registry, not its front: the front ([upstream]) saw none of it.
    assert not [r for r in bed.front_log.snapshot() if r.path.startswith("/v2/docxytest/")]


def test_health_cache_ls_and_warm_know_every_upstream(
    multi: Mirror, bed: Bed, lab: BasicUpstream, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for name, value in upstreams_env(bed, lab).items():
        monkeypatch.setenv(name, value)
    assert main(["warm", "--mirror", multi.url, f"lab.test/{lab.image.repo}:1"]) == 0
    assert f"lab.test/{lab.image.repo}:1: " in capsys.readouterr().out
    cache_dir = multi.log_path.parent / "cache"
    assert main(["cache", "ls", "--tags", "--cache-dir", str(cache_dir)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["tag", "lab.test", f"{lab.image.repo}:1", lab.image.digest] in [r[:4] for r in rows]
    health = httpx.get(f"{multi.url}/health", timeout=10).json()
    assert sorted(health["upstreams"]) == ["docker.io", "hub.test", "lab.test"]
    assert health["upstreams"]["lab.test"]["registry"] == lab.url
    assert health["upstreams"]["lab.test"]["reachable"] is True


# --- bad inputs: refused, nothing sent ------------------------------------------------------


def raw_get(port: int, target: str, host: str) -> tuple[int, dict[str, object]]:
    """One request with exactly this target (no client-side normalising of ``..`` or ``%2F``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


@pytest.fixture
def traps() -> Iterator[tuple[EgressGuard, EgressGuard, EgressGuard]]:
    """Three recording listeners: the default upstream, lab.test, and one nobody configured."""
    with EgressGuard() as default, EgressGuard() as lab, EgressGuard() as outsider:
        yield default, lab, outsider


def test_bad_upstreams_are_refused_and_nothing_is_sent(
    traps: tuple[EgressGuard, EgressGuard, EgressGuard], tmp_path: Path
) -> None:
    default, lab, outsider = traps
    evil = outsider.url.removeprefix("http://")  # 127.0.0.1:PORT
    env = {
        "DOCXY_UPSTREAMS": f"lab.test={lab.url}",
        "DOCXY_UPSTREAMS_LAB_TEST_HOSTS": "lab.mirror.test",
    }
    mirror = launch_mirror(default.url, tmp_path / "mirror", env=env)
    try:
        refused = [
            f"/v2/x/y/manifests/1?ns={evil}",
            "/v2/x/y/manifests/1?ns=evil.test",
            "/v2/x/y/manifests/1?ns=quay.io",
            f"/v2/x/y/manifests/1?ns=lab.test@{evil}",
            f"/v2/x/y/manifests/1?ns=http://{evil}",
            "/v2/?ns=evil.test",
            "/v2/evil.test/x/manifests/1",
            f"/v2/{evil}/x/manifests/1",
            "/v2/evil.test@lab.test/x/manifests/1",
            f"/v2/lab.test@{evil}/x/manifests/1",
            "/v2/user:pw@lab.test/x/manifests/1",
            "/v2/lab.test:443/x/manifests/1",
            f"/v2/lab.test%2F..%2F{evil}/x/manifests/1",
            "/v2/evil.test%2Fx/y/manifests/1",
            "/v2/lab.test/../evil.test/x/manifests/1",
            "/v2/lab.test/%2e%2e/x/manifests/1",
            f"/v2/localhost:{evil.rpartition(':')[2]}/x/manifests/1",
            f"/auth/token?upstream={evil}&scope=repository:x/y:pull",
            "/auth/token?scope=repository:evil.test/x/y:pull",
            "/auth/token?scope=repository:lab.test/a/b:pull&scope=repository:library/c:pull",
        ]
        for target in refused:
            status, body = raw_get(mirror.port, target, f"127.0.0.1:{mirror.port}")
            errors = body.get("errors")
            assert status in (400, 404) and isinstance(errors, list), (target, status, body)
            assert errors[0]["code"] in ("NAME_UNKNOWN", "NAME_INVALID", "UNKNOWN", "NOT_FOUND")
        # Only the mirror's own health probe of /v2/ reached the configured upstreams.
        for trap in (default, lab):
            assert set(trap.attempts) <= {"GET /v2/ HTTP/1.1"}, trap.attempts
        # A Host naming the outsider picks nothing: the default answers, the outsider hears none.
        raw_get(mirror.port, "/v2/x/y/manifests/1", evil)
        raw_get(mirror.port, f"http://{evil}/v2/x/y/manifests/1", evil)
        # The one configured mirror host name does pick lab.test.
        raw_get(mirror.port, "/v2/x/y/manifests/1", "lab.mirror.test")
    finally:
        stop_mirror(mirror)
    assert outsider.attempts == []
    assert "GET /v2/x/y/manifests/1 HTTP/1.1" in default.attempts
    assert "GET /v2/x/y/manifests/1 HTTP/1.1" in lab.attempts
