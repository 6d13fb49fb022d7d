"""Small faults left over from earlier reviews, each shown by a failing test first."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from docxy.cache import RepoKey, open_cache
from docxy.cache.blobs import DiskBlobStore, Walked
from docxy.config import load_config
from docxy.core.digests import digest_of
from docxy.core.errors import UpstreamUnavailable
from docxy.http.app import open_store
from docxy.http.state import MirrorState, mirror_state
from docxy.observe import Observer, create_admin_app
from docxy.observe.metrics import RequestMetrics
from docxy.observe.status import status_report
from docxy.upstream.client import Upstream
from tests.unit.test_cachecli import HOST, Populated, _populate, run
from tests.unit.test_observe_routes import Upstream as RoutesUpstream
from tests.unit.test_observe_routes import stack

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


# --- 1: the read-only commands write nothing ------------------------------------------------


@pytest.mark.parametrize("action", ["ls", "du"])
def test_a_read_only_command_creates_nothing_in_a_cache_of_manifests_only(
    capsys: pytest.CaptureFixture[str], cache: Populated, action: str
) -> None:
    """A cache with ``manifests/`` and no ``blobs/`` (its blobs never kept, or removed by
    hand): ``docxy cache ls`` / ``du``, which only look, made ``blobs/`` (the blob index's
    walk did ``mkdir``), as whoever ran them: a root-owned folder in the mirror's cache."""
    shutil.rmtree(cache.root / "blobs")
    shutil.rmtree(cache.root / "tmp", ignore_errors=True)
    before = tree(cache.root)
    code, out, err = run(capsys, cache, action)
    assert code == 0, err
    assert "library/alpine:3.20" in out or "tags:" in out
    assert tree(cache.root) == before
    assert not (cache.root / "blobs").exists()


# --- 2: rm IMAGE:TAG@DIGEST takes only that tag ----------------------------------------------


def _tag_alpine_latest_too(cache: Populated) -> None:
    async def tag() -> None:
        store = open_cache(cache.root, max_size=1 << 20, tag_ttl=300)
        await store.manifests.set_tag(
            RepoKey(HOST, "library/alpine"), "latest", cache.alpine, public=True
        )

    asyncio.run(tag())


def _tags(capsys: pytest.CaptureFixture[str], cache: Populated) -> set[str]:
    code, out, _ = run(capsys, cache, "ls", "--tags")
    assert code == 0
    return {line.split()[2] for line in out.splitlines()}


def test_rm_tag_at_digest_untags_only_that_tag(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """``docxy cache rm alpine:3.20@DIGEST`` dropped the tag and untagged every tag on that
    digest: alpine:latest went too, though the user named 3.20 only."""
    _tag_alpine_latest_too(cache)
    code, out, err = run(capsys, cache, "rm", f"alpine:3.20@{cache.alpine}")
    assert code == 0, err
    assert out == f"untagged {HOST}/library/alpine:3.20 ({cache.alpine})\n"
    tags = _tags(capsys, cache)
    assert "library/alpine:latest" in tags and "library/alpine:3.20" not in tags


def test_rm_tag_at_a_digest_it_does_not_point_at_is_refused(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """The tag and the digest disagree: which one was meant is not for rm to guess; it says
    where the tag points and removes nothing (exit 1, as for what is not cached)."""
    code, out, err = run(capsys, cache, "rm", f"alpine:3.20@{cache.busybox}", "--blobs")
    assert code == 1
    assert out == ""
    assert f"library/alpine:3.20 points at {cache.alpine}, not {cache.busybox}" in err
    assert "library/alpine:3.20" in _tags(capsys, cache)
    assert cache.blob_path("busybox-l").exists()


def test_rm_tag_at_digest_of_a_tag_not_cached_says_so(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    code, out, err = run(capsys, cache, "rm", f"alpine:9@{cache.alpine}")
    assert code == 1
    assert out == ""
    assert "no tag library/alpine:9" in err
    assert "library/alpine:3.20" in _tags(capsys, cache)


# --- 3: what docxy_cache_requests_total's `uncached` counts ----------------------------------


def test_uncached_help_text_names_the_upstreams_answers_and_failures() -> None:
    """``uncached`` was said to be "private, not cacheable, or the disk failing"; it also
    counts an upstream's 404 passed through and a failed fetch with nothing cached."""
    from prometheus_client import CollectorRegistry

    metrics = RequestMetrics(CollectorRegistry())
    [family] = list(metrics.cache.collect())
    assert "upstream-answer" in family.documentation
    assert "upstream-failed" in family.documentation
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [row] = [line for line in readme.splitlines() if line.startswith("| `docxy_cache_requests")]
    assert "upstream-answer" in row and "upstream-failed" in row


# --- 4: the cache's size is not known while its index is read --------------------------------


async def test_cache_size_is_left_out_of_metrics_until_the_index_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start the blob index is read in a worker thread; meanwhile /metrics gave
    docxy_cache_size_bytes and docxy_cache_blobs as counted so far (0), so a dashboard saw
    the cache empty at each restart. They are left out until it is read, and
    docxy_cache_index_ready says which."""
    root = tmp_path / "cache"
    content = b"a blob " * 100
    digest = digest_of(content)
    path = root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    go = threading.Event()
    walk = DiskBlobStore._walk

    def held(store: DiskBlobStore, *, strict: bool = False) -> Walked:
        assert go.wait(30), "the test never let the index read go on"
        return walk(store, strict=strict)

    monkeypatch.setattr(DiskBlobStore, "_walk", held)
    config = load_config({"cache.dir": str(root)}, environ={})
    state = MirrorState(config, Upstream.from_config(config.upstream))
    state.cache = open_store(config)
    admin = create_admin_app(Observer(state))
    try:
        async with admin.test_app():
            reading = await (await admin.test_client().get("/metrics")).get_data(as_text=True)
            go.set()
            await state.cache.blobs.indexed()
            read = await (await admin.test_client().get("/metrics")).get_data(as_text=True)
    finally:
        go.set()
    lines = reading.splitlines()
    assert "docxy_cache_index_ready 0.0" in lines
    assert not [
        line for line in lines if line.startswith(("docxy_cache_size_bytes ", "docxy_cache_blobs "))
    ]
    assert "docxy_cache_max_size_bytes" in reading  # what is known stays
    lines = read.splitlines()
    assert "docxy_cache_index_ready 1.0" in lines
    assert f"docxy_cache_size_bytes {float(len(content))}" in lines
    assert "docxy_cache_blobs 1.0" in lines


# --- 5: an upstream answering /v2/ as no registry is a recent error --------------------------


async def test_an_upstream_that_is_no_registry_is_listed_in_recent_errors(
    tmp_path: Path,
) -> None:
    """A wrong upstream.registry (a web site's 404 on /v2/) turns /health degraded, but the
    status page's "Recent upstream errors" said "None.": it is listed there now, once for as
    long as it lasts (the probes that find it so again add nothing)."""
    upstream = RoutesUpstream()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(404, text="<html>Not Found</html>")
        return upstream(request)

    async with stack(tmp_path, transport_handler=handle) as mirror:
        state = mirror_state(mirror.app)
        for _ in range(3):  # docxy.http.health.probe_upstream's, each minute
            with pytest.raises(UpstreamUnavailable):
                await state.client.challenge(state.upstream, refresh=True)
        health = json.loads((await mirror.get("/health")).body)
        report = status_report(mirror.observer)
        status, page = await mirror.admin_get("/status")
    assert health["status"] == "degraded"
    errors = report["recent_errors"]
    assert [e["kind"] for e in errors] == ["not_registry"], errors
    assert "404 on /v2/" in errors[0]["message"]
    assert status == 200 and "404 on /v2/" in page
