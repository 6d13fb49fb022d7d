"""The appliance image, built for real and run the way an operator runs it (issue 7).

One `docker build` for this module (a vfs build takes minutes): a private dockerd (vfs, no
bridge networks, behind the egress guard) imports the locally made bookworm base
(lab/clients/baseimage.py) and builds this checkout's Dockerfile on it. Containers run with
`--network host` on free loopback ports against the loopback test upstream (lab/bed/), and the
same dockerd pulls through them: its registry mirror is a port chosen before it started.

    compose       compose.yaml and compose.host.yaml pass `docker-compose config` (1.29, as
                  bookworm ships it); the host-networking variant comes up as written
    pulls         docker pull through the container; `docker exec ... docxy cache du` sees the
                  cache; after `docker restart`, a pull with the whole upstream down is served
                  from the cache volume; `docker stop` ends cleanly
    healing       HEALTHCHECK healthy on a moved listener; the mirror killed inside comes back
                  (supervisord), and one stopped with SIGSTOP is replaced (the watchdog
                  listener); the container never restarts
    down          a mirror that cannot start (unwritable cache) takes the container down with
                  exit status 1, and `--restart unless-stopped` restarts it
    certificate   first start with a domain: bootstrap certificate, issuance from pebble through
                  the container's plain listener, the issued certificate served; `docker exec`
                  works under the derived settings; `docker stop` stops both programs cleanly
    replicas      two containers with `DOCXY_SHARED_*` and one bucket of a real S3-compatible
                  store on loopback (SeaweedFS, lab/objectstore.py): a blob pulled through one
                  lands in the bucket, and the other serves it from there (`cache=shared` in its
                  access log), not from the upstream
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from packaging.utils import canonicalize_name

from lab import REPO_ROOT
from lab.acme import DOMAIN, EMAIL, running_pebble
from lab.bed import Bed, TestImage
from lab.clients.baseimage import build_image, import_base
from lab.clients.container import Container, daemon_time, layer_files, running_container
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.objectstore import start_objectstore
from lab.ports import LOOPBACK, free_port
from tests.e2e.test_appliance_e2e import handshake, is_self_signed
from tests.e2e.test_shared_e2e import blob_fetches, get_blob, object_bytes, shared_health
from tests.e2e.waiting import poll
from tests.unavailable import DOCKER, need_binaries, need_binary

pytestmark = pytest.mark.e2e

IMAGE = "docxy:e2e"
DEAD_UPSTREAM = "http://127.0.0.1:9"  # discard port, closed: the certificate test never pulls
STATE = "/var/lib/docxy"
STOP_GRACE = "30"  # compose.yaml's stop_grace_period
DEADLINE = 120.0  # a container's python starts slowly on a loaded 2-core machine
# Bounds a hang only: 6 failed starts (each the mirror's imports, then its error), supervisord's
# 1+2+3+4+5 s backoff, then docker's restart; well under a minute idle, minutes on a loaded host.
GAVE_UP_DEADLINE = 900.0


@dataclass(frozen=True)
class Appliance:
    """The private dockerd holding the built image; it pulls through `pull_port`."""

    daemon: Dockerd
    egress: EgressGuard
    pull_port: int


@pytest.fixture(scope="module")
def appliance() -> Iterator[Appliance]:
    need_binaries(*DOCKER, "mmdebstrap")
    pull_port = free_port()
    with (
        EgressGuard() as egress,
        running_dockerd(
            mirror_url=f"http://{LOOPBACK}:{pull_port}", egress_proxy=egress.url
        ) as daemon,
    ):
        build_image(daemon, import_base(daemon), IMAGE)
        yield Appliance(daemon, egress, pull_port)


def mirror_env(port: int, upstream: str, **extra: str) -> dict[str, str]:
    """A no-domain appliance on 127.0.0.1:`port` (plain HTTP, as behind a reverse proxy)."""
    url = f"http://{LOOPBACK}:{port}"
    return {
        "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
        "DOCXY_SERVER_PUBLIC_URL": url,
        "DOCXY_UPSTREAM_REGISTRY": upstream,
    } | extra


def health_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_serving(container: Container, port: int) -> None:
    def up() -> bool:
        assert container.state()["Running"], container.report()
        return health_answers(port)

    poll(up, DEADLINE, f"/health on port {port}")


def supervised_pid(container: Container, program: str) -> int:
    sock = "unix:///run/docxy/supervisor.sock"
    result = container.exec("supervisorctl", "-s", sock, "pid", program)
    text = result.stdout.strip()
    return int(text) if text.isdigit() else 0


def docker_pull(appliance: Appliance, image: TestImage) -> None:
    ref = f"{image.short_repo}:{image.tag}"
    result = appliance.daemon.docker("pull", ref)
    assert result.returncode == 0 and appliance.egress.attempts == [], (
        f"docker pull {ref} failed or left the machine ({appliance.egress.attempts}):\n"
        f"{result.stderr}\n--- dockerd log (tail) ---\n{appliance.daemon.log()[-4000:]}"
    )


def cat_test_file(appliance: Appliance, image: TestImage) -> str:
    ref = f"{image.short_repo}:{image.tag}"
    argv = ["run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt"]
    return appliance.daemon.docker(*argv, check=True).stdout


def stop_cleanly(container: Container) -> str:
    """`docker stop` within the grace period: exit status 0, not SIGKILL's 137; the logs."""
    container.docker("stop", "--time", STOP_GRACE, container.name, timeout=120)
    state = container.state()
    assert not state["Running"] and state["ExitCode"] == 0, container.report()
    return container.logs()


# --- the image itself ---------------------------------------------------------------------------


def test_image_is_non_root_with_healthcheck_volumes_and_no_build_artefacts(
    appliance: Appliance,
) -> None:
    found = json.loads(appliance.daemon.docker("image", "inspect", IMAGE, check=True).stdout)
    config = found[0]["Config"]
    assert config["User"] == "docxy"
    assert config["Healthcheck"]["Test"] == ["CMD", "docxy", "health"]
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["Volumes"]) == {f"{STATE}/cache", f"{STATE}/certs"}
    assert config["Entrypoint"] == ["/usr/local/lib/docxy/entrypoint.sh"]
    # Every layer above the base: nothing from the build stage but the venv. No wheels, no
    # sources, no pip, no pip cache (not even deleted in a later layer: they'd be here then).
    # An archive is a leftover unless an installed distribution lists it as one of its own files
    # (python-dateutil, botocore's, ships its time zones as dateutil-zoneinfo.tar.gz).
    added = [path for layer in layer_files(appliance.daemon, IMAGE)[1:] for path in layer]
    assert any(path.startswith("opt/docxy/bin/") for path in added), added[:50]
    installed = installed_files(appliance)
    assert "opt/docxy/bin/docxy" in installed  # the list is of the venv, as layer paths
    leftovers = [
        path
        for path in added
        if (path.endswith((".whl", ".tar.gz")) and path not in installed)
        or path.split("/")[0] in ("src", "wheels", "root", "tmp")
        or "/site-packages/pip/" in path
        or "/.cache/" in path
    ]
    assert leftovers == []


#: Prints every file the installed distributions record (their dist-info RECORD), one a line.
RECORDED_FILES = (
    "import importlib.metadata, os\n"
    "for dist in importlib.metadata.distributions():\n"
    "    for name in dist.files or ():\n"
    "        print(os.path.normpath(dist.locate_file(name)))\n"
)


def installed_files(appliance: Appliance) -> set[str]:
    """The files pip installed into the image's venv, by their distributions' own records, as
    paths in a layer (no leading slash)."""
    argv = ["run", "--rm", "--network", "none", "--entrypoint", "/opt/docxy/bin/python3"]
    result = appliance.daemon.docker(*argv, IMAGE, "-c", RECORDED_FILES, timeout=300, check=True)
    return {line.lstrip("/") for line in result.stdout.splitlines()}


#: Prints each installed distribution as ``name==version``, one a line.
INSTALLED_VERSIONS = (
    "import importlib.metadata\n"
    "for dist in importlib.metadata.distributions():\n"
    "    print(f\"{dist.metadata['Name']}=={dist.version}\")\n"
)


def test_the_image_holds_the_pinned_versions(appliance: Appliance) -> None:
    """The image installs constraints.txt's exact versions (what CI tested), not whatever PyPI
    had at build time: every pinned package the image has is at its pin, and every package
    the image has besides docxy (and the base's pip, which the build removes) is pinned."""
    argv = ["run", "--rm", "--network", "none", "--entrypoint", "/opt/docxy/bin/python3"]
    result = appliance.daemon.docker(
        *argv, IMAGE, "-c", INSTALLED_VERSIONS, timeout=300, check=True
    )
    installed = {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in result.stdout.split())
    }
    pinned = {
        canonicalize_name(name): version
        for name, _, version in (
            line.partition("==")
            for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
    }
    installed.pop(canonicalize_name("docxy"))
    assert {n: v for n, v in installed.items() if pinned.get(n) != v} == {}
    assert pinned.keys() <= installed.keys(), sorted(pinned.keys() - installed.keys())


# --- compose ------------------------------------------------------------------------------------


def compose_project(directory: Path, env: Mapping[str, str]) -> Path:
    """The compose files as shipped, with a .env as an operator writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("compose.yaml", "compose.host.yaml"):
        shutil.copyfile(REPO_ROOT / name, directory / name)
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return directory


def docker_compose(
    daemon: Dockerd, project: Path, *args: str, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    argv = [need_binary("docker-compose"), "--project-directory", str(project), *args]
    env = daemon.env | {"COMPOSE_PROJECT_NAME": f"dx{project.name[-8:].lower()}"}
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_compose_files_are_valid_for_docker_compose(tmp_path: Path) -> None:
    need_binary("docker-compose")
    example = (REPO_ROOT / ".env.example").read_text()
    project = tmp_path / "project"
    project.mkdir()
    for name in ("compose.yaml", "compose.host.yaml"):
        shutil.copyfile(REPO_ROOT / name, project / name)
    # cp .env.example .env, then uncomment DOCXY_DOMAIN as the README says
    (project / ".env").write_text(example.replace("# DOCXY_DOMAIN=", "DOCXY_DOMAIN=", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    configs: dict[str, str] = {}
    for name in ("compose.yaml", "compose.host.yaml"):
        result = subprocess.run(
            ["docker-compose", "-f", name, "config"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{name}:\n{result.stderr}"
        config = configs[name] = result.stdout
        assert "restart: unless-stopped" in config, config
        assert "DOCXY_DOMAIN: mirror.example.com" in config, config  # .env reached the service
        assert "max-size: 10m" in config, config
        assert "/var/lib/docxy/cache" in config and "/var/lib/docxy/certs" in config, config
    assert "published: 443" in configs["compose.yaml"] or "443:443" in configs["compose.yaml"]
    # Host networking cannot be combined with published ports or with that sysctl.
    host = configs["compose.host.yaml"]
    assert "network_mode: host" in host, host
    assert "ports:" not in host and "sysctls:" not in host, host
    assert "[::]:80" in host and "TLS_LISTEN" not in host, host  # the host's IPv6 too


def test_compose_host_variant_comes_up_as_written(
    appliance: Appliance, bed: Bed, tmp_path: Path
) -> None:
    port = free_port()
    project = compose_project(
        tmp_path / "project",
        mirror_env(port, bed.upstream_url) | {"DOCXY_IMAGE": IMAGE},
    )
    compose = ("-f", "compose.host.yaml")
    up = docker_compose(appliance.daemon, project, *compose, "up", "--detach", "--no-build")
    try:
        assert up.returncode == 0, up.stderr
        ids = docker_compose(appliance.daemon, project, *compose, "ps", "--quiet").stdout.split()
        assert len(ids) == 1, ids
        container = Container(appliance.daemon, ids[0])
        wait_serving(container, port)
        config = container.inspect()["HostConfig"]
        assert config["NetworkMode"] == "host"
        assert config["RestartPolicy"]["Name"] == "unless-stopped"
        assert config["LogConfig"]["Config"] == {"max-file": "3", "max-size": "10m"}
        # The mirror answers the registry API on the host's port, through to the loopback bed.
        response = httpx.get(f"http://{LOOPBACK}:{port}/v2/", timeout=10)
        assert response.status_code in (200, 401), response.text
    finally:
        down = docker_compose(appliance.daemon, project, *compose, "down", "--volumes")
        assert down.returncode == 0, down.stderr


# --- pulls, the cache volume, restart, stop -----------------------------------------------------


def test_pull_through_the_container_then_from_its_cache_volume_after_restart(
    appliance: Appliance, bed: Bed
) -> None:
    image = bed.images["library/hello"]
    port = appliance.pull_port
    env = mirror_env(port, bed.upstream_url)
    volume = f"docxy-test-cache-{port}"
    with running_container(
        appliance.daemon,
        IMAGE,
        env=env,
        volumes=[f"{volume}:{STATE}/cache"],
        options=["--stop-timeout", STOP_GRACE],
    ) as container:
        try:
            wait_serving(container, port)
            docker_pull(appliance, image)
            assert cat_test_file(appliance, image) == image.content

            # The CLI inside sees the mirror's cache (its settings, its user).
            du = container.exec("docxy", "cache", "du")
            assert du.returncode == 0, du.stderr
            assert f"blobs:     {len(image.blobs)}" in du.stdout, du.stdout
            assert "tags:      1" in du.stdout, du.stdout

            assert container.docker("restart", "--time", STOP_GRACE, container.name).returncode == 0
            wait_serving(container, port)
            appliance.daemon.docker("rmi", f"{image.short_repo}:{image.tag}", check=True)
            with bed.outage():
                docker_pull(appliance, image)  # nothing upstream answers: the volume serves
                assert cat_test_file(appliance, image) == image.content

            logs = stop_cleanly(container)
            assert "stopped: docxy (exit status 0)" in logs, logs
            # No domain: the renewer never started, so certbot never ran.
            assert "spawned: 'scheduler'" not in logs and "certbot" not in logs, logs
        finally:
            appliance.daemon.docker("rm", "--force", container.name)
            appliance.daemon.docker("volume", "rm", volume)


# --- the CLI inside the container ------------------------------------------------------------


def test_kits_made_inside_and_roots_cache_gc_leave_the_volumes_the_mirrors(
    appliance: Appliance, tmp_path: Path
) -> None:
    """In the container as `docker compose up -d` starts it (a closed upstream: nothing is
    pulled): `docxy clients add NAME` with no `--out`, as the mirror's user and as root, writes
    the kit on the certs volume (auth.dir/kits/NAME), which `docker cp` copies out; root's
    `docxy cache gc` on a cache whose tmp/ is not made yet, and root's `clients add`, leave
    nothing in either volume that is not the mirror user's (a root-owned cache/tmp stopped
    every fill; `clients add` without `--out` wrote to / and failed for the mirror's user)."""
    port = free_port()
    with running_container(appliance.daemon, IMAGE, env=mirror_env(port, DEAD_UPSTREAM)) as box:
        poll(lambda: health_answers(port), DEADLINE, "the mirror's /health\n" + box.report())
        added = box.exec("docxy", "clients", "add", "ci-runner")
        assert added.returncode == 0, added.stdout + added.stderr
        kits = f"{STATE}/certs/access/kits"
        assert f"{kits}/ci-runner" in added.stdout
        docker = appliance.daemon.docker
        as_root = docker("exec", "-u", "0", box.name, "docxy", "clients", "add", "ci")
        assert as_root.returncode == 0, as_root.stderr
        box.exec("rm", "-r", f"{STATE}/cache/tmp")  # a cache a root gc finds before the mirror
        gc = docker("exec", "-u", "0", box.name, "docxy", "cache", "gc")
        assert gc.returncode == 0, gc.stderr
        copied = docker("cp", f"{box.name}:{kits}/ci-runner", str(tmp_path / "kit"))
        assert copied.returncode == 0, copied.stderr
        kit = {path.name for path in (tmp_path / "kit").iterdir()}
        assert kit == {"client.cert", "client.key", "ca.crt"}
        volumes = [f"{STATE}/cache", f"{STATE}/certs"]
        others = box.exec("find", *volumes, "!", "-user", "docxy", "-o", "!", "-group", "docxy")
        assert others.returncode == 0 and others.stdout == "", others.stdout + others.stderr


# --- healthcheck and healing --------------------------------------------------------------------


def test_healthy_on_a_moved_listener_and_a_killed_mirror_comes_back(
    appliance: Appliance,
) -> None:
    port = free_port()
    with running_container(
        appliance.daemon,
        IMAGE,
        env=mirror_env(port, DEAD_UPSTREAM),
        options=["--health-interval", "1s", "--health-start-period", "120s"],
    ) as container:
        # The image's HEALTHCHECK follows DOCXY_SERVER_LISTEN (127.0.0.1:<port>, not :80).
        poll(lambda: container.health() == "healthy", DEADLINE, "healthy\n" + container.report())
        probes = container.state()["Health"]["Log"]
        assert any(f"127.0.0.1:{port}/health" in probe["Output"] for probe in probes), probes

        before = supervised_pid(container, "docxy")
        assert before > 0, container.report()
        killed = container.exec("bash", "-c", f"kill -9 {before}")
        assert killed.returncode == 0, killed.stderr

        def respawned() -> bool:
            return supervised_pid(container, "docxy") not in (0, before) and health_answers(port)

        poll(respawned, DEADLINE, "the mirror respawned\n" + container.report())
        state = container.state()
        assert state["Running"] and container.inspect()["RestartCount"] == 0, container.report()
        assert "exited: docxy (terminated by SIGKILL" in container.logs()


def test_a_hung_mirror_is_restarted_by_the_watchdog(appliance: Appliance) -> None:
    """The image's bash, coreutils and python run scripts/supervisor-watchdog.sh: a mirror
    stopped with SIGSTOP (alive, answering nothing) after the watchdog's first answered probe is
    replaced without a container restart."""
    port = free_port()
    with running_container(
        appliance.daemon,
        IMAGE,
        env=mirror_env(port, DEAD_UPSTREAM, DOCXY_WATCHDOG_SECONDS="5"),
        options=["--no-healthcheck"],  # its probes of /health would pass for the watchdog's
    ) as container:
        wait_serving(container, port)  # one answered /health of the test's own
        answered = "GET /health 200"
        poll(lambda: container.logs().count(answered) >= 2, DEADLINE, "the watchdog's probe")
        hung = supervised_pid(container, "docxy")
        assert hung > 0, container.report()
        stopped = container.exec("bash", "-c", f"kill -STOP {hung}")
        assert stopped.returncode == 0, stopped.stderr

        def replaced() -> bool:
            return supervised_pid(container, "docxy") not in (0, hung) and health_answers(port)

        poll(replaced, DEADLINE + 60, "the hung mirror replaced\n" + container.report())
        assert container.state()["Running"] and container.inspect()["RestartCount"] == 0
        assert "the mirror has not answered /health for" in container.logs()


# --- a mirror that cannot start takes the container down ----------------------------------------


def test_unstartable_mirror_takes_the_container_down(appliance: Appliance, tmp_path: Path) -> None:
    cache = tmp_path / "root-owned-cache"
    cache.mkdir()
    cache.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    assert cache.stat().st_uid == 0  # the container's docxy user may not write it
    port = free_port()
    started = daemon_time(appliance.daemon)
    with running_container(
        appliance.daemon,
        IMAGE,
        env=mirror_env(port, DEAD_UPSTREAM),
        volumes=[f"{cache}:{STATE}/cache"],
        options=["--restart", "unless-stopped"],
    ) as container:

        def restarted() -> bool:
            return int(container.inspect()["RestartCount"]) >= 1

        poll(restarted, GAVE_UP_DEADLINE, "a restart by the policy\n" + container.report())
        # State.ExitCode is reset once the policy has restarted it: read the `die` events.
        assert container.exit_codes(since=started)[:1] == ["1"], container.report()
        logs = container.logs()
        assert "gave up: docxy entered FATAL state" in logs, logs
        assert "stopping the container" in logs, logs


# --- first start with a domain: issuance from pebble --------------------------------------------


def test_first_start_obtains_a_certificate_from_pebble_and_serves_it(
    appliance: Appliance, tmp_path: Path
) -> None:
    http_port, tls_port = free_port(), free_port()  # pebble validates HTTP-01 on http_port
    with running_pebble(tmp_path / "pebble", http_port) as pebble:
        ca = tmp_path / "ca" / "pebble-ca.pem"
        ca.parent.mkdir()
        shutil.copyfile(pebble.tls_ca, ca)
        ca.chmod(0o644)
        env = {
            "DOCXY_DOMAIN": DOMAIN,
            "DOCXY_EMAIL": EMAIL,
            "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{http_port}",
            "DOCXY_SERVER_TLS_LISTEN": f"{LOOPBACK}:{tls_port}",
            "DOCXY_UPSTREAM_REGISTRY": DEAD_UPSTREAM,
            "DOCXY_CERTS_ACME_SERVER": pebble.directory,
            "DOCXY_CERTS_CA_BUNDLE": "/etc/docxy-test/pebble-ca.pem",
            "REQUESTS_CA_BUNDLE": "/etc/docxy-test/pebble-ca.pem",
            "DOCXY_SCHEDULER_CERTBOT_TIMEOUT": "120",
        }
        with running_container(
            appliance.daemon,
            IMAGE,
            env=env,
            volumes=[f"{ca}:/etc/docxy-test/pebble-ca.pem:ro"],
            options=["--stop-timeout", STOP_GRACE],
        ) as container:
            first: list[x509.Certificate] = []

            def bootstrap_served() -> bool:
                assert container.state()["Running"], container.report()
                cert = handshake(tls_port)
                if cert is not None:
                    first.append(cert)
                return bool(first)

            poll(bootstrap_served, DEADLINE, "HTTPS on the bootstrap certificate")
            assert is_self_signed(first[0]), first[0].issuer.rfc4514_string()

            issued: list[x509.Certificate] = []

            def pebble_cert_served() -> bool:
                cert = handshake(tls_port, pebble.root)  # chain and name verified
                if cert is not None:
                    issued.append(cert)
                return bool(issued)

            what = f"pebble's certificate served\n{pebble.logs()}\n{container.report()}"
            poll(pebble_cert_served, DEADLINE, what)
            assert "Pebble Intermediate CA" in issued[0].issuer.rfc4514_string()
            san = issued[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.value.get_values_for_type(x509.DNSName) == [DOMAIN]

            # `docker exec` sees the settings the entrypoint derived from DOCXY_DOMAIN: without
            # them this config has no public URL and the CLI would refuse to start.
            status = container.exec("docxy", "certs", "status")
            assert status.returncode == 0, status.stderr
            assert format(issued[0].serial_number, "x") in status.stdout, status.stdout
            du = container.exec("docxy", "cache", "du")
            assert du.returncode == 0, du.stderr

            logs = stop_cleanly(container)
            assert "stopped: docxy (exit status 0)" in logs, logs
            assert "stopped: scheduler (exit status 0)" in logs, logs


# --- replicas sharing one bucket ----------------------------------------------------------------


def test_two_replicas_share_blobs_through_a_bucket(
    appliance: Appliance, bed: Bed, tmp_path: Path
) -> None:
    """The image carries the shared tier's signer (botocore): with `DOCXY_SHARED_*` set, as in
    each replica's .env, the mirror starts, uploads what it fetched and serves another
    replica's uploads. Without botocore the mirror refuses to start and no replica serves."""
    need_binary("weed")
    store = start_objectstore(tmp_path / "weed")
    try:
        size = 2 * (1 << 20) + 11
        digest = bed.push_big_blob("library/hello", size, seed=61)
        shared = {
            "DOCXY_SHARED_ENDPOINT": store.url,
            "DOCXY_SHARED_BUCKET": store.bucket,
            "DOCXY_SHARED_ACCESS_KEY": store.access_key,
            "DOCXY_SHARED_SECRET_KEY": store.secret_key,
            "DOCXY_SHARED_PREFIX": "appliance",
        }
        port_a, port_b = free_port(), free_port()
        url_a, url_b = f"http://{LOOPBACK}:{port_a}", f"http://{LOOPBACK}:{port_b}"
        with (
            running_container(
                appliance.daemon, IMAGE, env=mirror_env(port_a, bed.upstream_url, **shared)
            ) as a,
            running_container(
                appliance.daemon, IMAGE, env=mirror_env(port_b, bed.upstream_url, **shared)
            ) as b,
        ):
            wait_serving(a, port_a)
            wait_serving(b, port_b)
            assert get_blob(url_a, digest) == (200, digest, "")
            poll(lambda: shared_health(url_a)["uploaded"] == 1, DEADLINE, "A uploaded the blob")
            stored = object_bytes(store, "appliance", digest)
            assert stored is not None and "sha256:" + hashlib.sha256(stored).hexdigest() == digest

            bed.front_log.clear()
            assert get_blob(url_b, digest) == (200, digest, "")
            assert blob_fetches(bed) == 0  # B read it from the bucket, not the upstream
            health = shared_health(url_b)
            assert health["reachable"] is True and health["hits"] == 1, health
            line = f"GET /v2/library/hello/blobs/{digest} 200 {size} bytes cache="
            poll(lambda: line + "miss " in a.logs(), DEADLINE, "A's access log: cache=miss")
            poll(lambda: line + "shared " in b.logs(), DEADLINE, "B's access log: cache=shared")
            assert store.secret_key not in a.logs() + b.logs()
    finally:
        store.stop()
