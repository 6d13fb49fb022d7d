"""configure-client.sh for real: the script the mirror serves at /setup.sh, piped to bash as a
user would, edits a running dockerd's daemon.json, reloads it with SIGHUP, and `docker pull`
then goes through the mirror. The hosts.toml it writes for containerd is then used by a real
containerd (`ctr --hosts-dir`) to pull through the mirror too, for Docker Hub and for a second
upstream (lab.basic_upstream) whose hosts.toml the served script writes because the mirror is
configured for it (containerd then sends ``?ns=lab.test``). And with a client certificate from
`docxy clients add` (``--client-cert``) containerd pulls from a mirror in users mode over TLS,
where without it the mirror refuses (containerd, unlike dockerd, presents client certificates
to loopback registries too, so no network namespace is needed).

The private dockerd (lab.clients.dockerd) starts with `--config-file <dir>/daemon.json` whose
only mirror is a dead one on 127.0.0.1:9, and `--pidfile <dir>/docker.pid`; the script gets
both with `--daemon-json` and `--dockerd-pidfile`. Docker takes plain-http mirrors on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from docxy.core.hosts import url_host
from lab.basic_upstream import BasicUpstream, start_basic_upstream
from lab.bed import Bed
from lab.clients.containerd import running_containerd
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from lab.ports import free_port
from tests.conftest import StartMirror
from tests.e2e.test_access_e2e import docxy_cli
from tests.e2e.test_client_certs_e2e import server_certificate
from tests.scriptbox import output, run_ok
from tests.unavailable import CONTAINERD, DOCKER, need_binaries
from tests.unit.test_setup_script import expected

pytestmark = pytest.mark.e2e

DEAD_MIRROR = "http://127.0.0.1:9"


@pytest.fixture
def dockerd(mirror: Mirror, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER, "python3")
    with running_dockerd(mirror_url=DEAD_MIRROR, egress_proxy=egress.url) as daemon:
        yield daemon


def served_script(mirror: Mirror) -> str:
    response = httpx.get(f"{mirror.url}/setup.sh", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def run_served(script: str, daemon: Dockerd, *args: str) -> subprocess.CompletedProcess[str]:
    """`curl -fsSL MIRROR/setup.sh | bash -s -- ARGS` against the private dockerd."""
    return subprocess.run(
        [
            shutil.which("bash") or "bash",
            "-s",
            "--",
            "--docker",
            "--daemon-json",
            str(daemon.root / "daemon.json"),
            "--dockerd-pidfile",
            str(daemon.root / "docker.pid"),
            *args,
        ],
        input=script,
        env={**daemon.env, "DOCXY_RELOAD_WAIT": "30"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def configure_containerd(script: str, root: Path, *args: str) -> tuple[str, Path]:
    """`curl -fsSL MIRROR/setup.sh | bash -s -- --containerd --root ROOT ARGS`, which must
    succeed: what it said, and the hosts directory it wrote."""
    said = run_ok(
        subprocess.run(
            [
                shutil.which("bash") or "bash",
                "-s",
                "--",
                "--containerd",
                "--root",
                str(root),
                *args,
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    return said, root / "etc" / "containerd" / "certs.d"


def active_mirrors(daemon: Dockerd) -> list[str]:
    result = daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}", check=True)
    mirrors = json.loads(result.stdout)
    assert isinstance(mirrors, list)
    return [str(m).rstrip("/") for m in mirrors]


def default_registries(bed: Bed) -> str:
    """What /setup.sh names by default for the bed's mirror: docker.io, and [upstream]'s own
    registry (the bed's loopback one, not Docker Hub) by its host, as containerd names it."""
    return f"docker.io {url_host(bed.upstream_url)}={bed.upstream_url}"


def test_setup_script_points_a_running_dockerd_at_the_mirror(
    bed: Bed, mirror: Mirror, dockerd: Dockerd, egress: EgressGuard
) -> None:
    script = served_script(mirror)
    assert script == expected(mirror.url, default_registries(bed))
    assert active_mirrors(dockerd) == [DEAD_MIRROR]

    added = run_served(script, dockerd)

    assert added.returncode == 0, output(added)
    assert f"dockerd now uses {mirror.url}" in added.stdout, output(added)
    assert active_mirrors(dockerd) == [mirror.url, DEAD_MIRROR]
    on_disk = json.loads((dockerd.root / "daemon.json").read_text())
    assert on_disk["registry-mirrors"] == [mirror.url, DEAD_MIRROR]
    assert on_disk["storage-driver"] == "vfs", "the daemon's other settings are kept"

    image = bed.images["docxytest/multi"]
    pulled = dockerd.docker("pull", f"{image.short_repo}:{image.tag}")
    assert pulled.returncode == 0, f"{pulled.stderr}\n{dockerd.log()[-6000:]}"
    ran = dockerd.docker(
        "run", "--rm", "--network", "none", f"{image.short_repo}:{image.tag}",
        "cat", "/docxy-test.txt",
    )  # fmt: skip
    assert ran.stdout == image.content, ran.stderr
    assert egress.attempts == [], f"dockerd left the machine: {egress.attempts}"
    assert f"/v2/{image.repo}/manifests/{image.tag}" in mirror.log_text()

    again = run_served(script, dockerd)
    assert again.returncode == 0, output(again)
    assert "Nothing to change" in again.stdout
    assert json.loads((dockerd.root / "daemon.json").read_text()) == on_disk

    removed = run_served(script, dockerd, "--remove")
    assert removed.returncode == 0, output(removed)
    assert active_mirrors(dockerd) == [DEAD_MIRROR]


def test_a_null_registry_mirrors_that_dockerd_runs_with_becomes_the_mirror_and_back(
    mirror: Mirror, egress: EgressGuard
) -> None:
    need_binaries(*DOCKER, "python3")
    null_mirrors: dict[str, object] = {"registry-mirrors": None}
    with running_dockerd(
        mirror_url=DEAD_MIRROR, egress_proxy=egress.url, extra_config=null_mirrors
    ) as daemon:
        assert '"registry-mirrors": null' in (daemon.root / "daemon.json").read_text()
        assert active_mirrors(daemon) == []

        added = run_served(served_script(mirror), daemon)

        assert added.returncode == 0, output(added)
        assert active_mirrors(daemon) == [mirror.url]

        # The only mirror taken out again: dockerd's reload changes its mirrors only when
        # daemon.json has the key, so it must stay, empty (without it dockerd kept the mirror).
        removed = run_served(served_script(mirror), daemon, "--remove")

        assert removed.returncode == 0, output(removed)
        assert active_mirrors(daemon) == []
        assert json.loads((daemon.root / "daemon.json").read_text())["registry-mirrors"] == []


def test_setup_script_hosts_toml_makes_containerd_pull_through_the_mirror(
    bed: Bed, mirror: Mirror, egress: EgressGuard, tmp_path: Path
) -> None:
    need_binaries(*CONTAINERD, "python3")
    script = served_script(mirror)
    root = tmp_path / "node"
    said, hosts_dir = configure_containerd(script, root)
    assert "hosts.toml" in said
    image = bed.images["docxytest/multi"]
    ref = f"docker.io/{image.repo}:{image.tag}"

    with running_containerd(egress_proxy=egress.url) as containerd:
        pulled = containerd.pull(ref, hosts_dir=hosts_dir)
        assert pulled.returncode == 0, f"{pulled.stderr}\n{containerd.log()[-6000:]}"
        ran = containerd.run_image(ref, "configured", "cat", "/docxy-test.txt")
        assert ran.stdout == image.content, ran.stderr

    assert egress.attempts == [], f"containerd left the machine: {egress.attempts}"
    assert f"/v2/{image.repo}/manifests/{image.tag}" in mirror.log_text()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BasicUpstream]:
    with start_basic_upstream(tmp_path / "lab") as started:
        yield started


def test_setup_script_writes_hosts_toml_for_every_configured_registry(
    bed: Bed, start_mirror: StartMirror, lab: BasicUpstream, egress: EgressGuard, tmp_path: Path
) -> None:
    need_binaries(*CONTAINERD, "python3")
    mirror = start_mirror(
        env={
            "DOCXY_UPSTREAMS": f"lab.test={lab.url}",
            "DOCXY_UPSTREAMS_LAB_TEST_USERNAME": lab.user,
            "DOCXY_UPSTREAMS_LAB_TEST_PASSWORD": lab.password,
        }
    )
    script = served_script(mirror)
    assert script == expected(mirror.url, f"{default_registries(bed)} lab.test={lab.url}")
    root = tmp_path / "node"
    said, hosts_dir = configure_containerd(script, root)
    names = sorted(["docker.io", "lab.test", url_host(bed.upstream_url)])
    assert sorted(p.name for p in hosts_dir.iterdir()) == names, said
    ref = f"lab.test/{lab.image.repo}:1"

    with running_containerd(egress_proxy=egress.url) as containerd:
        pulled = containerd.pull(ref, hosts_dir=hosts_dir)
        assert pulled.returncode == 0, f"{pulled.stderr}\n{containerd.log()[-6000:]}"
        ran = containerd.run_image(ref, "lab", "cat", "/docxy-test.txt")
        assert ran.stdout == lab.image.content, ran.stderr

    assert egress.attempts == [], f"containerd left the machine: {egress.attempts}"
    # The mirror fetched it (its User-Agent in the lab registry's log): containerd asked the
    # mirror with ?ns=lab.test first, not the hosts.toml's fallback server.
    assert any(f"/v2/{lab.image.repo}/manifests/1 " in line for line in lab.fetched_by_docxy())


def test_client_cert_from_the_setup_script_lets_containerd_pull_in_users_mode(
    bed: Bed, start_mirror: StartMirror, egress: EgressGuard, tmp_path: Path
) -> None:
    need_binaries(*CONTAINERD, "python3")
    server_ca, cert, key = server_certificate(tmp_path / "server", "localhost")
    auth_dir = tmp_path / "access"
    tls_port = free_port()
    mirror = start_mirror(
        *("--tls-listen", f"127.0.0.1:{tls_port}", "--cert", str(cert), "--key", str(key)),
        *("--public-url", f"https://localhost:{tls_port}"),
        env={
            "DOCXY_AUTH_MODE": "users",
            "DOCXY_AUTH_CLIENT_CERTS": "true",
            "DOCXY_AUTH_DIR": str(auth_dir),
        },
    )
    kit = tmp_path / "kit"
    issued = docxy_cli(auth_dir, "clients", "add", "node1", "--out", str(kit))
    assert issued.returncode == 0, issued.stderr
    trust = ssl.create_default_context(cafile=str(server_ca))
    response = httpx.get(f"https://localhost:{tls_port}/setup.sh", verify=trust, timeout=30)
    assert response.status_code == 200, response.text
    script = response.text

    def configure(root: Path, *args: str) -> Path:
        said, hosts_dir = configure_containerd(script, root, *args, "--ca-cert", str(server_ca))
        assert f"https://localhost:{tls_port}" in said
        return hosts_dir

    with_cert = configure(tmp_path / "node1", "--client-cert", str(kit))
    without = configure(tmp_path / "node2")
    image = bed.images["docxytest/multi"]
    ref = f"docker.io/{image.repo}:{image.tag}"

    with running_containerd(egress_proxy=egress.url) as containerd:
        refused = containerd.pull(ref, hosts_dir=without)
        assert refused.returncode != 0, refused.stdout
        pulled = containerd.pull(ref, hosts_dir=with_cert)
        assert pulled.returncode == 0, f"{pulled.stderr}\n{containerd.log()[-6000:]}"

    served = [
        line
        for line in mirror.log_text(200000).splitlines()
        if f" /v2/{image.repo}/" in line and " 200 " in line
    ]
    assert any("/manifests/" in line for line in served), mirror.log_text(6000)
    assert any("/blobs/" in line for line in served), mirror.log_text(6000)
    assert all(line.endswith(" client=cert:node1") for line in served), served
