"""The mirror, as a child process, in front of the Docker-Hub-like bed: what a registry client sees.

Each test gets a fresh mirror (empty cache) and a reset bed; upstream traffic is read from
`bed.front_log` (front = registry API, cdn = blob bytes) and `bed.tokens.log`.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from lab.bed import Bed, Fault
from lab.bed.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    TestImage,
    sha256_digest,
)
from lab.mirror import Mirror, launch_mirror, stop_mirror
from tests.conftest import MIRRORS_KEY, StartMirror
from tests.e2e.waiting import poll

pytestmark = pytest.mark.e2e

HELLO = "library/hello"
MULTI = "docxytest/multi"
PRIVATE = "docxytest/private"
ALL_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
DEADLINE = 15.0


@pytest.fixture(scope="module")
def module_mirror(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    mirror = launch_mirror(bed.upstream_url, tmp_path_factory.mktemp("module-mirror"))
    try:
        yield mirror
    finally:
        stop_mirror(mirror)


@pytest.fixture
def shared_mirror(module_mirror: Mirror, request: pytest.FixtureRequest) -> Mirror:
    """One mirror for the tests that leave no state behind (refused requests); saves a start
    per test. Its log is shown for any failing test that used it."""
    request.node.stash.setdefault(MIRRORS_KEY, []).append(module_mirror)
    return module_mirror


@pytest.fixture
def shared_client(shared_mirror: Mirror) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_mirror.url, timeout=30, follow_redirects=False) as client:
        yield client


def upstream_requests(bed: Bed) -> list[str]:
    """What reached the upstream, apart from the `/v2/` pings a mirror may send any time."""
    return [f"{r.method} {r.path}" for r in bed.front_log if r.path != "/v2/"]


# --- helpers ---------------------------------------------------------------------------------


def parse_challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme.lower() == "bearer", header
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["errors"]
    assert isinstance(errors, list) and errors
    assert errors[0]["code"] == code
    assert isinstance(errors[0]["message"], str) and errors[0]["message"]


def mirror_token(
    client: httpx.Client, bed: Bed, scope: str, auth: tuple[str, str] | None = None
) -> httpx.Response:
    challenge = parse_challenge(client.get("/v2/").headers["WWW-Authenticate"])
    params = {"service": challenge["service"], "scope": scope}
    if auth is not None:
        params["account"] = auth[0]
    return client.get(challenge["realm"], params=params, auth=auth)


def bearer(
    client: httpx.Client, bed: Bed, repo: str, auth: tuple[str, str] | None = None
) -> dict[str, str]:
    response = mirror_token(client, bed, f"repository:{repo}:pull", auth)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}", "Accept": ALL_MANIFESTS}


def raw_request(mirror: Mirror, method: str, target: str) -> tuple[int, bytes, str]:
    """Send `target` byte for byte (httpx would normalise `..` and percent-escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=30)
    try:
        conn.request(method, target, headers={"Accept": ALL_MANIFESTS})
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        conn.close()


def noise_layer(bed: Bed) -> str:
    return bed.images[MULTI].blobs[2]


# --- the /v2/ challenge and the token endpoint -----------------------------------------------


def test_v2_challenge_points_at_the_mirror_with_upstream_service(
    mirror: Mirror, mirror_client: httpx.Client, bed: Bed
) -> None:
    response = mirror_client.get("/v2/")
    assert response.status_code == 401
    challenge = parse_challenge(response.headers["WWW-Authenticate"])
    assert challenge["realm"] == f"{mirror.url}/auth/token"
    assert challenge["service"] == bed.service


def test_challenge_realm_follows_public_url(start_mirror: StartMirror, bed: Bed) -> None:
    public = "https://mirror.docxy.test"  # only written into headers, never connected to
    mirror = start_mirror("--public-url", public)
    response = httpx.get(f"{mirror.url}/v2/")
    assert response.status_code == 401
    challenge = parse_challenge(response.headers["WWW-Authenticate"])
    assert (challenge["realm"], challenge["service"]) == (f"{public}/auth/token", bed.service)


def test_anonymous_token_through_mirror_pulls(mirror_client: httpx.Client, bed: Bed) -> None:
    response = mirror_token(mirror_client, bed, f"repository:{HELLO}:pull")
    assert response.status_code == 200
    body = response.json()
    assert body["token"]
    assert body.get("access_token", body["token"]) == body["token"]
    seen = bed.tokens.log.snapshot()[-1]
    assert (seen.basic_user, seen.scopes, seen.service) == (
        None,
        (f"repository:{HELLO}:pull",),
        bed.service,
    )
    headers = {"Authorization": f"Bearer {body['token']}", "Accept": ALL_MANIFESTS}
    manifest = mirror_client.get(f"/v2/{HELLO}/manifests/latest", headers=headers)
    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == bed.images[HELLO].digest


def test_alice_token_via_basic_pulls_private(mirror_client: httpx.Client, bed: Bed) -> None:
    image = bed.images[PRIVATE]
    headers = bearer(mirror_client, bed, PRIVATE, (bed.user, bed.password))
    seen = bed.tokens.log.snapshot()[-1]
    assert (seen.basic_user, seen.account, seen.status) == (bed.user, bed.user, 200)
    response = mirror_client.get(f"/v2/{PRIVATE}/manifests/{image.tag}", headers=headers)
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert sha256_digest(response.content) == image.digest


def test_wrong_password_is_401(mirror_client: httpx.Client, bed: Bed) -> None:
    response = mirror_token(
        mirror_client, bed, f"repository:{PRIVATE}:pull", (bed.user, "wrong-password")
    )
    assert response.status_code == 401
    body = response.json()
    assert "token" not in body and "access_token" not in body  # nothing issued
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")


def test_one_component_scope_gets_library_prefix(mirror_client: httpx.Client, bed: Bed) -> None:
    response = mirror_token(mirror_client, bed, "repository:hello:pull")
    assert response.status_code == 200
    assert bed.tokens.log.snapshot()[-1].scopes == (f"repository:{HELLO}:pull",)
    headers = {"Authorization": f"Bearer {response.json()['token']}", "Accept": ALL_MANIFESTS}
    manifest = mirror_client.get("/v2/hello/manifests/latest", headers=headers)
    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == bed.images[HELLO].digest


# --- manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_get(mirror_client: httpx.Client, bed: Bed, by: str) -> None:
    image = bed.images[HELLO]
    reference = image.tag if by == "tag" else image.digest
    response = mirror_client.get(
        f"/v2/{HELLO}/manifests/{reference}", headers=bearer(mirror_client, bed, HELLO)
    )
    assert response.status_code == 200
    assert response.content == image.manifest
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == OCI_INDEX
    assert int(response.headers["Content-Length"]) == len(image.manifest)


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_head_is_a_head_upstream(mirror_client: httpx.Client, bed: Bed, by: str) -> None:
    image = bed.images[MULTI]
    reference = image.tag if by == "tag" else image.digest
    headers = bearer(mirror_client, bed, MULTI)
    bed.front_log.clear()
    response = mirror_client.head(f"/v2/{MULTI}/manifests/{reference}", headers=headers)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["Content-Length"]) == len(image.manifest)
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert len(bed.front_log.manifest_requests("HEAD", MULTI)) == 1
    assert bed.front_log.manifest_requests("GET") == []


def test_multi_arch_index_and_platform_manifests(mirror_client: httpx.Client, bed: Bed) -> None:
    image = bed.images[HELLO]
    headers = bearer(mirror_client, bed, HELLO)
    index = mirror_client.get(f"/v2/{HELLO}/manifests/latest", headers=headers)
    assert index.status_code == 200
    assert OCI_INDEX in (bed.front_log.manifest_requests("GET")[-1].accept or "")
    platforms = {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in index.json()["manifests"]
    }
    assert platforms == image.platforms
    for digest, body in image.children.items():
        child = mirror_client.get(f"/v2/{HELLO}/manifests/{digest}", headers=headers)
        assert child.status_code == 200
        assert child.content == body
        assert child.headers["Content-Type"] == OCI_MANIFEST


def test_index_is_not_served_to_a_client_that_does_not_accept_it(
    mirror_client: httpx.Client, bed: Bed
) -> None:
    """An old client that accepts only single-image manifests must not get an index, even after
    the index was fetched (and maybe cached) for another client."""
    headers = bearer(mirror_client, bed, HELLO)
    assert mirror_client.get(f"/v2/{HELLO}/manifests/latest", headers=headers).status_code == 200
    narrow = headers | {"Accept": DOCKER_MANIFEST}
    response = mirror_client.get(f"/v2/{HELLO}/manifests/latest", headers=narrow)
    if response.status_code == 200:
        assert response.headers["Content-Type"] == DOCKER_MANIFEST
    else:
        assert response.status_code == 404


def test_repeated_accept_lines_all_reach_upstream(mirror: Mirror, bed: Bed) -> None:
    """containers/image (skopeo, podman) sends one Accept line per media type."""
    image = bed.images[HELLO]
    token = bed.token(f"repository:{HELLO}:pull")
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=30)
    try:
        conn.putrequest("GET", f"/v2/{HELLO}/manifests/{image.amd64_digest}")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Accept", DOCKER_MANIFEST)
        conn.putheader("Accept", OCI_MANIFEST)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == image.children[image.amd64_digest]
    finally:
        conn.close()


def test_one_component_name_means_library(mirror_client: httpx.Client, bed: Bed) -> None:
    image = bed.images[HELLO]
    headers = bearer(mirror_client, bed, "hello")
    bed.front_log.clear()
    response = mirror_client.get("/v2/hello/manifests/latest", headers=headers)
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert [r.path for r in bed.front_log.manifest_requests("GET")] == [
        f"/v2/{HELLO}/manifests/latest"
    ]
    digest = image.blobs[-1]
    blob = mirror_client.get(f"/v2/hello/blobs/{digest}", headers=headers)
    assert blob.status_code == 200
    assert sha256_digest(blob.content) == digest


def test_manifest_by_digest_is_fetched_upstream_once(mirror_client: httpx.Client, bed: Bed) -> None:
    image = bed.images[MULTI]
    headers = bearer(mirror_client, bed, MULTI)
    bed.front_log.clear()
    for _ in range(3):
        response = mirror_client.get(f"/v2/{MULTI}/manifests/{image.digest}", headers=headers)
        assert response.status_code == 200
        assert response.content == image.manifest
    assert len(bed.front_log.manifest_requests("GET", MULTI)) <= 1


# --- blobs -----------------------------------------------------------------------------------


def test_blob_get_follows_the_cdn_redirect_for_the_client(
    mirror_client: httpx.Client, bed: Bed
) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    bed.front_log.clear()
    response = mirror_client.get(f"/v2/{MULTI}/blobs/{digest}", headers=headers)
    assert response.status_code == 200  # not a 307: the client never sees the CDN
    assert sha256_digest(response.content) == digest
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert bed.cdn_url not in json.dumps(dict(response.headers))
    cdn = bed.front_log.cdn_fetches()
    assert cdn and all(r.auth_scheme is None for r in cdn)
    assert all(r.status in (200, 206) for r in cdn)


def test_blob_head(mirror_client: httpx.Client, bed: Bed) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    size = len(mirror_client.get(f"/v2/{MULTI}/blobs/{digest}", headers=headers).content)
    response = mirror_client.head(f"/v2/{MULTI}/blobs/{digest}", headers=headers)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == size
    assert response.headers["Docker-Content-Digest"] == digest


def _check_range(client: httpx.Client, headers: dict[str, str], digest: str, whole: bytes) -> None:
    start = 1_000_003
    response = client.get(
        f"/v2/{MULTI}/blobs/{digest}", headers=headers | {"Range": f"bytes={start}-"}
    )
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{len(whole) - 1}/{len(whole)}"
    assert response.content == whole[start:]


def test_blob_range_cold_and_warm(mirror_client: httpx.Client, bed: Bed) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    location = httpx.get(
        f"{bed.upstream_url}/v2/{MULTI}/blobs/{digest}",
        headers={"Authorization": f"Bearer {bed.token(f'repository:{MULTI}:pull')}"},
    ).headers["Location"]
    whole = httpx.get(location).content
    _check_range(mirror_client, headers, digest, whole)  # nothing cached yet
    full = mirror_client.get(f"/v2/{MULTI}/blobs/{digest}", headers=headers)
    assert full.content == whole
    _check_range(mirror_client, headers, digest, whole)  # now from the cache, if any


def test_blob_is_fetched_from_cdn_once(mirror_client: httpx.Client, bed: Bed) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    bed.front_log.clear()
    for _ in range(3):
        response = mirror_client.get(f"/v2/{MULTI}/blobs/{digest}", headers=headers)
        assert sha256_digest(response.content) == digest
    assert len(bed.front_log.cdn_fetches()) <= 1


# --- private repositories --------------------------------------------------------------------


def test_private_repo_anonymous_gets_rewritten_challenge(
    mirror: Mirror, mirror_client: httpx.Client, bed: Bed
) -> None:
    image = bed.images[PRIVATE]
    for headers in ({}, bearer(mirror_client, bed, PRIVATE)):
        response = mirror_client.get(f"/v2/{PRIVATE}/manifests/{image.tag}", headers=headers)
        assert response.status_code == 401
        challenge = parse_challenge(response.headers["WWW-Authenticate"])
        assert challenge["realm"] == f"{mirror.url}/auth/token"
        assert challenge["service"] == bed.service
        assert challenge.get("scope", f"repository:{PRIVATE}:pull") == f"repository:{PRIVATE}:pull"


def test_private_content_is_not_leaked_from_cache(mirror_client: httpx.Client, bed: Bed) -> None:
    image: TestImage = bed.images[PRIVATE]
    alice = bearer(mirror_client, bed, PRIVATE, (bed.user, bed.password))
    layer = image.blobs[-1]
    for path in (f"manifests/{image.tag}", f"manifests/{image.digest}", f"blobs/{layer}"):
        assert mirror_client.get(f"/v2/{PRIVATE}/{path}", headers=alice).status_code == 200
    anonymous = bearer(mirror_client, bed, PRIVATE)
    for path in (f"manifests/{image.tag}", f"manifests/{image.digest}", f"blobs/{layer}"):
        for headers in ({"Accept": ALL_MANIFESTS}, anonymous):
            response = mirror_client.get(f"/v2/{PRIVATE}/{path}", headers=headers)
            assert response.status_code == 401, path


# --- refused requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v2/library/../hello/manifests/latest",
        "/v2/library/%2E%2E/hello/manifests/latest",
        "/v2/library%2Fhello/manifests/latest",
        "/v2/Library/Hello/manifests/latest",
        "/v2/library//hello/manifests/latest",
        "/v2/library/hello-/manifests/latest",
        "/v2/library/hello/blobs/../../secret/blobs/sha256:" + "a" * 64,
    ],
)
def test_bad_names_are_name_invalid(shared_mirror: Mirror, bed: Bed, target: str) -> None:
    status, body, content_type = raw_request(shared_mirror, "GET", target)
    assert status == 400, body
    assert content_type.startswith("application/json")
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert upstream_requests(bed) == []


@pytest.mark.parametrize(
    "path",
    [
        "blobs/sha256:abc",
        "blobs/notadigest",
        "blobs/sha256:" + "A" * 64,
        "blobs/sha256:" + "a" * 63,
        "manifests/sha256:" + "z" * 64,
    ],
)
def test_bad_digests_are_digest_invalid(mirror_client: httpx.Client, bed: Bed, path: str) -> None:
    bed.front_log.clear()
    response = mirror_client.get(f"/v2/{HELLO}/{path}")
    assert_error(response, 400, "DIGEST_INVALID")
    assert len(bed.front_log) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v2/{HELLO}/blobs/uploads/"),
        ("PUT", f"/v2/{HELLO}/manifests/latest"),
        ("DELETE", f"/v2/{HELLO}/manifests/latest"),
        ("PATCH", f"/v2/{HELLO}/blobs/uploads/some-upload"),
        ("DELETE", f"/v2/{HELLO}/blobs/sha256:" + "a" * 64),
    ],
)
def test_writes_are_unsupported(
    shared_client: httpx.Client, bed: Bed, method: str, path: str
) -> None:
    response = shared_client.request(method, path, content=b"{}")
    assert_error(response, 405, "UNSUPPORTED")
    assert upstream_requests(bed) == []


@pytest.mark.parametrize("path", ["/nope", "/v3/", "/v2/library/hello/unknown-endpoint"])
def test_unknown_paths_are_not_found(shared_client: httpx.Client, path: str) -> None:
    assert_error(shared_client.get(path), 404, "NOT_FOUND")


@pytest.mark.parametrize("size", [12 * 1024, 100 * 1024])
def test_huge_query_is_refused_not_crashed(mirror: Mirror, size: int) -> None:
    try:
        status, _, _ = raw_request(mirror, "GET", f"/v2/{HELLO}/manifests/latest?x={'a' * size}")
    except (ConnectionError, http.client.HTTPException) as exc:
        pytest.fail(f"connection dropped instead of a 4xx answer: {exc!r}")
    assert 400 <= status < 500
    assert mirror.proc.poll() is None
    assert httpx.get(f"{mirror.url}/health").status_code == 200


# --- upstream outage -------------------------------------------------------------------------


def health_status(mirror: Mirror) -> str:
    response = httpx.get(f"{mirror.url}/health", timeout=10)
    assert response.status_code == 200
    status: str = response.json()["status"]
    return status


def test_upstream_down_is_502_then_recovers(
    mirror: Mirror, mirror_client: httpx.Client, bed: Bed
) -> None:
    headers = bearer(mirror_client, bed, MULTI)
    url = f"/v2/{MULTI}/manifests/{bed.images[MULTI].tag}"
    assert health_status(mirror) == "ok"
    bed.front.stop()
    response = mirror_client.get(url, headers=headers)
    assert response.status_code == 502
    assert response.json()["errors"][0]["code"]
    poll(lambda: health_status(mirror) == "degraded", DEADLINE, "health says degraded")
    bed.front.start()
    poll(
        lambda: mirror_client.get(url, headers=headers).status_code == 200,
        DEADLINE,
        "mirror recovers",
    )
    poll(lambda: health_status(mirror) == "ok", DEADLINE, "health says ok again")
    assert mirror.proc.poll() is None


def test_blob_digest_matches_after_full_pull(mirror_client: httpx.Client, bed: Bed) -> None:
    """Every blob of every seeded public image comes through the mirror byte-exact."""
    for repo in (HELLO, MULTI):
        headers = bearer(mirror_client, bed, repo)
        for digest in bed.images[repo].blobs:
            response = mirror_client.get(f"/v2/{repo}/blobs/{digest}", headers=headers)
            assert response.status_code == 200
            assert sha256_digest(response.content) == digest


# --- upstream misbehaviour: never a short or wrong success -----------------------------------


def fetch_blob(
    client: httpx.Client, headers: dict[str, str], digest: str
) -> tuple[int, bytes, str]:
    """(status, bytes received, transport error or "") for a blob GET through the mirror."""
    received = bytearray()
    status = 0
    try:
        with client.stream("GET", f"/v2/{MULTI}/blobs/{digest}", headers=headers) as response:
            status = response.status_code
            for chunk in response.iter_bytes():
                received += chunk
    except httpx.TransportError as exc:
        return status, bytes(received), repr(exc)
    return status, bytes(received), ""


def assert_no_false_success(result: tuple[int, bytes, str], digest: str) -> None:
    """A client may see an error or a broken transfer, or the right bytes; never wrong bytes
    presented as a complete 200."""
    status, body, error = result
    if status == 200 and not error:
        assert sha256_digest(body) == digest, "wrong bytes delivered as a complete 200"
    else:
        assert error or status >= 500, (status, len(body), error)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(site="cdn", kind="cut", after_bytes=100_000),
        Fault(site="cdn", kind="corrupt", after_bytes=1_500_000),
        Fault(site="cdn", kind="length", length_delta=-10),
        Fault(site="cdn", kind="length", length_delta=10),
        Fault(site="cdn", kind="status", status=500),
    ],
    ids=["cut", "corrupt", "short", "long", "500"],
)
def test_broken_blob_download_is_never_a_false_success(
    mirror_client: httpx.Client, bed: Bed, fault: Fault
) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    bed.faults.add(dataclasses.replace(fault, times=None))  # every upstream try misbehaves
    assert_no_false_success(fetch_blob(mirror_client, headers, digest), digest)
    assert bed.faults.fired, "the fault never fired: the test proved nothing"
    bed.faults.clear()
    status, body, error = fetch_blob(mirror_client, headers, digest)
    assert (status, error) == (200, "")
    assert sha256_digest(body) == digest, "a broken download was cached"


def test_one_broken_download_then_a_good_one(mirror_client: httpx.Client, bed: Bed) -> None:
    digest = noise_layer(bed)
    headers = bearer(mirror_client, bed, MULTI)
    bed.faults.add(Fault(site="cdn", kind="cut", after_bytes=300_000, times=1))
    assert_no_false_success(fetch_blob(mirror_client, headers, digest), digest)
    for _ in range(2):
        status, body, error = fetch_blob(mirror_client, headers, digest)
        assert (status, error, sha256_digest(body)) == (200, "", digest)


def test_upstream_rate_limit_reaches_the_client(mirror_client: httpx.Client, bed: Bed) -> None:
    headers = bearer(mirror_client, bed, MULTI)
    bed.faults.add(
        Fault(
            site="front",
            kind="status",
            status=429,
            headers={"Retry-After": "60"},
            path_contains="/manifests/",
            times=None,
        )
    )
    response = mirror_client.get(f"/v2/{MULTI}/manifests/{bed.images[MULTI].tag}", headers=headers)
    assert_error(response, 429, "TOOMANYREQUESTS")


def test_cached_tag_is_served_while_upstream_is_down(mirror_client: httpx.Client, bed: Bed) -> None:
    image = bed.images[MULTI]
    headers = bearer(mirror_client, bed, MULTI)
    url = f"/v2/{MULTI}/manifests/{image.tag}"
    assert mirror_client.get(url, headers=headers).status_code == 200
    bed.front.stop()
    response = mirror_client.get(url, headers=headers)
    assert response.status_code == 200
    assert response.content == image.manifest
    assert response.headers["Docker-Content-Digest"] == image.digest
