"""Review findings (s45 r1, after a974e65): content codings of what a pass-through checks.

(1) A manifest asked for by digest is checked by what it decodes to; the client's own
``Accept-Encoding`` went upstream, so a correct manifest sent in ``br`` or ``zstd`` (which
``curl --compressed``, browsers and requests with brotli offer) was a ``502`` "cannot be
checked". A blob by digest in a coding the client asked for went unchecked. Now a checked
answer is asked only in codings the mirror can check it in.
(2) The bounded inflater read a multi-member gzip body (RFC 1952 §2.2; Go, curl and
``gzip.decompress`` read every member) to its first member's end only, the rest dropped: the
right manifest was said to hash to another digest (cache off: ``502``; on: the mirror's own
fetch logged the upstream wrong). Now every member is read, within the same bound.
In-process: the app called as hypercorn calls it, over a mock upstream.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from pathlib import Path

import httpx
import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.upstream.encoding import Inflater
from tests.unit.fakes import Body, reply
from tests.unit.test_routes import mirror

MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 1}
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": MT, "config": {**CONFIG, "digest": "sha256:" + "a" * 64}}
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 16
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def _settings(where: str, tmp: Path) -> dict[str, object]:
    return {"cache.enabled": str(where == "cache").lower(), "cache.dir": str(tmp)}


def _opaque(coding: str, body: bytes) -> bytes:
    """A stand-in for a coding the mirror does not read (the client does)."""
    return f"<{coding}>".encode() + body


def _chosen(accept: str) -> str | None:
    """The coding an upstream picks from ``accept``: the first offered of br, zstd, gzip,
    deflate at a weight above 0 (a server's own preference, as nginx and CDNs have it)."""
    offered = {}
    for item in accept.split(","):
        name, _, params = item.partition(";")
        offered[name.strip().lower()] = params.strip().removeprefix("q=") or "1"
    return next((c for c in ("br", "zstd", "gzip", "deflate") if offered.get(c, "0") != "0"), None)


def _honouring(request: httpx.Request) -> httpx.Response:
    """An upstream answering in the coding it prefers among those it was offered."""
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    blob = "/blobs/" in request.url.path
    content = (b"X" * len(BLOB) if "wrong" in request.url.path else BLOB) if blob else MANIFEST
    coding = _chosen(request.headers.get("accept-encoding", ""))
    if coding is None:
        body = content
    elif coding == "gzip":
        body = gzip.compress(content)
    elif coding == "deflate":
        body = zlib.compress(content)
    else:
        body = _opaque(coding, content)
    headers = [("Content-Type", "application/octet-stream" if blob else MT)]
    headers += [] if coding is None else [("Content-Encoding", coding)]
    return reply(200, Body.of(body, 1000), headers, length=True)


def _decoded(answer_body: bytes, coding: str | None) -> bytes:
    if coding is None:
        return answer_body
    if coding in ("gzip", "deflate"):
        return zlib.decompress(answer_body, 32 + zlib.MAX_WBITS)
    prefix = f"<{coding}>".encode()
    assert answer_body.startswith(prefix)
    return answer_body.removeprefix(prefix)


@pytest.mark.parametrize("where", ["no-cache", "cache"])
@pytest.mark.parametrize(
    "accept", ["gzip, deflate, br", "gzip, deflate, br, zstd", "zstd", "br;q=1, gzip;q=0.5"]
)
async def test_a_correct_manifest_by_digest_to_a_client_taking_br_or_zstd_is_a_200(
    where: str, accept: str, tmp_path: Path
) -> None:
    """Asked upstream in the codings the mirror reads, of those the client offered: the right
    manifest is a ``200``, in a coding the client takes, and no ``br``/``zstd`` went upstream."""
    async with mirror(_honouring, _settings(where, tmp_path)) as m:
        answer = await m.raw(
            "GET", f"/v2/x/y/manifests/{DIGEST}", [("Accept", MT), ("Accept-Encoding", accept)]
        )
        asked = [r.headers.get("accept-encoding", "") for r in m.upstream.requests]
    assert answer.status == 200 and answer.complete, answer.body[:300]
    assert _decoded(answer.body, answer.headers.get("Content-Encoding")) == MANIFEST
    assert answer.headers["Docker-Content-Digest"] == DIGEST
    assert not any("br" in a or "zstd" in a for a in asked), asked


@pytest.mark.parametrize(
    ("accept", "upstream"),
    [
        ("br;q=1.0, gzip;q=0.5, deflate;q=0.2", "gzip;q=0.5, deflate;q=0.2"),
        ("zstd, br", "identity"),
        ("deflate, zstd;q=0.9, gzip;q=0.8", "deflate, gzip;q=0.8"),
        ("br, identity;q=0", "identity"),
        ("gzip;q=0, br", "identity"),
        ("X-GZIP", "X-GZIP"),
        (None, "identity"),
    ],
)
async def test_a_manifest_by_digest_is_asked_in_the_codings_the_mirror_reads(
    accept: str | None, upstream: str
) -> None:
    """What goes upstream: the client's own codings the mirror reads, its order and weights
    kept; ``identity`` when none of them is left at a weight above ``0``."""
    async with mirror(_honouring) as m:
        sent = [] if accept is None else [("Accept-Encoding", accept)]
        answer = await m.raw("GET", f"/v2/x/y/manifests/{DIGEST}", [("Accept", MT), *sent])
        [asked] = [r for r in m.upstream.requests if "/manifests/" in r.url.path]
    assert answer.status == 200
    assert asked.headers.get_list("accept-encoding") == [upstream]


async def test_a_manifest_by_tag_is_asked_in_the_clients_own_codings() -> None:
    """Guard: by tag nothing is checked: the client's own ``Accept-Encoding`` goes, and the
    answer is relayed as it comes."""
    async with mirror(_honouring) as m:
        answer = await m.raw("GET", "/v2/x/y/manifests/latest", [("Accept-Encoding", "br")])
        [asked] = [r for r in m.upstream.requests if "/manifests/" in r.url.path]
    assert asked.headers["accept-encoding"] == "br"
    assert answer.status == 200 and answer.headers["Content-Encoding"] == "br"
    assert _decoded(answer.body, "br") == MANIFEST


@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate, br"])
async def test_a_wrong_blob_by_digest_to_a_client_taking_gzip_is_not_whole(accept: str) -> None:
    """A blob by digest is checked as its bytes come: asked ``identity`` upstream, whatever
    the client takes, so other bytes are cut before their last, never a whole ``200``."""
    async with mirror(_honouring) as m:
        answer = await m.raw(
            "GET", f"/v2/x/wrong/blobs/{BLOB_DIGEST}", [("Accept-Encoding", accept)]
        )
        [asked] = [r for r in m.upstream.requests if "/blobs/" in r.url.path]
    assert asked.headers["accept-encoding"] == "identity"
    assert answer.status == 200 and not answer.complete


async def test_the_right_blob_by_digest_to_a_client_taking_gzip_is_whole() -> None:
    """Guard: the blob itself, asked ``identity``, comes as its bytes: whole, verified."""
    async with mirror(_honouring) as m:
        answer = await m.raw("GET", f"/v2/x/y/blobs/{BLOB_DIGEST}", [("Accept-Encoding", "gzip")])
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert "Content-Encoding" not in answer.headers


# (2) multi-member gzip


def _members(content: bytes, count: int = 3) -> bytes:
    step = -(-len(content) // count)
    return b"".join(gzip.compress(content[i : i + step]) for i in range(0, len(content), step))


def _multi(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    coding = request.url.path.split("/")[3]  # gzip or x-gzip
    headers = [("Content-Type", MT), ("Content-Encoding", coding)]
    return reply(200, Body.of(_members(MANIFEST), 7), headers, length=True)


@pytest.mark.parametrize("where", ["no-cache", "cache"])
@pytest.mark.parametrize("accept", ["gzip", None])
@pytest.mark.parametrize("coding", ["gzip", "x-gzip"])
async def test_a_manifest_in_multi_member_gzip_is_read_whole(
    where: str, accept: str | None, coding: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The right manifest in several gzip members (read in pieces): a ``200`` of it, and
    nothing said of the upstream (the mirror's own fetch, with the cache on, reads it too)."""
    caplog.set_level(logging.INFO)
    assert gzip.decompress(_members(MANIFEST)) == MANIFEST
    async with mirror(_multi, _settings(where, tmp_path)) as m:
        sent = [] if accept is None else [("Accept-Encoding", accept)]
        answer = await m.raw("GET", f"/v2/x/{coding}/manifests/{DIGEST}", [("Accept", MT), *sent])
    assert answer.status == 200 and answer.complete, answer.body[:300]
    coded = answer.headers.get("Content-Encoding")
    body = answer.body if coded is None else gzip.decompress(answer.body)
    assert body == MANIFEST and answer.headers["Docker-Content-Digest"] == DIGEST
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _inflated(inflater: Inflater, body: bytes, room: int, step: int) -> bytes:
    out = b""
    for i in range(0, len(body), step):
        for piece in inflater.feed(body[i : i + step], room - len(out)):
            out += piece
        if len(out) > room:
            return out
    return out + inflater.end(room - len(out))


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_the_inflater_reads_every_gzip_member(step: int) -> None:
    content = bytes(range(256)) * 40
    body = _members(content, 4) + gzip.compress(b"")  # an empty member too
    assert _inflated(Inflater("gzip"), body, 1 << 20, step) == content


@pytest.mark.parametrize("step", [3, 1 << 20])
def test_the_bound_holds_across_members(step: int) -> None:
    """Each member small, together more than the room: stopped one byte past it."""
    body = gzip.compress(b"a" * 600) * 20
    out = _inflated(Inflater("gzip"), body, 5000, step)
    assert 5000 < len(out) <= 5001 + 600


def test_a_member_that_breaks_off_is_broken() -> None:
    body = gzip.compress(b"one") + gzip.compress(b"two")[:-3]
    with pytest.raises(UpstreamUnavailable, match="broke off"):
        _inflated(Inflater("gzip"), body, 1000, 1000)


def test_what_is_no_gzip_member_after_one_is_corrupt() -> None:
    with pytest.raises(UpstreamUnavailable, match="corrupt"):
        _inflated(Inflater("gzip"), gzip.compress(b"one") + b"no gzip member", 1000, 1000)


@pytest.mark.parametrize("wrapped", [True, False], ids=["zlib", "raw"])
def test_data_after_a_deflate_stream_is_corrupt(wrapped: bool) -> None:
    """``deflate`` is one stream: bytes after its end are no part of the content."""
    coder = zlib.compressobj(wbits=zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
    stream = coder.compress(b"content") + coder.flush()
    assert _inflated(Inflater("deflate"), stream, 1000, 1000) == b"content"  # guard
    with pytest.raises(UpstreamUnavailable, match="corrupt"):
        _inflated(Inflater("deflate"), stream + stream, 1000, 1000)


def _always_zipped(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    content = b"X" * len(BLOB) if "wrong" in request.url.path else BLOB
    headers = [("Content-Type", "application/octet-stream"), ("Content-Encoding", "gzip")]
    return reply(200, gzip.compress(content), headers, length=True)


@pytest.mark.parametrize("repo", ["wrong", "right"])
async def test_a_blob_coded_though_asked_identity_is_checked_as_its_bytes(repo: str) -> None:
    """A blob sent gzip-coded though the mirror asked ``identity``: its bytes are checked as
    they come, as a fill's are, whatever the client takes (not relayed unchecked)."""
    async with mirror(_always_zipped) as m:
        answer = await m.raw(
            "GET", f"/v2/x/{repo}/blobs/{BLOB_DIGEST}", [("Accept-Encoding", "gzip")]
        )
    assert answer.status == 200 and not answer.complete
