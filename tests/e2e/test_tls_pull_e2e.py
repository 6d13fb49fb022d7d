"""Pulling through the mirror over HTTPS with a certificate from a real ACME server (pebble).

    the mirror   `python -m docxy serve` in front of the Docker-Hub-like bed, plain HTTP for the
                 ACME webroot and HTTPS as https://mirror.test:PORT (its public URL)
    pebble       issues the certificate through the mirror's webroot (lab.acme)
    clients      skopeo and a private dockerd, trusting pebble's root for mirror.test only,
                 resolving mirror.test to 127.0.0.1 through one /etc/hosts line, and with
                 every other host sent to the refusing egress guard

The last test renews the certificate (the scheduler, SIGHUP to the mirror) while a 96 MiB blob
download is held open half-read: it completes intact on the old certificate while new
handshakes get the new one, and requests on new connections all through it see no error.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from lab.acme import DOMAIN, Pebble, running_pebble
from lab.bed import Bed, TestImage
from lab.bed.images import generated_digest
from lab.clients.egress import EgressGuard
from lab.clients.tlstrust import docker_ca, env_direct_to, hosts_entry, running_dockerd_direct_to
from lab.mirror import Mirror
from lab.ports import LOOPBACK, free_port
from tests.conftest import StartMirror
from tests.e2e.skopeo import run_skopeo
from tests.e2e.test_certs_e2e import (
    DEADLINE,
    Site,
    https_loop,
    obtain_through,
    run_renewer_once,
    serial_of,
    served_cert,
)
from tests.e2e.waiting import poll
from tests.unavailable import DOCKER, need_binaries, need_binary

pytestmark = pytest.mark.e2e

TIMEOUT = 180
BIG_REPO = "docxytest/tlsbig"
BIG_SIZE = 96 << 20
BIG_SEED = 4
FIRST_PART = 8 << 20  # read before the renewal; the rest after it


@dataclass
class HttpsMirror:
    mirror: Mirror
    tls_port: int
    pebble: Pebble
    site: Site
    serial: int  # of the certificate obtained from pebble and served

    @property
    def host(self) -> str:
        return f"{DOMAIN}:{self.tls_port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def ca_dir(self, base: Path) -> Path:
        """A directory with pebble's root as ca.crt (skopeo's --src-cert-dir)."""
        base.mkdir(parents=True, exist_ok=True)
        (base / "ca.crt").write_bytes(self.pebble.root.read_bytes())
        return base


@pytest.fixture
def https_mirror(start_mirror: StartMirror, tmp_path: Path) -> Iterator[HttpsMirror]:
    """The mirror on the bed, serving a pebble certificate for mirror.test obtained through it."""
    need_binary("pebble")
    need_binary("certbot")
    site = Site(tmp_path / "site")
    site.bootstrap()
    tls_port = free_port()
    mirror = start_mirror(
        *("--tls-listen", f"{LOOPBACK}:{tls_port}", "--cert", str(site.cert)),
        *("--key", str(site.key), "--public-url", f"https://{DOMAIN}:{tls_port}"),
        env={"DOCXY_CERTS_WEBROOT": str(site.webroot)},
    )
    with running_pebble(tmp_path / "pebble", mirror.port) as pebble, hosts_entry(DOMAIN):
        serial = obtain_through(site, pebble, mirror, tls_port)
        yield HttpsMirror(mirror, tls_port, pebble, site, serial)


def skopeo_copy(
    target: HttpsMirror, reference: str, dest: Path, egress: EgressGuard, *flags: str
) -> subprocess.CompletedProcess[str]:
    return run_skopeo(
        dest.parent / "home",
        "--insecure-policy",
        "copy",
        "--src-no-creds",
        *flags,
        f"docker://{target.host}/{reference}",
        f"oci:{dest}",
        env=env_direct_to(DOMAIN, egress.url),
    )


def oci_layout_digest(layout: Path) -> str:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    digest: str = entry["digest"]
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return digest


# --- 1: skopeo and dockerd pull over HTTPS ------------------------------------------------------


def test_skopeo_pulls_over_https_trusting_only_pebbles_root(
    https_mirror: HttpsMirror, bed: Bed, egress: EgressGuard, tmp_path: Path
) -> None:
    image = bed.images["library/hello"]
    untrusted = skopeo_copy(https_mirror, "library/hello:latest", tmp_path / "no", egress)
    assert untrusted.returncode != 0
    assert re.search(r"x509|certificate", untrusted.stderr), untrusted.stderr

    trust = https_mirror.ca_dir(tmp_path / "certs")
    result = skopeo_copy(
        https_mirror, "library/hello:latest", tmp_path / "oci", egress, "--src-cert-dir", str(trust)
    )
    assert result.returncode == 0, result.stderr
    assert oci_layout_digest(tmp_path / "oci") == image.amd64_digest
    assert bed.front_log.cdn_fetches(), "the blobs came from the bed through the mirror"
    assert egress.attempts == []


def test_dockerd_pulls_through_the_https_mirror_with_certs_d_trust(
    https_mirror: HttpsMirror, bed: Bed, egress: EgressGuard
) -> None:
    need_binaries(*DOCKER)
    image: TestImage = bed.images["docxytest/multi"]
    ref = f"{image.short_repo}:{image.tag}"
    with (
        docker_ca(https_mirror.host, https_mirror.pebble.root),
        running_dockerd_direct_to(
            DOMAIN, mirror_url=https_mirror.url, egress_proxy=egress.url
        ) as daemon,
    ):
        pulled = daemon.docker("pull", ref)
        assert pulled.returncode == 0, f"{pulled.stderr}\n{daemon.log()[-6000:]}"
        inspected = daemon.docker("image", "inspect", ref, check=True)
        ran = daemon.docker("run", "--rm", "--network", "none", ref, "cat", "/docxy-test.txt")
        log = daemon.log()
    assert f"docxytest/multi@{image.digest}" in inspected.stdout
    assert ran.stdout == image.content, ran.stderr
    # Anything but the mirror (a fallback to Docker Hub) would have reached the guard.
    assert egress.attempts == [], f"{egress.attempts}\n{log[-6000:]}"
    # ...and dockerd knows the mirror only as https://mirror.test:PORT.
    assert f"GET /v2/{image.repo}/manifests/{image.digest} 200" in https_mirror.mirror.log_text()
    assert not (Path("/etc/docker/certs.d") / https_mirror.host).exists()


# --- 2: a download spanning a certificate renewal -----------------------------------------------


def bearer_token(client: httpx.Client, base: str, repo: str) -> str:
    """Anonymous pull token the way a registry client gets it: from the 401's realm."""
    challenge = client.get(f"{base}/v2/")
    assert challenge.status_code == 401
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers["www-authenticate"]))
    assert params["realm"] == f"{base}/auth/token"  # the public URL, over HTTPS
    response = client.get(
        params["realm"], params={"service": params["service"], "scope": f"repository:{repo}:pull"}
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def peer_serial(response: httpx.Response) -> int:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    der = ssl_object.getpeercert(True)  # positional: the C-level SSL object
    return x509.load_der_x509_certificate(der).serial_number


def test_download_spanning_a_renewal_completes_and_new_handshakes_get_the_new_cert(
    https_mirror: HttpsMirror, bed: Bed, tmp_path: Path
) -> None:
    digest = bed.push_big_blob(BIG_REPO, BIG_SIZE, seed=BIG_SEED)
    assert digest == generated_digest(BIG_SIZE, BIG_SEED)
    first = https_mirror.serial
    root = https_mirror.pebble.root
    verify = ssl.create_default_context(cafile=root)
    stop, seen, errors = threading.Event(), set[int](), list[str]()
    loop = threading.Thread(
        target=https_loop, args=(https_mirror.tls_port, root, stop, seen, errors)
    )
    hasher, got = hashlib.sha256(), 0
    with httpx.Client(verify=verify, timeout=60, trust_env=False) as client:
        token = bearer_token(client, https_mirror.url, BIG_REPO)
        url = f"{https_mirror.url}/v2/{BIG_REPO}/blobs/{digest}"
        headers = {"Authorization": f"Bearer {token}"}
        with client.stream("GET", url, headers=headers, follow_redirects=True) as response:
            assert response.status_code == 200, response.read()[:500]
            assert response.headers["content-length"] == str(BIG_SIZE)
            download_serial = peer_serial(response)
            chunks = response.iter_raw(1 << 20)
            while got < FIRST_PART:
                part = next(chunks)
                hasher.update(part)
                got += len(part)

            # Half-read and held open: renew, and watch new connections all through it.
            loop.start()
            try:
                poll(lambda: seen, DEADLINE, "the request loop is answered")
                pidfile = tmp_path / "docxy.pid"
                pidfile.write_text(f"{https_mirror.mirror.proc.pid}\n")
                renewed = run_renewer_once(
                    https_mirror.site, https_mirror.pebble, "--pidfile", str(pidfile)
                )
                assert renewed.returncode == 0, renewed.stderr
                second = serial_of(https_mirror.site.cert)
                poll(lambda: second in seen, DEADLINE, "new handshakes get the renewed certificate")
            finally:
                stop.set()
                loop.join(timeout=60)

            deadline = time.monotonic() + TIMEOUT
            for part in chunks:  # the rest, on the connection opened before the renewal
                hasher.update(part)
                got += len(part)
                assert time.monotonic() < deadline, "download did not finish in time"
    assert download_serial == first
    assert got == BIG_SIZE and "sha256:" + hasher.hexdigest() == digest
    assert second != first and seen == {first, second}
    assert errors == []
    assert served_cert(https_mirror.tls_port, root).serial_number == second
    # The mirror's own account: the reload came while it was still sending the blob.
    log = https_mirror.mirror.log_text(10**6)
    sent = log.index(f"GET /v2/{BIG_REPO}/blobs/{digest} 200 {BIG_SIZE} bytes")
    assert log.rindex("TLS reload: new certificate loaded") < sent
