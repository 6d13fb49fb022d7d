"""skopeo, a real registry client, copies images out of the mirror into OCI layouts."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.bed import Bed
from lab.bed.images import sha256_digest
from lab.mirror import Mirror
from tests.e2e.skopeo import run_skopeo

pytestmark = pytest.mark.e2e

TIMEOUT = 180


def skopeo_copy(
    mirror: Mirror, reference: str, dest: Path, *flags: str, home: Path
) -> subprocess.CompletedProcess[str]:
    return run_skopeo(
        home,
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        *flags,
        f"docker://127.0.0.1:{mirror.port}/{reference}",
        f"oci:{dest}",
    )


def read_layout(layout: Path) -> tuple[str, dict[str, bytes]]:
    """The digest index.json points at, and every blob by digest (each checked)."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    blobs: dict[str, bytes] = {}
    for path in (layout / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert sha256_digest(data) == f"sha256:{path.name}"
        blobs[f"sha256:{path.name}"] = data
    digest: str = entry["digest"]
    return digest, blobs


def image_text(manifest: bytes, blobs: dict[str, bytes]) -> str:
    """/docxy-test.txt from the image's last layer."""
    last = json.loads(manifest)["layers"][-1]["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blobs[last]))) as tar:
        member = tar.extractfile("docxy-test.txt")
        assert member is not None
        return member.read().decode()


def test_copy_single_platform_from_index(mirror: Mirror, bed: Bed, tmp_path: Path) -> None:
    image = bed.images["library/hello"]
    result = skopeo_copy(
        mirror, "library/hello:latest", tmp_path / "oci", "--src-no-creds", home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    digest, blobs = read_layout(tmp_path / "oci")
    assert digest == image.amd64_digest
    assert blobs[digest] == image.children[digest]
    assert image_text(blobs[digest], blobs) == image.content
    assert bed.front_log.cdn_fetches(), "blobs should have come through the CDN"


def test_copy_all_platforms_keeps_the_index(mirror: Mirror, bed: Bed, tmp_path: Path) -> None:
    image = bed.images["library/hello"]
    result = skopeo_copy(
        mirror, "hello:latest", tmp_path / "oci", "--all", "--src-no-creds", home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    digest, blobs = read_layout(tmp_path / "oci")
    assert digest == image.digest
    assert blobs[digest] == image.manifest
    for child_digest, child in image.children.items():
        assert blobs[child_digest] == child


def test_copy_private_with_credentials(mirror: Mirror, bed: Bed, tmp_path: Path) -> None:
    image = bed.images["docxytest/private"]
    creds = f"--src-creds={bed.user}:{bed.password}"
    result = skopeo_copy(mirror, "docxytest/private:latest", tmp_path / "oci", creds, home=tmp_path)
    assert result.returncode == 0, result.stderr
    digest, blobs = read_layout(tmp_path / "oci")
    # skopeo rewrites a Docker v2 manifest and its config as OCI; the layers stay the same.
    layers = tuple(layer["digest"] for layer in json.loads(blobs[digest])["layers"])
    assert layers == image.blobs[1:]
    assert image_text(blobs[digest], blobs) == image.content
    assert any(r.basic_user == bed.user for r in bed.tokens.log), "token not asked as alice"


def test_copy_private_anonymously_fails(mirror: Mirror, tmp_path: Path) -> None:
    result = skopeo_copy(
        mirror, "docxytest/private:latest", tmp_path / "oci", "--src-no-creds", home=tmp_path
    )
    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower() or "denied" in result.stderr.lower()
