"""The test bed itself behaves like Docker Hub (token auth, 307 to a CDN, rate-limit headers).

If these fail, the mirror tests built on the bed mean nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from lab.bed import Bed, Fault
from lab.bed.images import generated_digest, sha256_digest
from tests.unavailable import need_binary, need_root

pytestmark = pytest.mark.e2e

HELLO = "library/hello"
PRIVATE = "docxytest/private"
INDEX_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def pull_headers(bed: Bed, repo: str, user: str | None = None) -> dict[str, str]:
    password = bed.password if user == bed.user else None
    token = bed.token(f"repository:{repo}:pull", user=user, password=password)
    return {"Authorization": f"Bearer {token}", "Accept": INDEX_ACCEPT}


def blob_location(bed: Bed, repo: str, digest: str) -> str:
    response = httpx.get(
        f"{bed.upstream_url}/v2/{repo}/blobs/{digest}", headers=pull_headers(bed, repo)
    )
    assert response.status_code == 307, response.text
    location: str = response.headers["Location"]
    return location


def test_v2_challenge_names_token_realm_and_service(bed: Bed) -> None:
    response = httpx.get(f"{bed.upstream_url}/v2/")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{bed.auth_realm}"' in challenge
    assert f'service="{bed.service}"' in challenge


def test_anonymous_token_pulls_public_manifest(bed: Bed) -> None:
    image = bed.images[HELLO]
    url = f"{bed.upstream_url}/v2/{HELLO}/manifests/{image.tag}"
    assert httpx.get(url).status_code == 401
    response = httpx.get(url, headers=pull_headers(bed, HELLO))
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert sha256_digest(response.content) == image.digest
    assert response.headers["Content-Type"] == image.media_type


def test_private_repo_needs_alice(bed: Bed) -> None:
    image = bed.images[PRIVATE]
    url = f"{bed.upstream_url}/v2/{PRIVATE}/manifests/{image.tag}"
    anonymous = httpx.get(url, headers=pull_headers(bed, PRIVATE))
    assert anonymous.status_code == 401
    assert f'scope="repository:{PRIVATE}:pull"' in anonymous.headers["WWW-Authenticate"]
    alice = httpx.get(url, headers=pull_headers(bed, PRIVATE, user=bed.user))
    assert alice.status_code == 200
    assert alice.headers["Docker-Content-Digest"] == image.digest


def test_token_server_rejects_wrong_password_and_logs_no_password(bed: Bed) -> None:
    params = {"service": bed.service, "scope": f"repository:{PRIVATE}:pull", "account": bed.user}
    wrong = httpx.get(bed.auth_realm, params=params, auth=(bed.user, "not-the-password"))
    assert wrong.status_code == 401
    right = httpx.get(bed.auth_realm, params=params, auth=(bed.user, bed.password))
    assert right.status_code == 200
    body = right.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] > 0 and body["issued_at"]
    log = bed.tokens.log.snapshot()
    assert [(r.status, r.basic_user, r.account) for r in log] == [
        (401, bed.user, bed.user),
        (200, bed.user, bed.user),
    ]
    assert bed.password not in repr(log)


def test_token_server_accepts_oauth_password_grant(bed: Bed) -> None:
    form = {
        "grant_type": "password",
        "username": bed.user,
        "password": bed.password,
        "service": bed.service,
        "scope": f"repository:{PRIVATE}:pull",
        "client_id": "docxy-tests",
    }
    response = httpx.post(bed.auth_realm, data=form)
    assert response.status_code == 200
    token = response.json()["access_token"]
    image = bed.images[PRIVATE]
    manifest = httpx.get(
        f"{bed.upstream_url}/v2/{PRIVATE}/manifests/{image.tag}",
        headers={"Authorization": f"Bearer {token}", "Accept": image.media_type},
    )
    assert manifest.status_code == 200


def test_front_passes_every_accept_line(bed: Bed) -> None:
    image = bed.images[HELLO]
    conn = http.client.HTTPConnection("127.0.0.1", bed.front.port, timeout=30)
    try:
        conn.putrequest("GET", f"/v2/{HELLO}/manifests/{image.amd64_digest}")
        conn.putheader("Authorization", pull_headers(bed, HELLO)["Authorization"])
        conn.putheader("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        conn.putheader("Accept", "application/vnd.oci.image.manifest.v1+json")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == image.children[image.amd64_digest]
    finally:
        conn.close()


def test_blob_get_redirects_to_cdn_which_refuses_authorization(bed: Bed) -> None:
    image = bed.images[HELLO]
    digest = image.blobs[-1]
    location = blob_location(bed, HELLO, digest)
    assert location.startswith(f"{bed.cdn_url}/")
    refused = httpx.get(location, headers={"Authorization": "Bearer anything"})
    assert refused.status_code == 403
    served = httpx.get(location)
    assert served.status_code == 200
    assert sha256_digest(served.content) == digest
    assert len(bed.front_log.blob_redirects()) == 1
    assert [r.status for r in bed.front_log.cdn_fetches()] == [403, 200]


def test_cdn_rejects_a_tampered_signature(bed: Bed) -> None:
    image = bed.images[HELLO]
    location = blob_location(bed, HELLO, image.blobs[0])
    assert httpx.get(location.replace("sig=", "sig=0")).status_code == 403


def test_blob_head_is_answered_by_the_registry_not_redirected(bed: Bed) -> None:
    image = bed.images[HELLO]
    digest = image.blobs[-1]
    response = httpx.head(
        f"{bed.upstream_url}/v2/{HELLO}/blobs/{digest}", headers=pull_headers(bed, HELLO)
    )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest
    assert int(response.headers["Content-Length"]) > 0


def test_cdn_serves_ranges(bed: Bed) -> None:
    image = bed.images["docxytest/multi"]
    digest = image.blobs[2]  # the 2 MiB noise layer
    location = blob_location(bed, "docxytest/multi", digest)
    whole = httpx.get(location).content
    size = len(whole)
    assert size > 1 << 20
    tail = httpx.get(location, headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
    assert tail.content == whole[1000:]
    middle = httpx.get(location, headers={"Range": "bytes=10-19"})
    assert (middle.status_code, middle.content) == (206, whole[10:20])
    beyond = httpx.get(location, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"


def test_ratelimit_headers_count_manifest_gets_only(bed: Bed) -> None:
    image = bed.images[HELLO]
    url = f"{bed.upstream_url}/v2/{HELLO}/manifests/{image.tag}"
    headers = pull_headers(bed, HELLO)
    first = httpx.get(url, headers=headers)
    head = httpx.head(url, headers=headers)
    second = httpx.get(url, headers=headers)
    assert first.headers["ratelimit-limit"] == "100;w=21600"
    assert first.headers["ratelimit-remaining"] == "99;w=21600"
    assert "ratelimit-remaining" not in head.headers
    assert head.headers["Docker-Content-Digest"] == image.digest
    assert second.headers["ratelimit-remaining"] == "98;w=21600"
    assert len(bed.front_log.manifest_requests("GET", HELLO)) == 2
    assert len(bed.front_log.manifest_requests("HEAD", HELLO)) == 1


def test_index_lists_both_platforms_and_children_resolve(bed: Bed) -> None:
    image = bed.images[HELLO]
    index = json.loads(image.manifest)
    platforms = {
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
    }
    assert platforms == {"linux/amd64", "linux/arm64"}
    headers = pull_headers(bed, HELLO)
    for digest, body in image.children.items():
        response = httpx.get(f"{bed.upstream_url}/v2/{HELLO}/manifests/{digest}", headers=headers)
        assert response.status_code == 200
        assert response.content == body


def _extract_image(bed: Bed, repo: str, root: Path) -> None:
    image = bed.images[repo]
    manifest = json.loads(image.children.get(image.amd64_digest, image.manifest))
    for layer in manifest["layers"]:
        data = httpx.get(blob_location(bed, repo, layer["digest"])).content
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(root, filter="tar")


@pytest.mark.parametrize("repo", ["library/hello", "docxytest/multi"])
def test_amd64_image_runs_cat(bed: Bed, repo: str, tmp_path: Path) -> None:
    chroot = need_binary("chroot")
    need_root("chroot needs root")
    _extract_image(bed, repo, tmp_path)
    result = subprocess.run(
        [chroot, str(tmp_path), "cat", "/docxy-test.txt"],
        capture_output=True,
        timeout=30,
        env={"PATH": "/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == bed.images[repo].content


def test_contents_differ_per_image(bed: Bed) -> None:
    contents = [image.content for image in bed.images.values()]
    assert len(set(contents)) == len(contents) == 3


def test_front_stop_and_start_keep_the_port(bed: Bed) -> None:
    url = f"{bed.upstream_url}/v2/"
    with httpx.Client() as client:
        assert client.get(url).status_code == 401  # leaves a pooled keep-alive connection
        bed.front.stop()
        with pytest.raises(httpx.TransportError):
            client.get(url)
        bed.front.start()
        assert client.get(url).status_code == 401


def test_fault_cuts_blob_mid_stream(bed: Bed) -> None:
    image = bed.images["docxytest/multi"]
    location = blob_location(bed, "docxytest/multi", image.blobs[2])
    bed.faults.add(Fault(site="cdn", kind="cut", after_bytes=4096))
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", location) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += chunk
    assert len(received) == 4096
    assert httpx.get(location).status_code == 200  # one-shot fault


def test_fault_corrupts_and_answers_status(bed: Bed) -> None:
    image = bed.images[HELLO]
    digest = image.blobs[-1]
    location = blob_location(bed, HELLO, digest)
    bed.faults.add(Fault(site="cdn", kind="corrupt", after_bytes=3))
    corrupted = httpx.get(location)
    assert corrupted.status_code == 200
    assert sha256_digest(corrupted.content) != digest
    bed.faults.add(
        Fault(
            site="front",
            kind="status",
            status=429,
            headers={"Retry-After": "7"},
            path_contains="/manifests/",
        )
    )
    limited = httpx.get(f"{bed.upstream_url}/v2/{HELLO}/manifests/{image.tag}")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_big_blob_is_pushed_streamed_and_served(bed: Bed) -> None:
    size = 5 * (1 << 20) + 123
    digest = bed.push_big_blob("docxytest/big", size, seed=1)
    assert digest == generated_digest(size, seed=1)
    hasher = hashlib.sha256()
    with httpx.stream("GET", blob_location(bed, "docxytest/big", digest)) as response:
        assert int(response.headers["Content-Length"]) == size
        for chunk in response.iter_bytes():
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest
