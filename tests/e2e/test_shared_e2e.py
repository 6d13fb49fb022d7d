"""Several replicas, one shared cache: two mirror processes, each with its own disk cache, share
one bucket of a real S3-compatible object store (SeaweedFS on loopback) in front of the bed.

- a blob pulled through replica A is uploaded, and replica B serves it with no blob GET at the
  upstream (neither the front's redirect nor the CDN): only the free HEAD that confirms the
  repository holds it; A's access log says `cache=miss`, B's `cache=shared`;
- with the object store down, B pulls from the upstream as without it, and /health says so
  under "shared" while the mirror's status stays "ok";
- a private layer in the bucket is not served by another replica under a public repository's
  name (the pairing rule holds for blobs from the bucket);
- a corrupt object is never served: the fill from it fails verification (the client sees a
  broken transfer, as with a corrupt upstream), and the next GET fills from the upstream, whose
  verified copy then replaces the object.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from docxy.core.digests import parse_digest
from docxy.shared.objects import Bucket, ObjectStore, signed_headers
from lab.bed import Bed
from lab.mirror import Mirror
from lab.objectstore import ObjectStore as Weed
from lab.ports import free_port
from tests.conftest import StartMirror
from tests.e2e.test_cache_e2e import bearer, blob_files, committed
from tests.e2e.waiting import poll
from tests.unavailable import need_binary

pytestmark = pytest.mark.e2e

HELLO = "library/hello"
PRIVATE = "docxytest/private"
MiB = 1 << 20
DEADLINE = 60.0


def fresh_prefix() -> str:
    """Each test's own keys in the module's one bucket."""
    return f"test-{os.getpid()}-{time.monotonic_ns()}"


def replica(
    start_mirror: StartMirror,
    cache: Path,
    store: Weed,
    prefix: str,
    endpoint: str = "",
    admin_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Mirror:
    """A mirror with its own disk cache and the shared tier on (the secret in the env)."""
    settings = {
        "server.admin_listen": f"127.0.0.1:{admin_port}" if admin_port else "",
        "shared.endpoint": endpoint or store.url,
        "shared.bucket": store.bucket,
        "shared.access_key": store.access_key,
        "shared.prefix": prefix,
    }
    args = ["--cache-dir", str(cache)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return start_mirror(*args, env={"DOCXY_SHARED_SECRET_KEY": store.secret_key, **(env or {})})


def shared_health(url: str) -> dict[str, object]:
    """The ``shared`` detail of the /health of the mirror at ``url``, with its ``status``."""
    report = httpx.get(f"{url}/health", timeout=10).json()
    assert isinstance(report, dict)
    shared = report["shared"]
    assert isinstance(shared, dict)
    return {**shared, "status": report["status"]}


def get_blob(url: str, digest: str) -> tuple[int, str, str]:
    """(status, sha256 of the bytes received, error) of one blob GET through the mirror at
    ``url``."""
    hasher = hashlib.sha256()
    status, error = 0, ""
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            headers = bearer(client, HELLO)
            with client.stream("GET", f"/v2/{HELLO}/blobs/{digest}", headers=headers) as answer:
                status = answer.status_code
                for chunk in answer.iter_bytes():
                    hasher.update(chunk)
    except httpx.HTTPError as exc:
        error = repr(exc)
    return status, "sha256:" + hasher.hexdigest(), error


def blob_fetches(bed: Bed) -> int:
    """Blob GETs the upstream served: the front's redirects and the CDN's downloads."""
    return len(bed.front_log.blob_redirects()) + len(bed.front_log.cdn_fetches())


def object_bytes(store: Weed, prefix: str, digest: str) -> bytes | None:
    async def read() -> bytes | None:
        async with httpx.AsyncClient(timeout=30) as client:
            objects = ObjectStore(_bucket(store, prefix), client)
            answer = await objects.open(parse_digest(digest))
            if answer is None:
                return None
            try:
                return await answer.aread()
            finally:
                await answer.aclose()

    return asyncio.run(read())


def put_object(store: Weed, prefix: str, digest: str, data: bytes) -> None:
    """Store ``data`` under ``digest``'s key, signed for ``digest`` (SeaweedFS does not check
    the payload hash; the mirror's own uploads check what they send)."""
    bucket = _bucket(store, prefix)
    url = bucket.url(parse_digest(digest))
    headers = signed_headers(bucket, "PUT", url, parse_digest(digest).hex)
    assert httpx.put(url, content=data, headers=headers, timeout=30).status_code == 200


def _bucket(store: Weed, prefix: str) -> Bucket:
    return Bucket(store.url, store.bucket, store.region, store.access_key, store.secret_key, prefix)


def test_a_blob_pulled_through_one_replica_comes_from_the_bucket_on_the_other(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    need_binary("weed")
    digest = bed.push_big_blob(HELLO, 3 * MiB + 17, seed=41)
    prefix = fresh_prefix()
    a = replica(start_mirror, tmp_path / "cache-a", weed, prefix)
    admin = free_port()
    b = replica(start_mirror, tmp_path / "cache-b", weed, prefix, admin_port=admin)
    assert get_blob(a.url, digest) == (200, digest, "")
    poll(lambda: shared_health(a.url)["uploaded"] == 1, DEADLINE, "replica A uploaded the blob")
    stored = object_bytes(weed, prefix, digest)
    assert stored is not None and "sha256:" + hashlib.sha256(stored).hexdigest() == digest

    bed.front_log.clear()
    assert get_blob(b.url, digest) == (200, digest, "")
    assert blob_fetches(bed) == 0, bed.front_log.where(lambda r: True)
    heads = bed.front_log.where(lambda r: r.kind == "blob" and r.method == "HEAD")
    assert len(heads) == 1  # B confirmed that the repository holds it before serving it
    committed(tmp_path / "cache-b", digest)  # B's own disk cache holds it now
    health = shared_health(b.url)
    assert health["hits"] == 1 and health["corrupt"] == 0
    # The access logs tell the two fills apart (the line is written once the request ended).
    line = f"GET /v2/{HELLO}/blobs/{digest} 200 {3 * MiB + 17} bytes cache="
    poll(lambda: line + "miss " in a.log_text(), DEADLINE, "A's access log: cache=miss")
    poll(lambda: line + "shared " in b.log_text(), DEADLINE, "B's access log: cache=shared")
    assert health["uploaded"] == 0  # nothing to upload: it came from the bucket
    # A second pull through B is a local hit: neither the upstream nor the bucket is asked.
    assert get_blob(b.url, digest) == (200, digest, "")
    assert blob_fetches(bed) == 0 and shared_health(b.url)["hits"] == 1
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    assert "docxy_shared_up 1.0" in metrics
    assert 'docxy_shared_blobs_total{result="hit"} 1.0' in metrics
    assert 'docxy_shared_uploads_total{result="uploaded"} 0.0' in metrics


@contextmanager
def dead_store(kind: str) -> Iterator[str]:
    """An endpoint that refuses connections, or one that takes them and never answers."""
    if kind == "refusing":
        yield f"http://127.0.0.1:{free_port()}"  # nothing listens there
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the backlog; nothing is ever read
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["refusing", "silent"])
def test_with_the_object_store_down_a_replica_pulls_from_the_upstream(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed, kind: str
) -> None:
    need_binary("weed")
    digest = bed.push_big_blob(HELLO, MiB + 5, seed=42 + len(kind))
    with dead_store(kind) as dead:
        admin = free_port()
        mirror = replica(
            start_mirror, tmp_path / "cache", weed, fresh_prefix(), endpoint=dead, admin_port=admin
        )
        assert get_blob(mirror.url, digest) == (200, digest, "")
        assert len(bed.front_log.cdn_fetches()) == 1
        health = shared_health(mirror.url)
        assert health["reachable"] is False
        assert "last_error" not in health and "endpoint" not in health  # the operator's only:
        status = httpx.get(f"http://127.0.0.1:{admin}/status.json", timeout=10).json()
        assert status["shared"]["last_error"] and status["shared"]["endpoint"] == dead
        assert health["status"] == "ok"  # a detail, not a failure of the mirror
        assert health["hits"] == 0


def test_a_corrupt_object_is_never_served_and_the_next_pull_fills_from_the_upstream(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    need_binary("weed")
    size = 2 * MiB + 3
    digest = bed.push_big_blob(HELLO, size, seed=43)
    prefix = fresh_prefix()
    mirror = replica(start_mirror, tmp_path / "cache", weed, prefix)
    bad = bytes(size)  # same length, wrong bytes
    put_object(weed, prefix, digest, bad)

    status, received, error = get_blob(mirror.url, digest)
    assert not (status == 200 and received == digest and not error)  # never a right-looking 200
    assert (status, error) != (200, "")  # the client saw the failure
    assert digest not in blob_files(tmp_path / "cache")
    poll(
        lambda: shared_health(mirror.url)["corrupt"] == 1,
        DEADLINE,
        "the corrupt object is reported",
    )

    bed.front_log.clear()
    assert get_blob(mirror.url, digest) == (200, digest, "")
    assert len(bed.front_log.cdn_fetches()) == 1  # from the upstream this time
    # The verified copy replaces the bad object (an upload that is not skipped as "there").
    poll(lambda: shared_health(mirror.url)["uploaded"] == 1, DEADLINE, "the good copy is uploaded")
    stored = object_bytes(weed, prefix, digest)
    assert stored is not None and "sha256:" + hashlib.sha256(stored).hexdigest() == digest


def test_a_private_layer_in_the_bucket_is_not_served_under_another_name(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    """Both replicas read the upstream with an account that may read the private repository
    (the worst case): B has the layer in the bucket, but the public repository does not hold it
    upstream, so B never serves it under that name, to anonymous or token-holding clients."""
    need_binary("weed")
    private, public = bed.images[PRIVATE], bed.images[HELLO]
    only_private = sorted(set(private.blobs) - set(public.blobs))
    assert only_private
    account = {"DOCXY_UPSTREAM_USERNAME": bed.user, "DOCXY_UPSTREAM_PASSWORD": bed.password}
    prefix = fresh_prefix()
    a = replica(start_mirror, tmp_path / "cache-a", weed, prefix, env=account)
    b = replica(start_mirror, tmp_path / "cache-b", weed, prefix, env=account)
    with httpx.Client(base_url=a.url, timeout=30) as client:
        contents = {d: client.get(f"/v2/{PRIVATE}/blobs/{d}") for d in only_private}
    assert all(answer.status_code == 200 for answer in contents.values())
    count = len(only_private)
    poll(
        lambda: shared_health(a.url)["uploaded"] == count, DEADLINE, "A uploaded the private layers"
    )

    with httpx.Client(base_url=b.url, timeout=30) as client:
        token = client.get(
            "/auth/token", params={"service": bed.service, "scope": f"repository:{HELLO}:pull"}
        ).json()["token"]
        for digest, content in contents.items():
            for auth in ({}, {"Authorization": f"Bearer {token}"}):
                for method in ("GET", "HEAD"):
                    leaked = client.request(method, f"/v2/{HELLO}/blobs/{digest}", headers=auth)
                    assert leaked.status_code in (401, 404), (method, leaked.status_code)
                    assert content.content not in leaked.content
    # The rule, not a missing object, kept them in: B did read them from the bucket.
    assert shared_health(b.url)["hits"] == count
