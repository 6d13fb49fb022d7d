"""Review of the pull path (docxy/pull, docxy/cache/fill.py): what a client is answered, and
how many upstream requests it costs, when the upstream's answer is not the content asked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from tests.unit import fakes
from tests.unit.test_pull_blobs import BLOB, DIGEST, mirror
from tests.unit.turns import until

#: This review's own loopback address (its range: 127.0.0.178-181, ports 9150-9199).
HOST = "127.0.0.178"

MISSING = "sha256:" + "e" * 64

# --- 1. a fill's blob GET answered with the registry's word on the blob ------------------------


class NoSuchBlob:
    """An open registry (no auth) whose blob GETs all get ``status`` with a registry error of
    ``code``; ``blob_gets`` counts them."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code = status, code
        self.blob_gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        self.blob_gets += 1
        error = {"errors": [{"code": self.code, "message": "said by the registry"}]}
        headers = {"Content-Type": "application/json"}
        return fakes.reply(self.status, json.dumps(error).encode(), headers, length=True)


@pytest.mark.parametrize(
    ("status", "code"), [(404, "BLOB_UNKNOWN"), (400, "DIGEST_INVALID"), (404, "NAME_UNKNOWN")]
)
async def test_the_registrys_word_on_a_blob_is_relayed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, code: str
) -> None:
    """The mirror's fill GETs a blob and the registry answers that it has none (404
    BLOB_UNKNOWN), or that the request is bad (400): the client's own GET was then passed
    through, the same GET again (two upstream requests for one client request), with a
    WARNING "fill failed" for the 400. The client gets that answer, its status and the
    registry's JSON error, from the mirror's one request, and no WARNING is logged."""
    upstream = NoSuchBlob(status, code)
    caplog.set_level(logging.INFO)
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get(f"/v2/team/app/blobs/{MISSING}")
        body = await response.get_data(as_text=False)
    assert response.status_code == status
    assert json.loads(body)["errors"][0]["code"] == code
    assert upstream.blob_gets == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == []


class HeldMissing:
    """An open registry where ``team/app`` lacks the blob (404 BLOB_UNKNOWN, its first GET held
    until ``go`` is set) and every other repository has it; ``asked`` lists each blob GET's
    repository."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.asked: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        repo = request.url.path.removeprefix("/v2/").partition("/blobs/")[0]
        self.asked.append(repo)
        if repo == "team/app":
            await self.go.wait()
            return fakes.reply(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}', length=True)
        return fakes.reply(200, BLOB, length=True)


async def test_a_404_in_one_repository_is_not_another_ones_answer(tmp_path: Path) -> None:
    """A client of ``team/other`` joins the fill a client of ``team/app`` started; the registry
    answers that fill 404 (not in ``team/app``). That says nothing of ``team/other``: its
    client's GET still goes upstream (and gets the blob), while ``team/app``'s gets the 404."""
    upstream = HeldMissing()
    async with mirror(tmp_path, upstream) as app:  # type: ignore[arg-type]
        client = app.test_client()
        first = spawn("app", client.get(f"/v2/team/app/blobs/{DIGEST}"))
        await until(lambda: upstream.asked == ["team/app"])
        joined = spawn("other", client.get(f"/v2/team/other/blobs/{DIGEST}"))
        await asyncio.sleep(0.05)
        upstream.go.set()
        missing, found = await first, await joined
        assert missing.status_code == 404
        assert (found.status_code, await found.get_data()) == (200, BLOB)
    assert upstream.asked == ["team/app", "team/other"]


class Registry(BaseHTTPRequestHandler):
    """A loopback registry, no auth: ``/v2/`` is 200; every blob GET is 404 BLOB_UNKNOWN."""

    gets: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/v2/":
            body = b"{}"
            self.send_response(200)
        else:
            type(self).gets.append(self.path)
            body = b'{"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def loopback_registry() -> Iterator[str]:
    """:class:`Registry` on this review's own loopback address and ports."""
    server = None
    for port in range(9150, 9200):
        try:
            server = ThreadingHTTPServer((HOST, port), Registry)
            break
        except OSError:
            continue
    assert server is not None, f"no free port on {HOST} in 9150-9199"
    Registry.gets = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_direct_fills_404_is_relayed_once(
    loopback_registry: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, over the network: a fill made with the direct GET (no test transport) that the
    registry answers 404 is the client's answer, the registry's error with it, in one GET."""
    caplog.set_level(logging.INFO)
    overrides = {
        "upstream.registry": loopback_registry,
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
    }
    app = create_app(load_config(overrides, environ={}), probe=False)
    async with app.test_app():
        assert mirror_state(app).client.direct is not None
        response = await app.test_client().get(f"/v2/team/app/blobs/{MISSING}")
        body = await response.get_data(as_text=False)
    assert response.status_code == 404
    assert json.loads(body)["errors"][0] == {"code": "BLOB_UNKNOWN", "message": "blob unknown"}
    assert len(Registry.gets) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- 2. a manifest passed through whose upstream answer names no digest -------------------------

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 2,
            "digest": "sha256:" + "c" * 64,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


class NoDigest:
    """An open registry whose manifests (any reference) answer :data:`MANIFEST` with no
    ``Docker-Content-Digest``: with its length, or (``chunked``) without one."""

    def __init__(self, chunked: bool = False, media_type: str = OCI_MANIFEST) -> None:
        self.chunked, self.media_type = chunked, media_type
        self.manifest_gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        self.manifest_gets += 1
        headers = {"Content-Type": self.media_type}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(MANIFEST))
            return fakes.reply(200, b"", headers)
        return fakes.reply(200, MANIFEST, headers, length=not self.chunked)


MANIFEST_SHA512 = "sha512:" + hashlib.sha512(MANIFEST).hexdigest()


@pytest.mark.parametrize("reference", ["latest", MANIFEST_DIGEST, MANIFEST_SHA512])
async def test_a_manifest_passed_through_names_its_digest(tmp_path: Path, reference: str) -> None:
    """With the cache off every manifest is passed through. An upstream that names no
    ``Docker-Content-Digest`` (the registry API's SHOULD) sent the client none: the mirror
    holds the whole body (its length is given, under the manifest cap) and names the digest
    computed over those bytes, as Distribution does, for a pull by tag as by digest."""
    upstream = NoDigest()
    async with mirror(tmp_path, upstream, cache__enabled="false") as app:
        response = await app.test_client().get(f"/v2/team/app/manifests/{reference}")
        body = await response.get_data(as_text=False)
    assert (response.status_code, body) == (200, MANIFEST)
    # by digest: in the algorithm asked for (a sha512 pull was told a sha256 it did not ask)
    named = reference if reference.startswith("sha") else MANIFEST_DIGEST
    assert response.headers.get("Docker-Content-Digest") == named
    assert response.headers["Content-Length"] == str(len(MANIFEST))
    assert upstream.manifest_gets == 1


@pytest.mark.parametrize(
    ("chunked", "media_type"),
    [(True, OCI_MANIFEST), (False, SCHEMA1_SIGNED)],
    ids=["chunked", "schema1"],
)
async def test_a_manifest_not_held_whole_gets_no_digest_made_up(
    tmp_path: Path, chunked: bool, media_type: str
) -> None:
    """A manifest passed through with no length (chunked), or a HEAD by tag (no body): the
    mirror holds no whole body to compute a digest over, and names none. Nor for a signed
    schema 1 manifest, whose digest is of its payload, not of all its bytes."""
    upstream = NoDigest(chunked, media_type)
    async with mirror(tmp_path, upstream, cache__enabled="false") as app:
        client = app.test_client()
        response = await client.get("/v2/team/app/manifests/latest")
        assert await response.get_data(as_text=False) == MANIFEST
        head = await client.head("/v2/team/app/manifests/latest")
    assert response.status_code == head.status_code == 200
    assert "Docker-Content-Digest" not in response.headers
    assert "Docker-Content-Digest" not in head.headers


# --- 3. a client that takes no index asks by tag for an image whose tag is one -----------------

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
#: What an old client (or a script) sends: single-platform manifest types only.
SINGLE_ONLY = f"{DOCKER_V2}, {OCI_MANIFEST}"


def _manifest(media_type: str, arch: str) -> bytes:
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2}
    doc = {"schemaVersion": 2, "mediaType": media_type, "layers": []}
    doc["config"] = {**config, "digest": "sha256:" + hashlib.sha256(arch.encode()).hexdigest()}
    return json.dumps(doc).encode()


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


AMD64 = _manifest(DOCKER_V2, "amd64")
ARM64 = _manifest(DOCKER_V2, "arm64")


def _index(media_type: str) -> bytes:
    entries = [
        {
            "mediaType": DOCKER_V2,
            "size": len(body),
            "digest": _digest(body),
            "platform": {"architecture": arch, "os": "linux"},
        }
        for arch, body in (("arm64", ARM64), ("amd64", AMD64))
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()


class Distribution:
    """An open registry answering manifests as Distribution does (registry/handlers/
    manifests.go): ``multi`` is an index of ``index_type`` (linux/arm64, linux/amd64),
    ``single`` the amd64 manifest, every manifest also by digest. By tag, a Docker manifest
    list to a client that takes none is its linux/amd64 manifest; an OCI index to one that
    takes none is 404 MANIFEST_UNKNOWN. ``gets`` counts manifest GETs (the counted pulls);
    HEADs are free."""

    def __init__(self, index_type: str) -> None:
        self.index = _index(index_type)
        self.index_type = index_type
        self.gets = 0
        self.by_digest = {
            _digest(b): (t, b)
            for t, b in [(DOCKER_V2, AMD64), (DOCKER_V2, ARM64), (index_type, self.index)]
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        ref = request.url.path.rpartition("/")[2]
        accept = ",".join(request.headers.get_list("accept"))
        if request.method == "GET":
            self.gets += 1
        if ref == "single":
            media_type, body = DOCKER_V2, AMD64
        elif ref == "multi" and self.index_type in accept:
            media_type, body = self.index_type, self.index
        elif ref == "multi" and self.index_type == DOCKER_LIST:
            media_type, body = DOCKER_V2, AMD64
        elif ref == "multi":
            error = b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "OCI index found"}]}'
            return fakes.reply(404, error, {"Content-Type": "application/json"}, length=True)
        elif ref in self.by_digest:
            media_type, body = self.by_digest[ref]
        else:
            return fakes.reply(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}', length=True)
        headers = {"Content-Type": media_type, "Docker-Content-Digest": _digest(body)}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return fakes.reply(200, b"", headers)
        return fakes.reply(200, body, headers, length=True)


@pytest.mark.parametrize(
    ("index_type", "status", "expected"),
    [(DOCKER_LIST, 200, AMD64), (OCI_INDEX, 404, None)],
    ids=["docker-list", "oci-index"],
)
async def test_a_client_taking_no_index_costs_one_counted_get(
    tmp_path: Path, index_type: str, status: int, expected: bytes | None
) -> None:
    """A client whose Accept names single-platform types only pulls by tag an image whose tag
    is an index. The mirror GETs the index for its cache (a counted pull), cannot serve it to
    that client, and passes the client's GET through: a second counted pull. The client is
    answered as the upstream answers it (Distribution: a manifest list's linux/amd64
    manifest; 404 MANIFEST_UNKNOWN for an OCI index) for one counted GET, the mirror's own
    look being a free HEAD."""
    upstream = Distribution(index_type)
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get(
            "/v2/team/app/manifests/multi", headers={"Accept": SINGLE_ONLY}
        )
        body = await response.get_data(as_text=False)
    assert response.status_code == status
    if expected is not None:
        assert body == expected
        assert response.headers["Content-Type"] == DOCKER_V2
        assert response.headers["Docker-Content-Digest"] == _digest(AMD64)
    else:
        assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert upstream.gets == 1


async def test_a_client_taking_no_index_still_gets_single_images_from_the_cache(
    tmp_path: Path,
) -> None:
    """The same client's pull of a tag that is a single-platform manifest is cached as any
    client's is: one counted GET, then hits; and a client that takes indexes gets the index."""
    upstream = Distribution(DOCKER_LIST)
    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        for _ in range(2):
            response = await client.get(
                "/v2/team/app/manifests/single", headers={"Accept": SINGLE_ONLY}
            )
            assert (response.status_code, await response.get_data()) == (200, AMD64)
        assert upstream.gets == 1
        response = await client.get("/v2/team/app/manifests/multi", headers={"Accept": DOCKER_LIST})
        assert await response.get_data() == upstream.index
