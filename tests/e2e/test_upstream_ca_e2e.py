"""A private registry behind a private CA, as an upstream: Debian's ``docker-registry`` serving
TLS with a certificate from a CA made here, and ``docxy serve`` in front of it, each a real
process on loopback (127.0.0.84 and 127.0.0.85, ports below 10000).

With ``upstream.ca_file`` naming that CA, a manifest GET and a cold blob GET (a cache fill: its
GET made with ``http.client``, ``docxy.upstream.direct``) go through, and the blob, checked
against its digest, is kept: it is served again with the registry stopped. Without it the
mirror answers a 502 at once (no hang) that says the certificate could not be verified, and
its log says so and names ``ca_file``.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from lab.bed.images import build_image, text_layer
from lab.certs import CertPair, issue
from lab.mirror import mirror_env
from lab.ports import free_port
from lab.processes import stop_process
from lab.registry import REGISTRY_BINARY, registry_config
from tests.unavailable import need_binary

pytestmark = pytest.mark.e2e

REGISTRY_HOST = "127.0.0.84"
MIRROR_HOST = "127.0.0.85"
REPO = "team/private-ca"
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


def start(
    name: str,
    argv: list[str],
    workdir: Path,
    url: str,
    ready: str,
    verify: ssl.SSLContext | bool = False,
    env: dict[str, str] | None = None,
) -> Process:
    """Run ``argv`` until ``url + ready`` answers anything at all (bounded), its output in
    ``<workdir>/<name>.log``."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    process = Process(proc, url, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{process.log_text()[-4000:]}")
        try:
            httpx.get(url + ready, timeout=2, verify=verify)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.stop()
    pytest.fail(f"{name} did not answer in {START_TIMEOUT:g}s:\n{process.log_text()[-4000:]}")


@dataclass
class PrivateRegistry:
    process: Process
    ca_file: Path
    manifest: bytes
    manifest_type: str
    blob: bytes
    blob_digest: str

    @property
    def url(self) -> str:
        return self.process.url


def push(url: str, verify: ssl.SSLContext) -> tuple[bytes, str, bytes, str]:
    """Push one small image to ``REPO:1``: (manifest, its type, its layer, the layer's digest)."""
    image = build_image([text_layer("behind a private CA\n" * 4096, False)], "amd64", False)
    with httpx.Client(base_url=url, verify=verify, timeout=REQUEST_TIMEOUT) as client:
        for blob in (image.config, *(layer.blob for layer in image.layers)):
            started = client.post(f"/v2/{REPO}/blobs/uploads/")
            assert started.status_code == 202, started.text
            location = httpx.URL(url).join(started.headers["Location"])
            put = client.put(location.copy_add_param("digest", blob.digest), content=blob.data)
            assert put.status_code == 201, put.text
        headers = {"Content-Type": image.manifest.media_type}
        put = client.put(f"/v2/{REPO}/manifests/1", content=image.manifest.data, headers=headers)
        assert put.status_code == 201, put.text
    layer = image.layers[0].blob
    return image.manifest.data, image.manifest.media_type, layer.data, layer.digest


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[PrivateRegistry]:
    binary = need_binary(REGISTRY_BINARY)
    ca = issue("docxy e2e private CA", ca=True)
    ca_file = tmp_path / "private-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    leaf = issue(REGISTRY_HOST, ca, names=[x509.IPAddress(IPv4Address(REGISTRY_HOST))])
    pair: CertPair = leaf.write(tmp_path / "registry-cert.pem", tmp_path / "registry-key.pem")
    port = free_port(REGISTRY_HOST)
    config = json.loads(registry_config(port, tmp_path / "storage", tls=pair))
    config["http"]["addr"] = f"{REGISTRY_HOST}:{port}"
    config_path = tmp_path / "registry.yml"
    config_path.write_text(json.dumps(config))
    url = f"https://{REGISTRY_HOST}:{port}"
    trusting = ssl.create_default_context(cafile=str(ca_file))
    process = start(
        "registry", [binary, "serve", str(config_path)], tmp_path, url, "/v2/", trusting
    )
    try:
        manifest, manifest_type, blob, digest = push(url, trusting)
        yield PrivateRegistry(process, ca_file, manifest, manifest_type, blob, digest)
    finally:
        process.stop()


def start_mirror(workdir: Path, upstream: str, *args: str) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(MIRROR_HOST)
    argv = [sys.executable, "-m", "docxy", "serve", "--listen", f"{MIRROR_HOST}:{port}"]
    argv += ["--upstream", upstream, *args]
    env = mirror_env(workdir, {})
    return start("mirror", argv, workdir, f"http://{MIRROR_HOST}:{port}", "/health", env=env)


ACCEPT = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}


def test_with_ca_file_a_manifest_and_a_cold_blob_come_through_and_are_kept(
    registry: PrivateRegistry, tmp_path: Path
) -> None:
    mirror = start_mirror(
        tmp_path / "mirror", registry.url, "--set", f"upstream.ca_file={registry.ca_file}"
    )
    try:
        with httpx.Client(base_url=mirror.url, timeout=REQUEST_TIMEOUT) as client:
            manifest = client.get(f"/v2/{REPO}/manifests/1", headers=ACCEPT)
            assert manifest.status_code == 200, manifest.text
            assert manifest.content == registry.manifest
            cold = client.get(f"/v2/{REPO}/blobs/{registry.blob_digest}")
            assert cold.status_code == 200, cold.text
            assert cold.content == registry.blob
            assert "sha256:" + hashlib.sha256(cold.content).hexdigest() == registry.blob_digest
            registry.process.stop()  # from here on, only the cache can answer
            kept = client.get(f"/v2/{REPO}/blobs/{registry.blob_digest}")
            assert kept.status_code == 200, kept.text
            assert kept.content == registry.blob
            assert "hit" in kept.headers.get("cache-status", ""), kept.headers
        log = mirror.log_text()
    finally:
        mirror.stop()
    assert "could not be verified" not in log
    assert f"{registry.ca_file} besides the default CAs" in log  # the trust line at start


def test_without_ca_file_the_mirror_answers_502_saying_the_certificate_failed(
    registry: PrivateRegistry, tmp_path: Path
) -> None:
    mirror = start_mirror(tmp_path / "mirror", registry.url)
    try:
        with httpx.Client(base_url=mirror.url, timeout=REQUEST_TIMEOUT) as client:
            began = time.monotonic()
            manifest = client.get(f"/v2/{REPO}/manifests/1", headers=ACCEPT)
            took = time.monotonic() - began
            blob = client.get(f"/v2/{REPO}/blobs/{registry.blob_digest}")
        log = mirror.log_text()
    finally:
        mirror.stop()
    assert manifest.status_code == 502, manifest.text
    assert took < 10, took  # refused at the handshake: no wait for a timeout
    said = manifest.json()["errors"][0]["message"]
    assert "its certificate could not be verified" in said, said
    assert "unable to get local issuer certificate" in said, said
    assert blob.status_code == 502, blob.text
    assert "its certificate could not be verified" in blob.text
    lines = [line for line in log.splitlines() if "could not be verified" in line]
    assert lines, log[-4000:]
    assert any("ca_file" in line for line in lines), lines
