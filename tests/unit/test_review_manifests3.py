"""Review of the manifest path as Docker, containerd and skopeo use it (``docxy.pull.manifests``).

The upstream is the in-process hub of ``test_pull_scoped_blobs`` (an ``httpx.MockTransport``:
no socket at all), which scopes manifests to repositories as Distribution does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.pull.manifests import acceptable
from docxy.upstream.client import MAX_SMALL_BODY
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import TAG, HeadWithout, pulled_then_stale
from tests.unit.test_pull_scoped_blobs import (
    ANON,
    AS_ANON,
    DOCKER_MANIFEST,
    Hub,
    anonymous_token,
    digest_of,
    get,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: What containerd's resolver sends with its HEAD and GET of a manifest.
CONTAINERD_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])


@pytest.mark.parametrize("ref", ["tag", "digest"])
async def test_a_head_relayed_from_an_upstream_head_without_a_type_names_the_manifests_type(
    tmp_path: Path, ref: str
) -> None:
    """containerd resolves a tag (and a digest-pinned image) by HEAD and takes the manifest's
    media type from that answer's ``Content-Type``. An upstream whose HEAD names no type (a
    front that drops it) had the mirror answer with an empty ``Content-Type``: containerd then
    holds a descriptor of no media type, which it cannot unpack. Distribution, as a pull-through
    cache, answers a HEAD from the manifest it GETs; so does the mirror now: the type is the
    GET's, the manifest is cached, and the client's GET by digest that follows is a hit."""
    hub = HeadWithout("content-type")
    manifest = hub.repos["library/base"].manifests["1"]
    digest = digest_of(manifest)
    hub.repos["library/base"].manifests[digest] = manifest
    path = TAG if ref == "tag" else f"/v2/library/base/manifests/{digest}"
    headers = [*AS_ANON.items(), ("Accept", CONTAINERD_ACCEPT)]
    async with mirror(tmp_path, hub) as app:
        answer = await call_asgi(app, "HEAD", path, host="mirror.test", headers=headers)
        assert answer.status == 200
        assert answer.headers.get("Content-Type") == DOCKER_MANIFEST
        assert answer.headers["Docker-Content-Digest"] == digest
        assert answer.headers["Content-Length"] == str(len(manifest))
        by_digest = f"/v2/library/base/manifests/{digest}"
        assert await get(app, by_digest) == (200, manifest)
    assert hub.seen("GET", "manifests", mirror=False) == []  # nothing passed through
    assert hub.seen("HEAD", "manifests", mirror=False) == []
    assert hub.seen("GET", "manifests") == [path]  # the HEAD's; the client's GET was a hit


async def test_a_head_the_upstream_answers_without_a_digest_costs_no_get_of_the_mirrors(
    tmp_path: Path,
) -> None:
    """A HEAD is free on Docker Hub, a manifest GET a counted pull, outside the client's
    ``limits.manifests_per_minute`` (which counts GETs). Answering a HEAD from the mirror's own
    GET is taken only when the upstream's HEAD named the digest (the client's GET by digest is
    next, a hit then: one counted pull either way); without one, each HEAD of every tag cost a
    GET (and again at each tag_ttl), where it used to be the client's own HEAD, passed through."""
    hub = HeadWithout("docker-content-digest")
    headers = [*AS_ANON.items(), ("Accept", CONTAINERD_ACCEPT)]
    async with mirror(tmp_path, hub) as app:
        for _ in range(3):
            answer = await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=headers)
            assert answer.status == 200
    assert hub.seen("GET", "manifests") == []


@pytest.mark.parametrize(
    ("accept", "taken"),
    [
        ([f"{DOCKER_MANIFEST};q=0, */*"], False),
        ([f"{DOCKER_MANIFEST}; q=0.0", "*/*"], False),
        ([f"{DOCKER_MANIFEST};Q=0.000, {OCI_MANIFEST}"], False),
        (["*/*;q=0"], False),
        ([f"application/*;q=0, {OCI_MANIFEST}"], False),
        ([f"{DOCKER_MANIFEST};q=0.1, */*;q=0"], True),
        ([f"{DOCKER_MANIFEST};q=1, */*;q=0"], True),
        ([f"{OCI_MANIFEST};q=0, */*"], True),
        ([f"{DOCKER_MANIFEST};q=0.5"], True),
        ([f"{DOCKER_MANIFEST};q=bad"], True),  # an unreadable weight: as if none
        (["application/*"], True),
        ([], True),
        ([""], True),
    ],
)
def test_acceptable_honours_a_weight_of_zero(accept: list[str], taken: bool) -> None:
    """RFC 9110 §12.4.2: a weight of 0 means "not acceptable", and the most specific range
    that matches a type gives its weight. ``acceptable`` dropped every parameter, so a type a
    client excluded with ``q=0`` was one it took."""
    assert acceptable(DOCKER_MANIFEST, accept) is taken


async def test_a_cached_manifest_of_a_type_the_client_excludes_with_q0_is_not_served(
    tmp_path: Path,
) -> None:
    """A client that excludes the cached manifest's type with ``q=0`` is not sent it from the
    cache: its request goes upstream with its own ``Accept`` (the registry may have another
    form of the image for it)."""
    hub = HeadWithout("nothing")  # the plain hub
    async with mirror(tmp_path, hub) as app:
        assert (await get(app, TAG))[0] == 200  # cached, a Docker schema 2 manifest
        accept = f"{DOCKER_MANIFEST};q=0, {OCI_MANIFEST}, */*;q=0.1"
        response = await app.test_client().get(TAG, headers={**AS_ANON, "Accept": accept})
        assert response.headers["Cache-Status"].endswith("fwd=bypass; detail=not-cacheable")
        assert hub.seen("GET", "manifests", mirror=False) == [TAG]
        [passed] = [r for r in hub.requests if r.headers.get("authorization") == ANON]
        assert passed.headers["accept"] == accept


@pytest.mark.parametrize("length", [True, False])
async def test_a_tag_moved_to_a_manifest_over_the_size_cap_is_passed_through_not_served_stale(
    tmp_path: Path, length: bool
) -> None:
    """A cached tag whose upstream now names a manifest larger than the mirror reads (4 MiB):
    the mirror's GET of it stops at the cap, and that was taken for an upstream failure, so
    the old image was served stale at every pull while the upstream was up, though a HEAD
    (containerd's) named the new digest. Such a manifest is one the mirror does not cache: the
    pull passes through, and the client gets what the tag names now. An upstream HEAD naming
    the length spares the mirror that GET (a counted pull on Docker Hub)."""
    hub = Hub() if length else HeadWithout("content-length")
    old = hub.repos["library/base"].manifests["1"]
    pad = "x" * (MAX_SMALL_BODY + 1)
    big = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "pad": pad}).encode()
    async with mirror(tmp_path, hub) as app:
        await pulled_then_stale(app, old)
        hub.repos["library/base"].manifests["1"] = big
        head = await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=AS_ANON.items())
        assert head.headers["Docker-Content-Digest"] == digest_of(big)
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.headers["Docker-Content-Digest"] == digest_of(big)
        assert await response.get_data() == big
        assert "fwd=bypass" in response.headers["Cache-Status"]
    if length:
        assert hub.seen("GET", "manifests") == [TAG]  # the first pull's only


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_digest_the_upstream_does_not_have_is_its_404_and_forgets_no_tag(
    tmp_path: Path, method: str
) -> None:
    """A pull by a digest the upstream does not hold gets the upstream's 404 (relayed from the
    mirror's own GET or HEAD), never a 5xx or another manifest, and the mirror's 404 for a
    digest forgets no tag."""
    hub = Hub()
    manifest = hub.repos["library/base"].manifests["1"]
    missing = f"/v2/library/base/manifests/{digest_of(b'nothing of the kind')}"
    async with mirror(tmp_path, hub) as app:
        anonymous_token(app)  # AS_ANON was relayed for an anonymous pull
        assert await get(app, TAG) == (200, manifest)
        answer = await call_asgi(app, method, missing, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 404
        assert "fwd=miss; fwd-status=404" in answer.headers["Cache-Status"]
        hub.down = True  # the tag is still cached: served from the cache
        assert await get(app, TAG) == (200, manifest)


async def test_a_head_of_a_moved_tag_agrees_with_the_get_by_tag_that_follows(
    tmp_path: Path,
) -> None:
    """A cached tag moved upstream, its TTL over: a client's HEAD names the new digest, and a
    GET of the tag that follows (docker, skopeo) sends the new manifest under that digest."""
    hub = Hub()
    old = hub.repos["library/base"].manifests["1"]
    new = hub.repos["library/app"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        await pulled_then_stale(app, old)
        hub.repos["library/base"].manifests["1"] = new
        head = await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=AS_ANON.items())
        assert head.headers["Docker-Content-Digest"] == digest_of(new)
        assert head.headers["Content-Length"] == str(len(new))
        response = await app.test_client().get(TAG, headers=AS_ANON)
        assert response.headers["Docker-Content-Digest"] == digest_of(new)
        assert await response.get_data() == new
