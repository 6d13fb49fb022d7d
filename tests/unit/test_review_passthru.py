"""Review finding: a blob passed through (the cache off, a blob too large to cache, a failing
disk, a private repository) whose upstream sent bytes that are not the digest asked for was
relayed as a whole ``200`` (wrong bytes, or none at all, stamped with the asked
``Docker-Content-Digest``). A fill's clients were never given such an answer (cut before the
last byte; an empty ``200`` is ``502``); a pass-through's now are not either. In-process: the
app called as hypercorn calls it, over a mock upstream.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.core.digests import parse_digest
from tests.unit.fakes import Body, reply
from tests.unit.test_routes import mirror

BLOB = bytes(range(256)) * 16
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()

#: What the upstream sends for the blob, by the test's mode (the repository's last component).
BODIES = {
    "good": BLOB,
    "same": b"X" * len(BLOB),  # the blob's length, other bytes
    "short": BLOB[:2000],
    "long": BLOB + b"Y" * 2000,
    "empty": b"",
}

#: The cache off; on, with a blob too large for it (a pass-through, ``cache-full``).
CACHE_OFF: dict[str, object] = {"cache.enabled": "false"}
TOO_LARGE: dict[str, object] = {"cache.enabled": "true", "cache.max_size": "1000"}
SETTINGS = {"no-cache": CACHE_OFF, "too-large": TOO_LARGE}


def _settings(where: str, tmp: Path) -> dict[str, object]:
    return {**SETTINGS[where], "cache.dir": str(tmp)}


def _upstream(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    mode, chunked = request.url.path.split("/")[3], False
    if mode.endswith("-chunked"):  # no Content-Length: read to its end
        mode, chunked = mode.removesuffix("-chunked"), True
    body = BODIES[mode]
    headers = [("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", DIGEST)]
    if request.method == "HEAD":
        return reply(200, b"", [*headers, ("Content-Length", str(len(body)))])
    return reply(200, Body.of(body, 1000) if body else Body(), headers, length=not chunked)


@pytest.mark.parametrize("where", sorted(SETTINGS))
@pytest.mark.parametrize("mode", ["same", "short", "long", "same-chunked", "empty-chunked"])
async def test_wrong_bytes_passed_through_are_cut(where: str, mode: str, tmp_path: Path) -> None:
    """Bytes that are not the blob: the client is cut before the last one, never given a whole
    ``200`` (Docker sees a short read and retries); or, before any went out, a ``502``."""
    async with mirror(_upstream, _settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/blobs/{DIGEST}")
    if answer.status == 502:  # none sent yet (an empty fill's, too large to cache or not)
        assert json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE"
        return
    assert answer.status in (0, 200)
    assert not answer.complete
    assert len(answer.body) < len(BODIES[mode.removesuffix("-chunked")]) or not answer.body


@pytest.mark.parametrize("where", sorted(SETTINGS))  # too large: not, its fill's 502
async def test_an_empty_200_passed_through_is_a_502(where: str, tmp_path: Path) -> None:
    """An upstream ``200`` of no bytes (``Content-Length: 0``) for a blob that is not empty is
    known wrong before a byte goes out: ``502 UNAVAILABLE`` in the registry's error format."""
    async with mirror(_upstream, _settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/empty/blobs/{DIGEST}")
    assert answer.status == 502 and answer.complete
    assert json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize("where", sorted(SETTINGS))
@pytest.mark.parametrize("mode", ["good", "good-chunked"])
async def test_the_blob_passed_through_is_whole(where: str, mode: str, tmp_path: Path) -> None:
    """Guard: the blob itself is relayed whole, its digest named."""
    async with mirror(_upstream, _settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/blobs/{DIGEST}")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert answer.headers["Docker-Content-Digest"] == DIGEST


def _empty_blob(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    return reply(200, b"", {"Content-Type": "application/octet-stream", "Content-Length": "0"})


async def test_the_empty_blob_passed_through_is_a_200() -> None:
    """Guard: the empty blob's own digest, empty, is the blob (a whole ``200``)."""
    async with mirror(_empty_blob) as m:
        answer = await m.raw("GET", f"/v2/x/y/blobs/{EMPTY}")
    assert answer.status == 200 and answer.complete and answer.body == b""


def _ranged(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    part = [("Content-Range", f"bytes 0-9/{len(BLOB)}"), ("Content-Length", "10")]
    return reply(206, BLOB[:10], [("Content-Type", "application/octet-stream"), *part])


async def test_a_206_passed_through_is_relayed_whole() -> None:
    """Guard: a part of the blob says nothing of its digest: relayed as it comes."""
    async with mirror(_ranged) as m:
        answer = await m.raw("GET", f"/v2/x/y/blobs/{DIGEST}", [("Range", "bytes=0-9")])
    assert answer.status == 206 and answer.complete and answer.body == BLOB[:10]


def _zipped(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    headers = [("Content-Type", "application/octet-stream"), ("Content-Encoding", "gzip")]
    return reply(200, gzip.compress(BLOB), headers, length=True)


async def test_a_coding_the_client_asked_for_is_not_asked_upstream() -> None:
    """A blob is asked ``identity`` whatever coding the client takes (s45 r1; it was relayed
    whole, unchecked, in the client's coding): a coding sent all the same is verified as its
    bytes, as below, and gzip bytes are not the blob."""
    async with mirror(_zipped) as m:
        answer = await m.raw("GET", f"/v2/x/y/blobs/{DIGEST}", [("Accept-Encoding", "gzip")])
        [asked] = [r for r in m.upstream.requests if "/blobs/" in r.url.path]
    assert asked.headers["accept-encoding"] == "identity"
    assert answer.status == 200 and not answer.complete


async def test_a_coding_the_mirror_did_not_ask_for_is_verified() -> None:
    """A client that asked for no coding gets the body as it comes (the mirror asked for
    ``identity``), verified as such, as a fill's is: gzip bytes are not the blob."""
    async with mirror(_zipped) as m:
        answer = await m.raw("GET", f"/v2/x/y/blobs/{DIGEST}")
    assert answer.status == 200 and not answer.complete


# Manifests by digest, and HEADs, passed through (review s44, after the blobs above): a
# manifest asked by digest was relayed as a whole ``200`` whatever its bytes, labelled with
# the digest of the bytes sent (or the upstream's word for it); a ``HEAD`` saying
# ``Content-Length: 0`` for a digest that is not the empty content's was relayed as it came.

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
#: Over the manifest cap (MAX_SMALL_BODY): not held whole, relayed as it comes.
LARGE = MANIFEST[:-1] + b" " * (4 * 1024 * 1024) + b"}"
LARGE_DIGEST = "sha256:" + hashlib.sha256(LARGE).hexdigest()
OTHER = MANIFEST.replace(b"2", b"3")

#: What the upstream sends for a manifest, by the test's mode (the repository's last
#: component); ``named-``: with a ``Docker-Content-Digest`` naming the digest asked.
MANIFESTS = {
    "good": MANIFEST,
    "other": OTHER,
    "empty": b"",
    "large": LARGE,
    "large-other": LARGE.replace(b"2", b"3", 1),
}


def _manifests(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    mode, chunked = request.url.path.split("/")[3], False
    if mode.endswith("-chunked"):
        mode, chunked = mode.removesuffix("-chunked"), True
    headers = [("Content-Type", MANIFEST_TYPE)]
    if mode.startswith("named-"):
        mode = mode.removeprefix("named-")
        asked = request.url.path.rsplit("/", 1)[1]
        headers.append(("Docker-Content-Digest", asked if asked.startswith("sha256:") else ""))
    body = MANIFESTS[mode]
    if request.method == "HEAD":
        return reply(200, b"", [*headers, ("Content-Length", str(len(body)))])
    return reply(200, Body.of(body, 1000) if body else Body(), headers, length=not chunked)


#: The cache off; on (the mirror's own fetch finds the digest wrong, and passes it through).
MANIFEST_SETTINGS: dict[str, dict[str, object]] = {
    "no-cache": CACHE_OFF,
    "cache": {"cache.enabled": "true"},
}


def _manifest_settings(where: str, tmp: Path) -> dict[str, object]:
    return {**MANIFEST_SETTINGS[where], "cache.dir": str(tmp)}


@pytest.mark.parametrize("where", sorted(MANIFEST_SETTINGS))
@pytest.mark.parametrize("mode", ["other", "named-other", "empty", "named-empty"])
async def test_a_wrong_manifest_by_digest_is_a_502(
    where: str, mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest held whole (within the cap) whose bytes are not the digest asked for is
    ``502 UNAVAILABLE`` in the registry's error format, saying so, one WARNING line: never a
    whole ``200`` of another manifest, whatever digest the upstream named."""
    async with mirror(_manifests, _manifest_settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/{MANIFEST_DIGEST}")
    assert answer.status == 502 and answer.complete
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAVAILABLE" and MANIFEST_DIGEST in error["message"]
    warned = [r for r in caplog.records if r.name == "docxy.http.routes"]
    assert [r.levelname for r in warned] == ["WARNING"]


@pytest.mark.parametrize("where", sorted(MANIFEST_SETTINGS))
@pytest.mark.parametrize("mode", ["other-chunked", "named-other-chunked", "large-other"])
async def test_a_wrong_manifest_not_held_whole_is_cut(
    where: str, mode: str, tmp_path: Path
) -> None:
    """One the mirror does not hold whole (no length, or over the cap) is verified as it is
    relayed, as a blob is: cut before its last byte."""
    digest = LARGE_DIGEST if mode.startswith("large") else MANIFEST_DIGEST
    async with mirror(_manifests, _manifest_settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/{digest}")
    assert answer.status in (0, 200) and not answer.complete


@pytest.mark.parametrize("where", sorted(MANIFEST_SETTINGS))
@pytest.mark.parametrize("mode", ["good", "named-good", "good-chunked", "large", "named-large"])
async def test_the_manifest_by_digest_is_whole(where: str, mode: str, tmp_path: Path) -> None:
    """Guard: the manifest itself (Docker Hub's answer: its digest named, or not) is relayed
    whole, named by its digest."""
    body, digest = (LARGE, LARGE_DIGEST) if "large" in mode else (MANIFEST, MANIFEST_DIGEST)
    async with mirror(_manifests, _manifest_settings(where, tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/{digest}")
    assert answer.status == 200 and answer.complete and answer.body == body
    if mode != "good-chunked" and mode != "large":  # none named, none held whole: none made up
        assert answer.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("mode", ["other", "good"])
async def test_a_manifest_by_tag_is_relayed_as_before(mode: str) -> None:
    """Guard: by tag there is no digest to check: the bytes are relayed, named by their own
    digest (held whole), or by the upstream's word."""
    async with mirror(_manifests) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/latest")
        named = await m.raw("GET", f"/v2/x/named-{mode}/manifests/latest")
    body = MANIFESTS[mode]
    assert answer.status == 200 and answer.complete and answer.body == body
    assert answer.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert named.status == 200 and named.complete and named.body == body
    assert named.headers["Docker-Content-Digest"] == ""  # the upstream's, as it came


@pytest.mark.parametrize(
    "path", [f"/v2/x/empty/blobs/{DIGEST}", f"/v2/x/empty/manifests/{MANIFEST_DIGEST}"]
)
async def test_an_empty_head_by_digest_is_a_502(path: str) -> None:
    """A ``HEAD`` answered ``Content-Length: 0`` for a digest that is not the empty content's
    is known wrong: ``502 UNAVAILABLE``, as the ``GET`` is."""
    handler = _upstream if "/blobs/" in path else _manifests
    async with mirror(handler) as m:
        answer = await m.raw("HEAD", path)
    assert answer.status == 502


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/x/good/blobs/{DIGEST}",
        f"/v2/x/good/manifests/{MANIFEST_DIGEST}",
        "/v2/x/empty/manifests/latest",
        f"/v2/x/y/blobs/{EMPTY}",
    ],
)
async def test_a_head_with_its_length_is_relayed(path: str) -> None:
    """Guard: a ``HEAD`` of the content's own length (the empty blob's ``0``, a tag's: no
    digest to check) is relayed as it comes."""
    handler = _empty_blob if EMPTY in path else _upstream if "/blobs/" in path else _manifests
    async with mirror(handler) as m:
        answer = await m.raw("HEAD", path)
    assert answer.status == 200 and answer.complete


class _Reads(httpx.AsyncByteStream):
    def __init__(self, *reads: bytes) -> None:
        self.reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            yield read


@pytest.mark.parametrize("announced", [True, False])
async def test_a_verified_relay_splits_only_the_read_that_completes_the_blob(
    announced: bool,
) -> None:
    """Review of ccd42c9: holding back each read's last byte sent every read in two (a
    second ``send`` and a copy each: 2055 sends for 1029 reads). With a length announced,
    reads before the last go out whole; without one, the held byte rides with the next."""
    from docxy.http.responses import _relayed

    reads = [b"a" * 1000, b"b" * 1000, b"c" * 1000]
    whole = b"".join(reads)
    headers = {"Content-Length": str(len(whole))} if announced else {}
    answer = httpx.Response(200, headers=headers, stream=_Reads(*reads))
    digest = parse_digest("sha256:" + hashlib.sha256(whole).hexdigest())
    sent = [out async for out in _relayed(answer, lambda: None, digest)]
    assert b"".join(sent) == whole
    assert len(sent) == len(reads) + 1  # one split: the completing read's last byte
    if announced:
        assert sent[:2] == reads[:2]


# Manifests by digest in a content coding (review s44 r4, after 8a082f5): one the upstream sent
# gzip-encoded to a client asking ``Accept-Encoding: gzip`` (Go's default: docker, containerd,
# skopeo, crane) was not checked at all, other bytes relayed as a whole ``200`` (with the cache
# on too: its fetch found them wrong and passed the request through); the right one, sent
# gzip-encoded when the mirror asked ``identity``, was hashed as its gzip bytes and cut.
#: What the upstream sends, by the test's mode: ``gz-``/``deflate-`` the coding, then the
#: manifest (``good``, ``other``), or ``corrupt`` (no such coding of anything) or ``bomb``
#: (a small gzip of more than the cap); ``-chunked``: no Content-Length.
CODED = {"good": MANIFEST, "other": OTHER, "bomb": MANIFEST[:-1] + b" " * (5 << 20) + b"}"}


def _coded(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        return reply(200, b'{"token": "t0ken"}', {"Content-Type": "application/json"})
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    mode, chunked = request.url.path.split("/")[3], False
    if mode.endswith("-chunked"):
        mode, chunked = mode.removesuffix("-chunked"), True
    coding, what = mode.split("-", 1)
    if what == "corrupt":
        body = b"\x1f\x8b\x08\x00 this is no gzip stream at all"
    elif coding == "gzip":
        body = gzip.compress(CODED[what])
    else:
        body = zlib.compress(CODED[what])
    headers = [("Content-Type", MANIFEST_TYPE), ("Content-Encoding", coding)]
    return reply(200, Body.of(body, 1000), headers, length=not chunked)


GZIP = [("Accept-Encoding", "gzip")]


@pytest.mark.parametrize("where", sorted(MANIFEST_SETTINGS))
@pytest.mark.parametrize("mode", ["gzip-other", "gzip-other-chunked", "deflate-other"])
@pytest.mark.parametrize("accepts", [True, False], ids=["gzip-client", "no-coding-client"])
async def test_a_wrong_encoded_manifest_by_digest_is_a_502(
    where: str, mode: str, accepts: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another manifest, content-coded, for a digest: held whole and decoded, its decoded
    bytes hashed: ``502 UNAVAILABLE`` saying so, one WARNING line, as an identity one is."""
    async with mirror(_coded, _manifest_settings(where, tmp_path)) as m:
        path = f"/v2/x/{mode}/manifests/{MANIFEST_DIGEST}"
        answer = await m.raw("GET", path, GZIP if accepts else [])
    assert answer.status == 502 and answer.complete
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAVAILABLE" and MANIFEST_DIGEST in error["message"]
    warned = [r for r in caplog.records if r.name == "docxy.http.routes"]
    assert [r.levelname for r in warned] == ["WARNING"]


@pytest.mark.parametrize("mode", ["gzip-good", "gzip-good-chunked", "deflate-good"])
async def test_the_encoded_manifest_to_a_client_asking_no_coding_is_decoded(
    mode: str, tmp_path: Path
) -> None:
    """The right manifest, sent coded though the mirror asked ``identity`` (the client asked
    for no coding): the client gets the manifest, decoded, whole, its own length."""
    async with mirror(_coded, _manifest_settings("no-cache", tmp_path)) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/{MANIFEST_DIGEST}")
    assert answer.status == 200 and answer.complete and answer.body == MANIFEST
    assert "Content-Encoding" not in answer.headers
    assert answer.headers["Content-Length"] == str(len(MANIFEST))
    assert answer.headers["Docker-Content-Digest"] == MANIFEST_DIGEST


@pytest.mark.parametrize(
    ("where", "accepts"),
    [("no-cache", True), ("cache", True), ("cache", False)],  # (no-cache, False): above
    ids=["no-cache-gzip-client", "cache-gzip-client", "cache-no-coding-client"],
)
@pytest.mark.parametrize("mode", ["gzip-good", "gzip-good-chunked", "deflate-good"])
async def test_the_encoded_manifest_by_digest_is_whole(
    where: str, mode: str, accepts: bool, tmp_path: Path
) -> None:
    """Guard: the manifest itself, coded, is relayed whole and decodes to its bytes, named by
    its digest (coded as it came to a client that takes the coding)."""
    async with mirror(_coded, _manifest_settings(where, tmp_path)) as m:
        path = f"/v2/x/{mode}/manifests/{MANIFEST_DIGEST}"
        answer = await m.raw("GET", path, [("Accept-Encoding", "gzip, deflate")] if accepts else [])
    assert answer.status == 200 and answer.complete
    coding = answer.headers.get("Content-Encoding")
    assert coding in (None, "gzip", "deflate") and (coding is None or accepts)
    body = answer.body if coding is None else zlib.decompress(answer.body, 32 + zlib.MAX_WBITS)
    assert body == MANIFEST
    assert answer.headers["Docker-Content-Digest"] == MANIFEST_DIGEST


@pytest.mark.parametrize("mode", ["gzip-corrupt", "gzip-bomb"])
async def test_an_encoded_manifest_that_cannot_be_checked_is_a_502(mode: str) -> None:
    """One whose coding does not decode, or decodes to more than the manifest cap: it cannot
    be checked, ``502 UNAVAILABLE`` saying why."""
    async with mirror(_coded) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/{MANIFEST_DIGEST}", GZIP)
    assert answer.status == 502 and answer.complete
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAVAILABLE" and MANIFEST_DIGEST in error["message"]


@pytest.mark.parametrize("mode", ["gzip-other", "gzip-good"])
async def test_an_encoded_manifest_by_tag_is_relayed_as_it_comes(mode: str) -> None:
    """Guard: by tag there is no digest to check: relayed as it comes, coded."""
    async with mirror(_coded) as m:
        answer = await m.raw("GET", f"/v2/x/{mode}/manifests/latest", GZIP)
    assert answer.status == 200 and answer.complete
    assert answer.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(answer.body) == CODED[mode.split("-")[1]]


@pytest.mark.parametrize(
    ("accept", "coded"),
    [("gzip", True), ("*", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False), ("br", False)],
)
async def test_the_encoded_manifest_is_coded_only_for_a_client_that_takes_it(
    accept: str, coded: bool
) -> None:
    """The coded bytes as they came (their length, their ``Content-Encoding``) go to a client
    whose ``Accept-Encoding`` takes gzip; the decoded manifest to one that does not."""
    async with mirror(_coded) as m:
        path = f"/v2/x/gzip-good-chunked/manifests/{MANIFEST_DIGEST}"
        answer = await m.raw("GET", path, [("Accept-Encoding", accept)])
    assert answer.status == 200 and answer.complete
    assert answer.headers["Content-Length"] == str(len(answer.body))
    if coded:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(answer.body) == MANIFEST
    else:
        assert "Content-Encoding" not in answer.headers and answer.body == MANIFEST
