"""Build small, runnable container images in pure Python and push them to the bed's registry.

Every amd64 image has a layer with the static busybox (/bin/busybox, /bin/sh and /bin/cat as
symlinks) and a layer with /docxy-test.txt, whose text names the image and its platform, so
`docker run --rm --network none IMAGE cat /docxy-test.txt` proves which image ran. Layers are
built deterministically (fixed mtimes and owners, gzip without timestamp).

    library/hello:latest      OCI image index: linux/amd64 + linux/arm64 (OCI media types)
    docxytest/multi:1         Docker v2 manifest, 3 layers (busybox, 2 MiB of noise, text)
    docxytest/private:latest  Docker v2 manifest; only authenticated users may pull it
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx

BUSYBOX = Path("/bin/busybox")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str


@dataclass(frozen=True)
class TestImage:
    """What a test needs to know about a seeded image."""

    __test__ = False  # not a pytest test class

    repo: str
    tag: str
    digest: str
    content: str
    private: bool
    media_type: str = DOCKER_MANIFEST
    manifest: bytes = b""
    platforms: dict[str, str] = field(default_factory=dict)
    """For an index: "os/arch" -> digest of that platform's manifest."""
    blobs: tuple[str, ...] = ()
    """Config and layer digests of the linux/amd64 image."""
    children: dict[str, bytes] = field(default_factory=dict)
    """For an index: digest -> manifest bytes of each platform image."""

    @property
    def amd64_digest(self) -> str:
        return self.platforms.get("linux/amd64", self.digest)

    @property
    def short_repo(self) -> str:
        """The name a user types: "hello" for "library/hello"."""
        return self.repo.removeprefix("library/")


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_layer(
    files: dict[str, bytes], symlinks: dict[str, str] | None = None, oci: bool = False
) -> Layer:
    """A gzipped tar layer; `files` maps path -> content (paths under bin/ are executable)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(Path(p).parent) for p in [*files, *(symlinks or {})]} - {"."})
        for directory in directories:
            tar.addfile(_tar_info(directory, tarfile.DIRTYPE, 0o755))
        for path, content in sorted(files.items()):
            mode = 0o755 if path.startswith("bin/") else 0o644
            tar.addfile(_tar_info(path, tarfile.REGTYPE, mode, len(content)), io.BytesIO(content))
        for path, target in sorted((symlinks or {}).items()):
            tar.addfile(_tar_info(path, tarfile.SYMTYPE, 0o777, link=target))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    return Layer(Blob(OCI_LAYER if oci else DOCKER_LAYER, compressed), sha256_digest(tar_bytes))


@functools.cache
def busybox_layer(oci: bool) -> Layer:
    return make_layer(
        {"bin/busybox": BUSYBOX.read_bytes()}, {"bin/sh": "busybox", "bin/cat": "busybox"}, oci
    )


def noise(size: int, seed: str) -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@dataclass(frozen=True)
class BuiltImage:
    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    platform: dict[str, str]


def build_image(
    layers: list[Layer], arch: str, oci: bool, variant: str | None = None
) -> BuiltImage:
    platform = {"architecture": arch, "os": "linux"} | ({"variant": variant} if variant else {})
    config = platform | {
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "docxy test bed"}],
    }
    config_blob = Blob(OCI_CONFIG if oci else DOCKER_CONFIG, json.dumps(config).encode())
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    manifest_blob = Blob(media_type, json.dumps(manifest, indent=3).encode())
    return BuiltImage(manifest_blob, config_blob, tuple(layers), platform)


def build_index(images: list[BuiltImage], oci: bool) -> Blob:
    media_type = OCI_INDEX if oci else DOCKER_LIST
    entries = [image.manifest.descriptor() | {"platform": image.platform} for image in images]
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Blob(media_type, json.dumps(index, indent=3).encode())


def text_layer(text: str, oci: bool) -> Layer:
    return make_layer({"docxy-test.txt": text.encode()}, oci=oci)


TokenFn = Callable[[str], str]


class Pusher:
    """Pushes blobs and manifests straight to the registry with an admin token."""

    def __init__(self, registry_url: str, token_for: TokenFn) -> None:
        self.registry_url = registry_url
        self._token_for = token_for
        self._client = httpx.Client(timeout=httpx.Timeout(60.0))

    def close(self) -> None:
        self._client.close()

    def _headers(self, repo: str) -> dict[str, str]:
        # A token minted for each request: the bed lives for the whole session, longer than a
        # token (a kept one expired under tests that push late in a full run).
        return {"Authorization": f"Bearer {self._token_for(repo)}"}

    def _start_upload(self, repo: str) -> str:
        url = f"{self.registry_url}/v2/{repo}/blobs/uploads/"
        response = self._client.post(url, headers=self._headers(repo))
        _expect(response, 202)
        return urljoin(url, response.headers["Location"])

    def _finish_upload(self, repo: str, location: str, digest: str, data: bytes = b"") -> None:
        headers = self._headers(repo) | {"Content-Type": "application/octet-stream"}
        url = httpx.URL(location).copy_add_param("digest", digest)
        response = self._client.put(url, content=data, headers=headers)
        _expect(response, 201)

    def has_blob(self, repo: str, digest: str) -> bool:
        url = f"{self.registry_url}/v2/{repo}/blobs/{digest}"
        return self._client.head(url, headers=self._headers(repo)).status_code == 200

    def push_blob(self, repo: str, blob: Blob) -> str:
        if not self.has_blob(repo, blob.digest):
            self._finish_upload(repo, self._start_upload(repo), blob.digest, blob.data)
        return blob.digest

    def push_stream(self, repo: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Upload a blob of any size from `chunks` without holding it; (digest, size)."""
        hasher = hashlib.sha256()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        location = self._start_upload(repo)
        headers = self._headers(repo) | {"Content-Type": "application/octet-stream"}
        response = self._client.patch(location, content=counted(), headers=headers)
        _expect(response, 202)
        digest = "sha256:" + hasher.hexdigest()
        self._finish_upload(repo, urljoin(location, response.headers["Location"]), digest)
        return digest, size

    def push_manifest(self, repo: str, reference: str, manifest: Blob) -> str:
        url = f"{self.registry_url}/v2/{repo}/manifests/{reference}"
        headers = self._headers(repo) | {"Content-Type": manifest.media_type}
        response = self._client.put(url, content=manifest.data, headers=headers)
        _expect(response, 201)
        return manifest.digest

    def push_image(self, repo: str, image: BuiltImage, reference: str | None = None) -> str:
        for blob in [image.config, *(layer.blob for layer in image.layers)]:
            self.push_blob(repo, blob)
        return self.push_manifest(repo, reference or image.manifest.digest, image.manifest)


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code} (wanted {status}): {response.text[:500]}"
        )


def generated_chunks(size: int, seed: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """`size` deterministic bytes in chunks; every chunk differs (its index is stamped in)."""
    base = noise(chunk_size, f"big/{seed}")
    index = 0
    remaining = size
    while remaining > 0:
        chunk = (index.to_bytes(8, "big") + base[8:])[: min(chunk_size, remaining)]
        remaining -= len(chunk)
        index += 1
        yield chunk


def generated_digest(size: int, seed: int = 0) -> str:
    hasher = hashlib.sha256()
    for chunk in generated_chunks(size, seed):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _seed_single(
    pusher: Pusher, repo: str, tag: str, extra: list[Layer], private: bool
) -> TestImage:
    content = f"docxy test image {repo}:{tag} linux/amd64\n"
    image = build_image([busybox_layer(False), *extra, text_layer(content, False)], "amd64", False)
    digest = pusher.push_image(repo, image, tag)
    blobs = (image.config.digest, *(layer.blob.digest for layer in image.layers))
    return TestImage(
        repo, tag, digest, content, private, DOCKER_MANIFEST, image.manifest.data, blobs=blobs
    )


def _seed_index(pusher: Pusher, repo: str, tag: str) -> TestImage:
    images: dict[str, BuiltImage] = {}
    contents: dict[str, str] = {}
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        contents[arch] = f"docxy test image {repo}:{tag} linux/{arch}\n"
        layers = [busybox_layer(True), text_layer(contents[arch], True)]
        images[arch] = build_image(layers, arch, True, variant)
        pusher.push_image(repo, images[arch])
    index = build_index(list(images.values()), True)
    digest = pusher.push_manifest(repo, tag, index)
    amd64 = images["amd64"]
    return TestImage(
        repo,
        tag,
        digest,
        contents["amd64"],
        False,
        OCI_INDEX,
        index.data,
        platforms={f"linux/{arch}": image.manifest.digest for arch, image in images.items()},
        blobs=(amd64.config.digest, *(layer.blob.digest for layer in amd64.layers)),
        children={image.manifest.digest: image.manifest.data for image in images.values()},
    )


def seed_images(pusher: Pusher) -> dict[str, TestImage]:
    """Push the standard test images; keyed by repo."""
    if not os.access(BUSYBOX, os.R_OK):
        raise RuntimeError(f"{BUSYBOX} missing: install the Debian package busybox-static")
    seeded = [
        _seed_index(pusher, "library/hello", "latest"),
        _seed_single(
            pusher,
            "docxytest/multi",
            "1",
            [make_layer({"data/noise.bin": noise(2 << 20, "multi")})],
            False,
        ),
        _seed_single(pusher, "docxytest/private", "latest", [], True),
    ]
    return {image.repo: image for image in seeded}
