"""The transparent path in users mode: an unchanged `docker pull` through `registry-mirrors`,
allowed by a client certificate from `docxy clients add`.

    the mirror   users mode with auth.client_certs, HTTPS on 127.0.0.1 with a server
                 certificate for NAME from a test CA
    namespace    dockerd treats every 127.0.0.0/8 registry as insecure and then sends no client
                 certificate, so NAME resolves (one /etc/hosts line) to an address inside a
                 network namespace this test creates (lab.clients.netns), where a forwarder
                 passes the TCP stream, TLS and all, to the mirror on the host's loopback
    dockerd      a private daemon with registry-mirrors = https://NAME, its trust and the client
                 certificate in /etc/docker/certs.d/NAME/; every other host ends at the egress
                 guard (a refused mirror pull falls back to Docker Hub, which the guard records)
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from lab.bed import Bed, TestImage
from lab.certs import issue
from lab.clients.dockerd import Dockerd
from lab.clients.egress import EgressGuard
from lab.clients.netns import Namespace, forwarder, namespace
from lab.clients.tlstrust import DOCKER_CERTS_D, hosts_entry, running_dockerd_direct_to
from lab.mirror import Mirror
from lab.ports import free_port
from tests.conftest import StartMirror
from tests.e2e.test_access_e2e import docxy_cli
from tests.unavailable import need_binary, need_root

pytestmark = pytest.mark.e2e

TIMEOUT = 180


def server_certificate(out: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``name`` it signed: (ca, cert, key) paths."""
    ca = issue("docxy test server CA", ca=True, days=1)
    server = issue(name, ca, names=[x509.DNSName(name)], days=1)
    pair = server.write(out / "server.pem", out / "server-key.pem")
    (out / "server-ca.crt").write_bytes(ca.cert_pem)
    return out / "server-ca.crt", pair.cert, pair.key


@contextmanager
def certs_d(host: str) -> Iterator[Path]:
    """``/etc/docker/certs.d/<host>/``, removed afterwards with what it had to create."""
    created = [p for p in (DOCKER_CERTS_D.parent, DOCKER_CERTS_D) if not p.exists()]
    target = DOCKER_CERTS_D / host
    assert not target.exists(), f"{target} exists already: not ours to replace"
    target.mkdir(parents=True)
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        for directory in reversed(created):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()


@dataclass
class CertSetup:
    mirror: Mirror
    auth_dir: Path
    trust: Path  # the daemon's certs.d directory for the mirror
    daemon: Dockerd
    egress: EgressGuard
    work: Path

    def add_client(self, name: str) -> None:
        """`docxy clients add NAME --out KIT`, and the kit installed in certs.d."""
        kit = self.work / f"kit-{name}-{secrets.token_hex(2)}"
        result = docxy_cli(self.auth_dir, "clients", "add", name, "--out", str(kit))
        assert result.returncode == 0, result.stderr
        assert {p.name for p in kit.iterdir()} == {"client.cert", "client.key", "ca.crt"}
        shutil.copyfile(kit / "client.cert", self.trust / "client.cert")
        shutil.copyfile(kit / "client.key", self.trust / "client.key")
        shutil.copyfile(kit / "ca.crt", self.trust / "docxy-clients-ca.crt")

    def drop_certificate(self) -> None:
        (self.trust / "client.cert").unlink()
        (self.trust / "client.key").unlink()

    def pull(self, image: TestImage) -> tuple[int, str]:
        result = self.daemon.docker("pull", f"{image.short_repo}:{image.tag}", timeout=TIMEOUT)
        return result.returncode, result.stdout + result.stderr


@pytest.fixture
def setup(start_mirror: StartMirror, egress: EgressGuard, tmp_path: Path) -> Iterator[CertSetup]:
    for binary in ("ip", "dockerd", "docker", "containerd", "runc"):
        need_binary(binary)
    need_root("network namespaces and /etc/docker/certs.d need root")
    name = f"mirror-{secrets.token_hex(3)}.test"
    ca, cert, key = server_certificate(tmp_path / "server", name)
    auth_dir = tmp_path / "access"
    tls_port = free_port()
    env = {
        "DOCXY_AUTH_MODE": "users",
        "DOCXY_AUTH_CLIENT_CERTS": "true",
        "DOCXY_AUTH_DIR": str(auth_dir),
    }
    mirror = start_mirror(
        "--tls-listen",
        f"127.0.0.1:{tls_port}",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--public-url",
        f"https://{name}",
        env=env,
    )
    with ExitStack() as stack:
        ns: Namespace = stack.enter_context(namespace())
        stack.enter_context(forwarder(ns, 443, tls_port))
        stack.enter_context(hosts_entry(name, address=ns.address))
        trust = stack.enter_context(certs_d(name))
        shutil.copyfile(ca, trust / "ca.crt")
        daemon = stack.enter_context(
            running_dockerd_direct_to(name, mirror_url=f"https://{name}", egress_proxy=egress.url)
        )
        yield CertSetup(mirror, auth_dir, trust, daemon, egress, tmp_path)


def refusals(setup: CertSetup) -> int:
    return sum(" 401 " in line for line in setup.mirror.log_text(10**7).splitlines())


def refused_by_the_mirror(
    setup: CertSetup, output: str, attempts_before: int, refusals_before: int
) -> None:
    assert refusals(setup) > refusals_before, setup.mirror.log_text(3000)
    # the daemon gave up on the mirror and fell back to Docker Hub: refused by the guard
    assert len(setup.egress.attempts) > attempts_before, output


def test_client_certificate_lets_an_unchanged_docker_pull_through(
    bed: Bed, setup: CertSetup
) -> None:
    setup.add_client("laptop")
    hello = bed.images["library/hello"]
    status, output = setup.pull(hello)
    assert status == 0, f"{output}\n--- dockerd ---\n{setup.daemon.log()[-5000:]}"
    assert hello.digest in output
    assert setup.egress.attempts == [], output
    served = [
        line
        for line in setup.mirror.log_text(200000).splitlines()
        if "GET /v2/library/hello/manifests" in line
    ]
    assert served and all(line.endswith(" client=cert:laptop") for line in served), served
    assert refusals(setup) == 0

    # without the certificate: refused
    setup.drop_certificate()
    multi = bed.images["docxytest/multi"]
    status, output = setup.pull(multi)
    assert status != 0
    refused_by_the_mirror(setup, output, 0, 0)

    # with a certificate that `docxy clients rm` revoked: refused
    setup.add_client("laptop")
    assert docxy_cli(setup.auth_dir, "clients", "rm", "laptop").returncode == 0
    seen, refused = len(setup.egress.attempts), refusals(setup)
    status, output = setup.pull(multi)
    assert status != 0
    refused_by_the_mirror(setup, output, seen, refused)

    # a new certificate for another client pulls again
    setup.add_client("ci")
    seen = len(setup.egress.attempts)
    status, output = setup.pull(multi)
    assert status == 0, output
    assert len(setup.egress.attempts) == seen
    access = [line for line in setup.mirror.log_text(200000).splitlines() if " client=" in line]
    assert access[-1].endswith("client=cert:ci")  # (a commit's line may come after it)
