"""Review faults in the upstream client and the pull path (docxy.upstream, docxy.pull), each
shown failing first."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamUnavailable
from docxy.http.app import create_app
from docxy.upstream import direct
from docxy.upstream.client import upstream_ssl_context
from docxy.upstream.direct import DirectSettings
from lab.bed.httpserver import LoopbackServer, QuietHandler
from tests.unit.asgi import call_asgi

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".test"])
def test_a_direct_get_to_a_host_name_the_resolver_refuses_is_unreachable(host: str) -> None:
    """A fill's direct GET redirected to ``http://a..b/`` (an empty label; one over 63
    characters alike): the name lookup's IDNA codec raised UnicodeError, which no handler took
    for a failure to connect, so the fill's task crashed with a traceback in the log and the
    upstream's health heard nothing. It is an unreachable upstream (502), as on httpx's path.
    (The codec refuses the name before any lookup is sent.)"""
    settings = DirectSettings(upstream_ssl_context(), 5.0, 5.0)
    with pytest.raises(UpstreamUnavailable, match=r"cannot reach the upstream registry"):
        direct.get(settings, f"http://{host}:9000/blob", [])


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 2,
            "digest": "sha256:" + "4" * 64,
        },
        "layers": [],
    },
    indent=3,
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def zipping_registry(request: httpx.Request) -> httpx.Response:
    """An open registry behind a proxy that gzips JSON for whoever asks (HEAD included: the
    length is of the zipped body a GET would get)."""
    if request.url.path == "/v2/":
        return httpx.Response(200)
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}
    body = MANIFEST
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(MANIFEST)
        headers["Content-Encoding"] = "gzip"
    headers["Content-Length"] = str(len(body))
    return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)


async def test_a_manifest_head_the_cache_cannot_answer_says_the_manifests_own_length(
    tmp_path: Path,
) -> None:
    """A client's HEAD of a tag not cached is answered from the mirror's own upstream HEAD,
    which the shared client made asking for gzip: a registry that zips answered with the
    zipped length, and the mirror said that length, not the manifest's (the GET by digest
    that follows sent more bytes than the HEAD's descriptor said). Its HEAD asks for identity."""
    config = load_config(
        {"upstream.registry": "https://registry.test", "cache.dir": str(tmp_path / "cache")},
        environ={},
    )
    app = create_app(config, probe=False, transport=httpx.MockTransport(zipping_registry))
    accept = [("Accept", OCI_MANIFEST)]
    async with app.test_app():
        head = await call_asgi(
            app, "HEAD", "/v2/team/app/manifests/latest", host="mirror.test", headers=accept
        )
        path = f"/v2/team/app/manifests/{MANIFEST_DIGEST}"
        got = await call_asgi(app, "GET", path, host="mirror.test", headers=accept)
    assert (head.status, got.status) == (200, 200)
    assert got.body == MANIFEST
    assert head.headers["Docker-Content-Digest"] == MANIFEST_DIGEST
    assert head.headers["Content-Length"] == str(len(MANIFEST))


LAYER = gzip.compress(os.urandom(300_000))  # a layer: gzip bytes, its digest theirs
LAYER_DIGEST = "sha256:" + hashlib.sha256(LAYER).hexdigest()


class BreaksOff(httpx.AsyncByteStream):
    """``data``, broken off after its first ``upto`` bytes (a reset connection)."""

    def __init__(self, data: bytes, upto: int) -> None:
        self.data, self.upto = data, upto

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.upto]
        if self.upto < len(self.data):
            raise httpx.ReadError("connection reset by peer")


def labelled_storage(cut: int | None) -> httpx.MockTransport:
    """An open registry whose storage labels the layer ``Content-Encoding: gzip`` (S3 object
    metadata: sent whatever the request asked); its first GET breaks off after ``cut`` bytes."""
    gets: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        ranged = request.headers.get("range")
        gets.append(ranged)
        start = int(ranged.removeprefix("bytes=").rstrip("-")) if ranged else 0
        rest = LAYER[start:]
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(rest))}
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{len(LAYER) - 1}/{len(LAYER)}"
        upto = cut if cut is not None and len(gets) == 1 else len(rest)
        return httpx.Response(206 if ranged else 200, headers=headers, stream=BreaksOff(rest, upto))

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("cut", [None, 100_000], ids=["whole", "resumed"])
async def test_a_layer_its_storage_labels_gzip_is_filled_as_its_bytes(
    tmp_path: Path, cut: int | None
) -> None:
    """The fill's GET through httpx (a fill retried after a 401, and every resume of a body
    that broke off, the direct path's too) read the body decoded: a layer sent with
    ``Content-Encoding: gzip`` was unzipped into other bytes ("length mismatch: expected
    300113 bytes, got 300000"), its client cut; resumed mid-stream it could not even be
    unzipped. http.client's direct path reads it raw, as the blob is; so does httpx's now."""
    config = load_config(
        {"upstream.registry": "https://registry.test", "cache.dir": str(tmp_path / "cache")},
        environ={},
    )
    app = create_app(config, probe=False, transport=labelled_storage(cut))
    async with app.test_app():
        path = f"/v2/team/app/blobs/{LAYER_DIGEST}"
        answer = await call_asgi(app, "GET", path, host="mirror.test")
    assert (answer.status, answer.complete) == (200, True)
    assert answer.body == LAYER


class HeldRedirect(QuietHandler):
    """``/moved``: a 307 of no stated length (its body runs to the close) on a connection the
    server then holds open, until the test ends; ``/blob``: the blob."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/moved":
            self.send_response(307)
            self.send_header("Location", "/blob")
            self.end_headers()
            self.wfile.flush()
            self.owner().release.wait(45.0)
            self.close_connection = True
            return
        self.send_bytes(200, b"blob", "application/octet-stream")


class HeldRedirectServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(HeldRedirect)
        self.release = threading.Event()


def test_a_redirect_whose_connection_will_close_is_followed_at_once() -> None:
    """The direct GET read a redirect's body off to keep its connection, even when the answer
    said the connection will close (no stated length: the body runs to the close): it waited
    for a close the server did not make, the whole read timeout (60 s by default), on every
    blob fill from such a registry. Such a connection is not kept, so nothing is read."""
    server = HeldRedirectServer()
    server.start()
    # A read timeout far past the bound below: a slow machine does not fail the test, the
    # old wait for the close (the whole timeout) does.
    settings = DirectSettings(upstream_ssl_context(), 5.0, 30.0)
    try:
        started = time.monotonic()
        answer = direct.get(settings, server.url + "/moved", [])
        waited = time.monotonic() - started
        assert answer.status == 200 and answer.body.read(10) == b"blob"
        answer.close()
    finally:
        server.release.set()
        server.stop()
        settings.idle.close()
    assert waited < 15.0, f"followed after {waited:.1f}s"
