"""``docxy warm``: the pure parts, the token flow and digest checks against a MockTransport
registry, and (e2e) warming a real mirror in front of the bed so that it fills its own cache."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import time
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cli.main import main
from docxy.cli.warm import (
    RegistryAuth,
    Warmer,
    WarmError,
    platform_matches,
    uncached_reason,
    warm_all,
)
from docxy.core.names import parse_image_ref
from lab.bed import Bed
from lab.bed.httpserver import LoopbackServer, QuietHandler
from lab.mirror import Mirror
from tests.conftest import StartMirror

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "platform", "taken"),
    [
        ("all", "linux/amd64", True),
        ("all", "unknown/unknown", False),
        ("all", None, True),  # no platform in the index entry: warmed with all
        ("linux/amd64", None, False),
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64", "linux/amd64", False),
        ("linux/arm", "linux/arm64", False),
        ("linux/arm/v7", "linux/arm/v7", True),
    ],
)
def test_platform_matches(wanted: str, platform: str | None, taken: bool) -> None:
    assert platform_matches(wanted, platform) is taken


# --- against a MockTransport registry -------------------------------------------------------


class FakeRegistry:
    """A token-protected registry: ``/v2/`` and every read need ``Bearer good-token``."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.token_requests: list[httpx.Request] = []
        self.blob_gets: list[str] = []
        self.corrupt: dict[str, bytes] = {}
        self.realm = "http://mirror.test/token"
        self.challenges: list[str] = []  # WWW-Authenticate values, one header each
        #: ``Cache-Status`` sent with a blob (by digest) or a manifest (by ``repo:ref``).
        self.cache_status: dict[str, str] = {}
        #: ``Cache-Status`` values for a blob's ``HEAD`` s, by digest, in turn (the last kept).
        self.head_status: dict[str, list[str]] = {}
        self.heads: list[str] = []
        #: More headers sent with a blob's GET, by digest.
        self.blob_headers: dict[str, dict[str, str]] = {}
        self.requests: list[httpx.Request] = []

    def add_image(self, repo: str, tag: str, layers: list[bytes], arch: str = "amd64") -> str:
        config = json.dumps({"architecture": arch, "os": "linux"}).encode()
        for blob in (config, *layers):
            self.blobs[sha(blob)] = blob
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": "x", "digest": sha(b), "size": len(b)} for b in layers],
        }
        return self.add_manifest(repo, tag, json.dumps(doc).encode(), OCI_MANIFEST)

    def add_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        self.manifests[f"{repo}:{tag}"] = self.manifests[f"{repo}:{sha(body)}"] = (body, media_type)
        return sha(body)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            self.token_requests.append(request)
            return httpx.Response(200, json={"token": "good-token"})
        if request.headers.get("authorization") != "Bearer good-token":
            values = self.challenges or [f'Bearer realm="{self.realm}",service="svc"']
            return httpx.Response(401, headers=[("WWW-Authenticate", v) for v in values])
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        name, kind, ref = path[len("/v2/") :].rsplit("/", 2)
        if kind == "blobs" and ref in self.blobs and request.method == "HEAD":
            self.heads.append(ref)
            said = self.head_status.get(ref, [])
            value = said.pop(0) if len(said) > 1 else said[0] if said else "Docxy; hit"
            return httpx.Response(200, headers={"Cache-Status": value})
        if kind == "blobs" and ref in self.blobs:
            self.blob_gets.append(ref)
            status = {"Cache-Status": self.cache_status[ref]} if ref in self.cache_status else {}
            body = self.corrupt.get(ref, self.blobs[ref])
            headers = status | self.blob_headers.get(ref, {})
            return httpx.Response(200, stream=httpx.ByteStream(body), headers=headers)
        found = self.manifests.get(f"{name}:{ref}")
        if kind == "manifests" and found is not None:
            body, media_type = found
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(body)}
            if f"{name}:{ref}" in self.cache_status:
                headers["Cache-Status"] = self.cache_status[f"{name}:{ref}"]
            return httpx.Response(200, stream=httpx.ByteStream(body), headers=headers)
        return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


def warmer(
    registry: FakeRegistry, platform: str = "all", credentials: tuple[str, str] | None = None
) -> tuple[Warmer, io.StringIO]:
    client = httpx.Client(
        base_url="http://mirror.test",
        transport=httpx.MockTransport(registry.handler),
        auth=RegistryAuth(credentials),
    )
    progress = io.StringIO()
    return Warmer(client, platform, progress), progress


def test_warm_gets_a_token_once_and_reads_every_blob(registry: FakeRegistry) -> None:
    registry.add_image("library/app", "1", [b"layer one", b"layer two"])
    warm, progress = warmer(registry)
    tally = warm.warm(parse_image_ref("app:1"))
    assert (tally.manifests, tally.blobs) == (1, 3)
    assert sorted(registry.blob_gets) == sorted(registry.blobs)
    assert len(registry.token_requests) == 1
    params = registry.token_requests[0].url.params
    assert params["scope"] == "repository:library/app:pull"
    assert params["service"] == "svc"
    assert "authorization" not in registry.token_requests[0].headers
    assert progress.getvalue().count("ok\n") == 3


def test_a_layer_its_storage_labels_gzip_is_checked_as_its_bytes(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """warm read bodies as httpx decodes them: a layer passed through with the
    ``Content-Encoding: gzip`` its storage labels it with (S3 metadata) was unzipped into other
    bytes and failed its digest check. It asks for identity and checks the bytes as sent."""
    layer = gzip.compress(b"a layer's tar" * 1000)
    registry.add_image("library/app", "1", [layer])
    registry.blob_headers[sha(layer)] = {"Content-Encoding": "gzip"}
    real_client = httpx.Client

    def through_the_fake(**options: Any) -> httpx.Client:
        return real_client(**options, transport=httpx.MockTransport(registry.handler))

    monkeypatch.setattr(httpx, "Client", through_the_fake)
    assert main(["warm", "--mirror", "http://mirror.test", "app:1"]) == 0, capsys.readouterr()
    reads = [r for r in registry.requests if r.url.path.startswith("/v2/library/")]
    assert reads and all(r.headers["accept-encoding"] == "identity" for r in reads)


def test_credentials_go_to_the_token_service(registry: FakeRegistry) -> None:
    registry.add_image("team/app", "1", [b"layer"])
    warm, _ = warmer(registry, credentials=("alice", "s3cret"))
    warm.warm(parse_image_ref("team/app:1"))
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert registry.token_requests[0].headers["authorization"] == expected


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], None),
        (["Docxy; hit"], None),
        (["Docxy; fwd=miss; collapsed"], None),
        (["Docxy; fwd=bypass; detail=private"], "private"),
        (["docxy;fwd=bypass"], "bypass"),
        (["Docxy; fwd=bypass; detail=private, CDN; hit"], "private"),  # a cache after it
        (["Docxy; fwd=bypass; detail=private", "CDN; fwd=bypass"], "private"),
        (["Upstream; fwd=bypass; detail=x, Docxy; hit"], None),  # a cache before it
        (["CDN; fwd=bypass; detail=x"], None),  # not the mirror's
        (['"Docxy"; fwd=bypass; detail="cache-full"'], "cache-full"),
        (['Docxy; fwd=bypass; detail=private, CDN; detail="a, Docxy; hit"'], "private"),
        (['CDN; detail="x\\"; Docxy; hit, y", Docxy; fwd=bypass; detail=bypass'], "bypass"),
        (['Docxy; fwd=bypass; detail="say \\"no\\""'], 'say "no"'),
        (['CDN; detail="oops, Docxy; fwd=bypass; detail=private'], "private"),  # never closed
        (["Docxy; fwd=miss; stored=?0; detail=cache-unwritable"], "cache-unwritable"),
        (["Docxy; fwd=miss; stored=?0"], "not-kept"),
        (["Docxy; fwd=miss; stored"], None),
    ],
)
def test_uncached_reason_reads_the_mirrors_cache_status(
    values: list[str], reason: str | None
) -> None:
    response = httpx.Response(200, headers=[("Cache-Status", value) for value in values])
    assert uncached_reason(response) == reason


def test_an_image_the_mirror_did_not_cache_all_of_fails_with_its_reasons(
    registry: FakeRegistry,
) -> None:
    """Every byte fetched and checked, but blobs and the manifest passed through uncached:
    the image is not warmed (exit 1), and warm says why in the mirror's words. The next image
    is: its blobs were cached, the config they share too this time (read again: not counted
    as done when it passed through)."""
    registry.add_image("library/app", "1", [b"one", b"two"])
    registry.add_image("library/other", "1", [b"three"])
    config = next(d for d, b in registry.blobs.items() if b.startswith(b"{"))
    registry.cache_status["library/app:1"] = "Docxy; fwd=bypass; detail=cache-full"
    registry.cache_status[sha(b"two")] = "Docxy; fwd=bypass; detail=cache-full"
    registry.cache_status[config] = "Docxy; fwd=bypass; detail=something-new"
    registry.cache_status[sha(b"three")] = "Docxy; fwd=miss"
    registry.cache_status[sha(b"one")] = registry.cache_status["library/other:1"] = "Docxy; hit"

    def cached_now(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/library/other/"):
            registry.cache_status[config] = "Docxy; hit"  # under this repository, it is cached
        return registry.handler(request)

    client = httpx.Client(
        base_url="http://mirror.test",
        transport=httpx.MockTransport(cached_now),
        auth=RegistryAuth(),
    )
    warm = Warmer(client, "all", io.StringIO())
    out, err = io.StringIO(), io.StringIO()
    images = [parse_image_ref("app:1"), parse_image_ref("other:1")]
    with contextlib.redirect_stderr(err):
        assert warm_all(warm, images, out) == 1
    assert sorted(registry.blob_gets) == sorted([*registry.blobs, config])  # read all the same
    assert err.getvalue() == (
        "docxy warm: library/app:1: fetched and checked, but not cached: "
        "2 not cached: the mirror's cache has no room for it (cache.max_size); "
        "1 not cached: the mirror says something-new\n"
    )
    assert out.getvalue().startswith("library/other:1: 1 manifests, 2 blobs, ")


def test_a_blob_sent_on_a_miss_counts_once_the_mirror_has_it(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miss's last byte goes out before the blob is synced and committed, and a download
    given up midway is sent whole all the same: warm asks (HEAD) until the mirror has each blob
    it sent on a miss. One committed a little late counts; one never kept fails the image."""
    # long enough for three HEADs (the count below) on a stalled machine
    monkeypatch.setattr("docxy.cli.warm.KEPT_WAIT", 1.5)
    registry.add_image("library/app", "1", [b"late", b"lost"])
    for layer in (b"late", b"lost"):
        registry.cache_status[sha(layer)] = "Docxy; fwd=miss"
    registry.head_status[sha(b"late")] = ["Docxy; fwd=bypass; detail=not-cacheable", "Docxy; hit"]
    registry.head_status[sha(b"lost")] = ["Docxy; fwd=bypass; detail=not-cacheable"]
    warm, _ = warmer(registry)
    with pytest.raises(WarmError) as raised:
        warm.warm(parse_image_ref("app:1"))
    assert str(raised.value) == (
        "fetched and checked, but not cached: 1 not cached: the mirror sent it "
        "but did not keep it: its download for the cache was given up midway (a failed "
        "write, no room: see its log)"
    )
    assert registry.heads.count(sha(b"late")) == 2  # asked again, then found
    assert registry.heads.count(sha(b"lost")) > 2  # asked until the wait ran out
    config = next(d for d, b in registry.blobs.items() if b.startswith(b"{"))
    assert config not in registry.heads  # no Cache-Status on it: an older mirror, not asked

    registry.head_status[sha(b"lost")] = ["Docxy; hit"]
    registry.heads.clear()
    registry.blob_gets.clear()
    assert warm.warm(parse_image_ref("app:1")).blobs == 1  # the config and "late" are done
    assert registry.blob_gets == registry.heads == [sha(b"lost")]


def test_a_layer_two_platforms_share_is_read_once_even_uncached(registry: FakeRegistry) -> None:
    """Left out of what is done when it passed through (another image may cache it), a layer
    that both platforms of an index share was read, and counted, once per platform."""
    children = []
    for arch in ("amd64", "arm64"):
        digest = registry.add_image("library/multi", arch, [b"shared layer"], arch)
        size = len(registry.manifests[f"library/multi:{digest}"][0])
        entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
        children.append(entry | {"platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    registry.add_manifest("library/multi", "latest", index.encode(), OCI_INDEX)
    registry.cache_status[sha(b"shared layer")] = "Docxy; fwd=bypass; detail=cache-full"
    warm, _ = warmer(registry)
    with pytest.raises(WarmError, match="^fetched and checked, but not cached: 1 not cached: "):
        warm.warm(parse_image_ref("multi"))
    assert registry.blob_gets.count(sha(b"shared layer")) == 1


def serve_over_loopback(registry: FakeRegistry) -> LoopbackServer:
    """``registry`` behind a real HTTP server on 127.0.0.1: repeated headers stay repeated on
    the wire, as a real registry sends them (a MockTransport never puts them on a wire)."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = f"http://{self.headers['Host']}{self.path}"
            answer = registry.handler(httpx.Request("GET", url, headers=self.headers.items()))
            self.send_response(answer.status_code)
            for name, value in answer.headers.multi_items():
                if name != "content-length":
                    self.send_header(name, value)
            body = answer.read()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = LoopbackServer(Handler)
    server.start()
    registry.realm = f"{server.url}/token"
    return server


@pytest.mark.parametrize("basic_first", [True, False])
@pytest.mark.parametrize("credentials", [None, ("alice", "s3cret")])
def test_two_challenge_headers_still_find_the_token_service(
    registry: FakeRegistry, basic_first: bool, credentials: tuple[str, str] | None
) -> None:
    """A registry offering Basic and Bearer in two ``WWW-Authenticate`` headers: warm takes
    the Bearer one (its realm, service and scope) and logs in there, never with Basic."""
    server = serve_over_loopback(registry)
    try:
        scope = "repository:library/app:pull"
        bearer = f'Bearer realm="{registry.realm}",service="svc",scope="{scope}"'
        basic = 'Basic realm="basic, not here"'
        registry.challenges = [basic, bearer] if basic_first else [bearer, basic]
        registry.add_image("library/app", "1", [b"layer one"])
        auth = RegistryAuth(credentials)
        with httpx.Client(base_url=server.url, auth=auth) as client:
            tally = Warmer(client, "all", io.StringIO()).warm(parse_image_ref("app:1"))
    finally:
        server.stop()
    assert (tally.manifests, tally.blobs) == (1, 2)
    assert len(registry.token_requests) == 1
    asked = registry.token_requests[0]
    assert (asked.url.params["service"], asked.url.params["scope"]) == ("svc", scope)
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode() if credentials else None
    assert asked.headers.get("authorization") == expected


@pytest.mark.parametrize("credentials", [("alice", "s3cret"), None])
def test_a_basic_only_registry_gets_the_credentials(
    registry: FakeRegistry, credentials: tuple[str, str] | None
) -> None:
    registry.add_image("team/app", "1", [b"layer"])
    registry.challenges = ['Basic realm="one"', 'Basic realm="two"']
    login = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    def basic(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == login:
            request.headers["authorization"] = "Bearer good-token"
        return registry.handler(request)

    client = httpx.Client(
        base_url="http://mirror.test",
        transport=httpx.MockTransport(basic),
        auth=RegistryAuth(credentials),
    )
    warm = Warmer(client, "all", io.StringIO())
    if credentials is None:
        with pytest.raises(WarmError, match="unauthorized"):
            warm.warm(parse_image_ref("team/app:1"))
    else:
        assert warm.warm(parse_image_ref("team/app:1")).blobs == 2
    assert registry.token_requests == []


def test_index_all_platforms_or_one(registry: FakeRegistry) -> None:
    children = []
    for arch in ("amd64", "arm64"):
        digest = registry.add_image("library/multi", arch, [arch.encode() * 10], arch)
        size = len(registry.manifests[f"library/multi:{digest}"][0])
        entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
        children.append(entry | {"platform": {"os": "linux", "architecture": arch}})
    attestation = {"mediaType": OCI_MANIFEST, "digest": sha(b"att"), "size": 3}
    children.append(attestation | {"platform": {"os": "unknown", "architecture": "unknown"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    registry.add_manifest("library/multi", "latest", index.encode(), OCI_INDEX)

    warm, _ = warmer(registry, platform="linux/arm64")
    assert warm.warm(parse_image_ref("multi")).blobs == 2
    assert sha(b"arm64" * 10) in registry.blob_gets
    assert sha(b"amd64" * 10) not in registry.blob_gets

    registry.blob_gets.clear()
    warm, _ = warmer(registry)
    tally = warm.warm(parse_image_ref("multi"))
    assert (tally.manifests, tally.blobs) == (3, 4)  # index + 2 platforms; no attestation

    warm, _ = warmer(registry, platform="windows/amd64")
    with pytest.raises(WarmError, match="no manifest for platform windows/amd64"):
        warm.warm(parse_image_ref("multi"))


@pytest.mark.parametrize(
    ("served", "message"),
    [(b"layer tw0", "the bytes hash to"), (b"layer", "got 5 bytes, the manifest says 9")],
)
def test_wrong_blob_bytes_fail_the_image(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str], served: bytes, message: str
) -> None:
    registry.add_image("library/app", "1", [b"layer two"])
    registry.corrupt[sha(b"layer two")] = served
    warm, progress = warmer(registry)
    images = [parse_image_ref("app:1")]
    assert warm_all(warm, images, io.StringIO()) == 1
    assert message in capsys.readouterr().err
    assert "ok" not in progress.getvalue().splitlines()[-1]


def test_manifest_not_matching_its_digest_fails(registry: FakeRegistry) -> None:
    digest = registry.add_image("library/app", "1", [b"layer"])
    body, media_type = registry.manifests[f"library/app:{digest}"]
    registry.manifests[f"library/app:{digest}"] = (body + b" ", media_type)
    warm, _ = warmer(registry)
    with pytest.raises(WarmError, match="the bytes hash to"):
        warm.warm(parse_image_ref(f"app@{digest}"))


@pytest.mark.parametrize(
    ("body", "media_type", "message"),
    [
        (b"not json", OCI_MANIFEST, "not a JSON object"),
        (b"[]", OCI_INDEX, "not a JSON object"),
        (
            b'{"manifests": [{"digest": "sha256:../../x", "platform": {"os": "linux", '
            b'"architecture": "amd64"}}]}',
            OCI_INDEX,
            "a platform entry",
        ),
        (b'{"config": {"digest": "md5:00"}}', OCI_MANIFEST, "a layer"),
        (b"{}", "application/vnd.docker.distribution.manifest.v1+json", "unsupported media type"),
    ],
)
def test_malformed_manifests_fail_cleanly(
    registry: FakeRegistry, body: bytes, media_type: str, message: str
) -> None:
    registry.add_manifest("library/odd", "1", body, media_type)
    warm, _ = warmer(registry)
    with pytest.raises(WarmError, match=message):
        warm.warm(parse_image_ref("odd:1"))
    assert registry.blob_gets == []


def test_missing_image_exits_1_and_the_rest_is_still_warmed(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.add_image("library/app", "1", [b"layer"])
    warm, _ = warmer(registry)
    out = io.StringIO()
    assert warm_all(warm, [parse_image_ref("nope"), parse_image_ref("app:1")], out) == 1
    assert "library/nope:latest" in capsys.readouterr().err
    assert "library/app:1: 1 manifests, 2 blobs" in out.getvalue()
    total = "total: 1 of 2 images cached; read 1 manifests, 2 blobs"
    assert out.getvalue().splitlines()[-1].startswith(total)


def test_the_total_counts_an_image_not_cached_as_failed(registry: FakeRegistry) -> None:
    """The total read like a count of what was warmed, as if both images were warmed when the mirror
    had passed one through uncached: it now says how many were cached, beside what was read."""
    registry.add_image("library/app", "1", [b"layer"])
    registry.add_image("library/private", "1", [b"secret layer"])
    registry.cache_status[sha(b"secret layer")] = "Docxy; fwd=bypass; detail=private"
    warm, _ = warmer(registry)
    out = io.StringIO()
    images = [parse_image_ref("app:1"), parse_image_ref("private:1")]

    assert warm_all(warm, images, out) == 1

    assert (
        out.getvalue()
        .splitlines()[-1]
        .startswith(
            "total: 1 of 2 images cached; read 2 manifests, 3 blobs"  # the config is shared
        )
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ghcr.io/a/b"], "name the image without a registry"),
        (["--platform", "amd64", "x"], "expected all or OS/ARCH"),
        (["--username", "alice", "x"], "needs --password-stdin"),
        (["--password-stdin", "x"], "needs --username"),
        (["Bad"], "invalid repository name"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["warm", "--mirror", "http://127.0.0.1:9", *args]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_mirror_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from lab.ports import free_port

    assert main(["warm", "--mirror", f"http://127.0.0.1:{free_port()}", "x"]) == 1
    assert "ConnectError" in capsys.readouterr().err


def test_an_unreachable_mirror_is_named_once_with_the_way_to_name_another(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --mirror, warm asks server.public_url (http://127.0.0.1:8080 by default). A
    mirror serving elsewhere got one `library/x:latest: ConnectError: [Errno 111] Connection
    refused` per image, naming neither the URL asked nor --mirror."""
    from lab.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "docxy.toml"
    config.write_text(f'[server]\npublic_url = "{url}"\n')

    assert main(["warm", "--config", str(config), "x", "y", "z"]) == 1

    out, err = capsys.readouterr()
    assert f"cannot reach the mirror at {url}" in err and "--mirror" in err, err
    assert err.count(url) == 1, err
    assert out.splitlines()[-1].startswith("total: 0 of 3 images cached; read 0 manifests"), out


def test_a_token_service_out_of_reach_is_named_not_the_mirror(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    """warm through http://127.0.0.1:8080 of a mirror whose public_url is another name: its
    realm is out of reach from here, and the message says that, not "is the mirror running"."""
    registry.realm = "https://mirror.example.com/auth/token"
    registry.add_image("library/app", "1", [b"layer"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "mirror.example.com":
            raise httpx.ConnectError("Name or service not known", request=request)
        return registry.handler(request)

    transport = httpx.MockTransport(handler)
    client = httpx.Client(base_url="http://mirror.test", transport=transport, auth=RegistryAuth())
    warm = Warmer(client, "all", io.StringIO())

    assert warm_all(warm, [parse_image_ref("app:1")], io.StringIO()) == 1

    err = capsys.readouterr().err
    assert "sent warm to https://mirror.example.com/auth/token" in err, err
    assert "is docxy serve running" not in err


# --- e2e: a real mirror in front of the bed -------------------------------------------------


def image_blobs(bed: Bed, name: str, platform: Callable[[str], bool] = lambda p: True) -> set[str]:
    """Config and layer digests of every (chosen) platform of a bed image."""
    image = bed.images[name]
    manifests = [image.manifest] if not image.children else []
    for plat, digest in image.platforms.items():
        if platform(plat):
            manifests.append(image.children[digest])
    found: set[str] = set()
    for body in manifests:
        doc = json.loads(body)
        found |= {d["digest"] for d in [doc["config"], *doc["layers"]]}
    return found


def cached_blobs(
    mirror: Mirror, capsys: pytest.CaptureFixture[str], wanted: Set[str] = frozenset()
) -> set[str]:
    """The blobs in the mirror's cache, once they include ``wanted`` (or after 10 s): a fill
    commits a moment after its client got the last byte (verified first, renamed in then), so
    warm, whose last GET and HEAD were answered, may end just before its last blob is on disk
    (seen once in CI, on Python 3.13)."""
    cache_dir = mirror.log_path.parent / "cache"
    deadline = time.monotonic() + 10
    while True:
        capsys.readouterr()
        assert main(["cache", "ls", "--blobs", "--cache-dir", str(cache_dir)]) == 0
        cached = {line.split()[1] for line in capsys.readouterr().out.splitlines()}
        if wanted <= cached or time.monotonic() > deadline:
            return cached
        time.sleep(0.05)


@pytest.mark.e2e
def test_warm_fills_the_mirror_cache_with_every_platform(
    mirror: Mirror, bed: Bed, capsys: pytest.CaptureFixture[str]
) -> None:
    hello = "library/hello"
    wanted = image_blobs(bed, hello)
    assert len(bed.images[hello].platforms) == 2
    assert main(["warm", "--mirror", mirror.url, "hello"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"library/hello:latest: 3 manifests, {len(wanted)} blobs, ")
    assert err.count("ok\n") == len(wanted)  # stderr is not a TTY: plain lines
    assert wanted <= cached_blobs(mirror, capsys, wanted)
    assert len(bed.front_log.cdn_fetches()) == len(wanted)  # each blob once, by the mirror

    bed.front_log.clear()
    assert main(["warm", "--mirror", mirror.url, "hello"]) == 0
    assert bed.front_log.cdn_fetches() == []  # every blob now comes from the mirror's disk
    assert bed.front_log.manifest_requests("GET") == []  # tag fresh, manifests by digest cached


@pytest.mark.e2e
def test_warm_one_platform_and_several_images(
    mirror: Mirror, bed: Bed, capsys: pytest.CaptureFixture[str]
) -> None:
    hello = "library/hello"
    multi = bed.images["docxytest/multi"]
    arm64 = image_blobs(bed, hello, lambda p: p == "linux/arm64")
    amd64 = image_blobs(bed, hello, lambda p: p == "linux/amd64")
    args = ["warm", "--mirror", mirror.url, "--platform", "linux/arm64"]
    assert main([*args, "hello", f"{multi.repo}:{multi.tag}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("total: 2 of 2 images cached; read 3 manifests, ")
    cached = cached_blobs(mirror, capsys, arm64 | image_blobs(bed, "docxytest/multi"))
    assert arm64 <= cached
    assert not (amd64 - arm64) & cached
    assert image_blobs(bed, "docxytest/multi") <= cached


@pytest.mark.e2e
def test_warm_private_image_needs_credentials(
    mirror: Mirror, bed: Bed, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    private = bed.images["docxytest/private"]
    reference = f"{private.repo}:{private.tag}"
    assert main(["warm", "--mirror", mirror.url, reference]) == 1
    assert "unauthorized" in capsys.readouterr().err

    # With the client's login the mirror passes the image through, uncached (its own login
    # may not read it): fetched and checked, and not warmed, which warm says (exit 1).
    monkeypatch.setattr("sys.stdin", io.StringIO(bed.password + "\n"))
    args = ["warm", "--mirror", mirror.url, "--username", bed.user, "--password-stdin"]
    assert main([*args, reference]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"docxy warm: {reference}: fetched and checked, but not cached: " in err
    assert " not cached: the mirror's own upstream login may not read it" in err
    assert bed.password not in out + err
    assert not image_blobs(bed, private.repo) & cached_blobs(mirror, capsys)


@pytest.mark.e2e
def test_warm_private_image_with_the_mirrors_upstream_account(
    start_mirror: StartMirror, bed: Bed, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upstream account that may read the image: the mirror caches it, warm exits 0."""
    account = {"DOCXY_UPSTREAM_USERNAME": bed.user, "DOCXY_UPSTREAM_PASSWORD": bed.password}
    mirror = start_mirror(env=account)
    private = bed.images["docxytest/private"]
    reference = f"{private.repo}:{private.tag}"
    assert main(["warm", "--mirror", mirror.url, reference]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{reference}: 1 manifests, ")
    assert "not cached" not in err
    wanted = image_blobs(bed, private.repo)
    assert wanted <= cached_blobs(mirror, capsys, wanted)


@pytest.mark.e2e
def test_warm_uses_the_configured_public_url(
    start_mirror: StartMirror, bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mirror = start_mirror()
    config = tmp_path / "docxy.toml"
    config.write_text(f'[server]\npublic_url = "{mirror.url}"\n')
    multi = bed.images["docxytest/multi"]
    assert main(["warm", "--config", str(config), f"{multi.repo}:{multi.tag}"]) == 0
    wanted = image_blobs(bed, "docxytest/multi")
    assert wanted <= cached_blobs(mirror, capsys, wanted)


@pytest.mark.parametrize(
    ("prefix", "name"), [("false", "app:latest"), ("true", "library/app:latest")]
)
def test_warm_follows_the_library_prefix_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], prefix: str, name: str
) -> None:
    from lab.ports import free_port

    monkeypatch.setenv("DOCXY_UPSTREAM_LIBRARY_PREFIX", prefix)
    assert main(["warm", "--mirror", f"http://127.0.0.1:{free_port()}", "app"]) == 1
    assert f"docxy warm: {name}: cannot reach the mirror" in capsys.readouterr().err


def test_warm_names_an_upstream_by_prefix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lab.ports import free_port

    monkeypatch.setenv("DOCXY_UPSTREAMS", "ghcr.io,lab.test=http://127.0.0.1:9")
    mirror = f"http://127.0.0.1:{free_port()}"
    # Accepted, then tried (the mirror is not there: warm stops at the first image it tries).
    assert main(["warm", "--mirror", mirror, "ghcr.io/owner/img"]) == 1
    assert "docxy warm: ghcr.io/owner/img:latest: cannot reach" in capsys.readouterr().err
    assert main(["warm", "--mirror", mirror, "lab.test/a:1"]) == 1
    assert "docxy warm: lab.test/a:1: cannot reach" in capsys.readouterr().err
    assert main(["warm", "--mirror", mirror, "quay.io/owner/img"]) == 2
    assert "quay.io is not one of the mirror's upstreams (docker.io, ghcr.io, lab.test)" in (
        capsys.readouterr().err
    )


def test_a_refused_login_is_printed_as_the_token_service_said(registry: FakeRegistry) -> None:
    """A wrong password at the mirror's token service was printed as ``unauthorized
    (private? try --username and --password-stdin)``, to a warm given both: the token
    service's own answer is what to fix. (Its other refusals, a 429 or a 503, reach warm as
    the answer itself, printed with their body.)"""
    registry.add_image("team/app", "1", [b"layer"])
    status, message = 401, "incorrect username or password"

    def refusing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(status, json={"errors": [{"code": "X", "message": message}]})
        return registry.handler(request)

    client = httpx.Client(
        base_url="http://mirror.test",
        transport=httpx.MockTransport(refusing),
        auth=RegistryAuth(("alice", "guess")),
    )
    with pytest.raises(WarmError) as raised:
        Warmer(client, "all", io.StringIO()).warm(parse_image_ref("team/app:1"))
    said = str(raised.value)
    assert f"unauthorized: the token service answered {status}: {message}" in said
    assert "--username" not in said


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, b"[" * 100_000, "the token service sent no token"),
        (401, b"[" * 100_000, "the token service answered 401"),
        (200, b"{}", "the token service sent no token"),
    ],
    ids=["deep-200", "deep-401", "no-token"],
)
def test_a_token_answer_without_a_token_is_a_refusal_not_a_traceback(
    registry: FakeRegistry, status: int, body: bytes, said: str
) -> None:
    """httpx's ``.json()`` raised RecursionError (no ValueError) for a body of 100,000 ``[``:
    warm ended in a traceback. A 200 without a token was handed on as the manifest's answer
    (``unsupported media type ''``)."""
    registry.add_image("team/app", "1", [b"layer"])

    def deep(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(status, content=body)
        return registry.handler(request)

    client = httpx.Client(
        base_url="http://mirror.test", transport=httpx.MockTransport(deep), auth=RegistryAuth()
    )
    with pytest.raises(WarmError, match="unauthorized") as raised:
        Warmer(client, "all", io.StringIO()).warm(parse_image_ref("team/app:1"))
    assert said in str(raised.value)
