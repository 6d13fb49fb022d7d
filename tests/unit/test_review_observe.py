"""Review faults in observability (docxy.observe), each shown by a failing test first."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from docxy.cache.blobs import DiskBlobStore, Usage
from docxy.cli.main import setup_logging
from docxy.config import load_config
from docxy.core.digests import Digest
from docxy.edge.admission import Admission
from docxy.http.app import open_store
from docxy.http.health import probe_upstream
from docxy.http.middleware import AccessLog, Guard
from docxy.http.state import MirrorState, mirror_state
from docxy.observe import Observer, create_admin_app
from docxy.observe.status import status_report
from docxy.shared.objects import EMPTY_SHA256, Bucket, signed_headers
from docxy.tasks import spawn
from docxy.upstream.client import Upstream
from tests.unit.asgi import call_asgi
from tests.unit.test_observe_routes import BLOB, BLOB_DIGEST, blob_path, stack
from tests.unit.test_observe_routes import Upstream as RoutesUpstream
from tests.unit.turns import until

GUARD = 10.0  # seconds before a would-be hang becomes a test failure


async def test_metrics_read_the_mirror_on_its_event_loop_not_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob store, the upstream health and the counters are the event loop's alone (no
    locks). /metrics collected them in a worker thread: ``usage()`` there takes over the
    start-up index read (reassigning the store's index while the loop inserts into it: a
    blob committed meanwhile is lost from the index and the cap), and a Counter that gains
    its first key of a kind while the thread iterates it fails the scrape with 'dictionary
    changed size during iteration'. Collecting happens on the loop; only encoding may not."""
    config = load_config({"cache.dir": str(tmp_path / "cache")}, environ={})
    state = MirrorState(config, Upstream.from_config(config.upstream))
    state.cache = open_store(config)
    loop_thread = threading.current_thread()
    readers: list[threading.Thread] = []
    usage = DiskBlobStore.usage

    def watched(store: DiskBlobStore) -> Usage:
        readers.append(threading.current_thread())
        return usage(store)

    monkeypatch.setattr(DiskBlobStore, "usage", watched)
    admin = create_admin_app(Observer(state))
    async with admin.test_app():
        answer = await admin.test_client().get("/metrics")
    assert answer.status_code == 200
    assert b"docxy_cache_blobs" in await answer.get_data()
    assert readers and all(thread is loop_thread for thread in readers), readers


async def test_most_pulled_names_the_upstream_a_pull_went_to(tmp_path: Path) -> None:
    """'Most pulled' named each pull by its path alone, as if it were Docker Hub's: containerd
    pulling ghcr.io's owner/tool through its hosts.toml (?ns=ghcr.io) was listed as
    'owner/tool', and ghcr.io's one-component 'tool' as Docker Hub's official 'library/tool'.
    It now names them as the repository rules and a pull by path prefix do."""
    settings = {"upstreams": "ghcr.io=http://ghcr.test"}
    async with stack(tmp_path, settings=settings) as mirror:
        assert (await mirror.get("/v2/owner/tool/manifests/1?ns=ghcr.io")).status == 200
        assert (await mirror.get("/v2/tool/manifests/2?ns=ghcr.io")).status == 200
        assert (await mirror.get("/v2/ghcr.io/owner/tool/manifests/1")).status == 200
        assert (await mirror.get("/v2/tool/manifests/3")).status == 200
        top = dict(mirror.observer.pulls.top(10))
    assert top == {"ghcr.io/owner/tool:1": 2, "ghcr.io/tool:2": 1, "library/tool:3": 1}


async def test_two_upstreams_of_one_registry_make_one_sample_each_metric(tmp_path: Path) -> None:
    """Two upstream names for one registry (two mirror host names, say) made two samples with
    the same labels in each docxy_upstream_* family (they are labelled by the registry's host,
    and their health is one): Prometheus refuses a scrape with a duplicate series, so every
    metric of the mirror was lost. One sample per registry host now."""
    settings = {"upstreams": "a.example=http://lab.test,b.example=http://lab.test"}
    async with stack(tmp_path, settings=settings) as mirror:
        _, text = await mirror.admin_get("/metrics")
    up = [line for line in text.splitlines() if line.startswith("docxy_upstream_up{")]
    assert sorted(up) == sorted(set(up)), up
    assert len(up) == 2, up  # [upstream] and lab.test


class HeldBlob(httpx.AsyncByteStream):
    """The blob's first half at once, the rest once ``release`` is set."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BLOB[: len(BLOB) // 2]
        await self.release.wait()
        yield BLOB[len(BLOB) // 2 :]


@dataclass
class SlowBlobUpstream(RoutesUpstream):
    """Holds each blob download half-way until ``release`` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/blobs/{BLOB_DIGEST}") and request.method == "GET":
            self.seen.append(f"{request.method} {request.url.path}")
            length = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=length, stream=HeldBlob(self.release))
        return self(request)


async def test_a_client_joining_a_fill_is_no_miss_and_its_bytes_no_upstream_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two clients asking for one blob at once cost the upstream one download: the second
    follows the first's fill. It was counted as a second miss, its bytes as upstream bytes:
    misses and docxy_sent_bytes_total{source="upstream"} doubled what the upstream sent, and
    the status page's hit ratios (README: 'what cost the upstream no download') fell for the
    very requests the coalescing spared. The joiner is now ``cache=joined``, its bytes the
    cache's."""
    upstream = SlowBlobUpstream()
    async with stack(tmp_path, upstream=upstream, transport_handler=upstream.handle) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        answers = await mirror.two_on_one_fill(upstream.release)
        seen = await mirror.scrape()
        report = status_report(mirror.observer)
    assert [(a.status, a.body == BLOB) for a in answers] == [(200, True), (200, True)]
    assert [line for line in upstream.seen if "/blobs/" in line] == [f"GET {blob_path()}"]
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "docxy.access")
    assert [line.split(" cache=")[1].split()[0] for line in lines] == ["joined", "miss"], lines
    assert seen["docxy_cache_requests_total{outcome=miss,route=blob}"] == 1
    assert seen.get("docxy_cache_requests_total{outcome=joined,route=blob}") == 1
    assert seen["docxy_sent_bytes_total{source=upstream}"] == len(BLOB)
    assert seen["docxy_sent_bytes_total{source=cache}"] == len(BLOB)
    assert report["cache"]["hit_ratio"] == 0.5
    assert report["cache"]["byte_hit_ratio"] == 0.5


async def test_requests_a_limit_refuses_are_counted_by_the_setting_that_refused_them(
    tmp_path: Path,
) -> None:
    """A 429 of limits.manifests_per_minute or a 403 of access.deny_repositories was only a
    4xx among the 404s of images that do not exist (tests/e2e/test_observe_e2e.py shows the
    connection caps and server.run's wiring)."""
    settings = {"limits.manifests_per_minute": "1", "access.deny_repositories": "library/bad"}
    async with stack(tmp_path, settings=settings) as mirror:
        state = mirror_state(mirror.app)
        admission = Admission(mirror.app, state.config, state.access)
        mirror.observer.refusers.append(admission)  # as docxy.http.server.run does
        asgi = AccessLog(Guard(admission, None), mirror.observer)
        statuses = [
            (await call_asgi(asgi, "GET", path, host="mirror.test")).status
            for path in (
                "/v2/library/hello/manifests/latest",
                "/v2/library/hello/manifests/latest",
                "/v2/library/bad/manifests/latest",
            )
        ]
        seen = await mirror.scrape()
    assert statuses == [200, 429, 403]
    assert seen["docxy_refused_total{setting=limits.manifests_per_minute}"] == 1
    assert seen["docxy_refused_total{setting=access.repositories}"] == 1
    assert seen["docxy_refused_total{setting=limits.requests_per_minute}"] == 0
    assert seen["docxy_refused_total{setting=limits.fills_total}"] == 0  # read from the state


class BrokenBlob(httpx.AsyncByteStream):
    """The blob's first half, then the connection to the upstream breaks."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BLOB[: len(BLOB) // 2]
        raise httpx.ReadError("the upstream went away")


async def test_a_download_the_mirror_cut_is_not_logged_or_counted_as_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fill that broke off after the client's 200 had started cuts the client (never a
    short success): the access log still ended the line 'done', and /metrics had one more
    2xx and nothing else, so a dashboard of failed pulls stayed flat while clients retried.
    The line now says 'cut', and docxy_http_requests_unfinished_total counts it."""
    upstream = RoutesUpstream()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/blobs/{BLOB_DIGEST}") and request.method == "GET":
            length = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=length, stream=BrokenBlob())
        return upstream(request)

    async with stack(tmp_path, upstream=upstream, transport_handler=handle) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        answer = await mirror.get(blob_path())
        seen = await mirror.scrape()
        report = status_report(mirror.observer)
    assert answer.status == 200 and not answer.complete  # the client saw it cut
    [line] = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert line.endswith(" cut"), line
    unfinished = "docxy_http_requests_unfinished_total"
    assert seen.get(f"{unfinished}{{outcome=cut,route=blob}}") == 1
    assert seen[f"{unfinished}{{outcome=left,route=blob}}"] == 0
    assert report["traffic"]["cut"] == 1


async def test_a_client_leaving_mid_download_is_logged_as_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other way an answer ends unfinished: the client goes away (Quart stops sending).
    It is 'left', not 'done', and not counted as a download the mirror cut."""
    upstream = SlowBlobUpstream()
    async with stack(tmp_path, upstream=upstream, transport_handler=upstream.handle) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        # Once the 200 went out, the body on its way (held half-way upstream), the client leaves.
        answered = asyncio.Event()
        path = blob_path()
        leaving = call_asgi(
            mirror.asgi, "GET", path, host="mirror.test", started=answered, hang_up=answered
        )
        await asyncio.wait_for(leaving, GUARD)
        upstream.release.set()  # the fill goes on without the client
        seen = await mirror.scrape()
    [line] = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert line.endswith(" left"), line
    unfinished = "docxy_http_requests_unfinished_total"
    assert seen[f"{unfinished}{{outcome=left,route=blob}}"] == 1
    assert seen[f"{unfinished}{{outcome=cut,route=blob}}"] == 0


@pytest.fixture
def logger_levels() -> Iterator[None]:
    """Put back the levels ``setup_logging`` gives the libraries' loggers."""
    names = ("httpx", "httpcore", "botocore", "hpack", "hypercorn.error")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("logger_levels")
def test_debug_logs_never_show_a_shared_bucket_requests_signature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With log.level = DEBUG, botocore's signer logged every bucket request's canonical form
    and its SigV4 signature (the Authorization header, good for replaying that request for
    minutes), on lines of their own that break the one-line-per-event log. The libraries'
    loggers stay at WARNING, as httpx's always were."""
    setup_logging("DEBUG")
    caplog.set_level(logging.DEBUG)
    bucket = Bucket("http://127.0.0.1:8333", "b-1", "eu-west-3", "AKEY", "s3-secret-0123456789")
    headers = signed_headers(bucket, "GET", bucket.url(Digest("sha256", "ab" * 32)), EMPTY_SHA256)
    signature = headers["Authorization"].rpartition("Signature=")[2]
    assert len(signature) == 64
    assert signature not in caplog.text
    assert "CanonicalRequest" not in caplog.text


@pytest.mark.usefixtures("logger_levels")
def test_debug_logs_never_show_a_clients_http2_headers(caplog: pytest.LogCaptureFixture) -> None:
    """With ``limits.h2_max_streams`` allowing h2c, hypercorn decodes a client's HTTP/2
    headers with hpack, whose logger wrote every one at DEBUG: a client's ``Authorization``
    (its password, in Basic) on a line of its own. The libraries' loggers stay at WARNING,
    hpack's too."""
    import hpack

    setup_logging("DEBUG")
    caplog.set_level(logging.DEBUG)
    credentials = "Basic dXNlcjpodHRwMi1wYXNzd29yZA=="  # user:http2-password
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":path", "/v2/"), ("authorization", credentials)]
    )
    decoded = {str(name): str(value) for name, value in hpack.Decoder().decode(block)}
    assert decoded["authorization"] == credentials  # it was decoded, at DEBUG
    assert credentials not in caplog.text
    assert "dXNlcjpodHRwMi1wYXNzd29yZA" not in caplog.text


@dataclass
class TwoRegistries(RoutesUpstream):
    """upstream.test as the stack's upstream; ghcr.test answering every manifest with 503
    once ``ghcr_down`` (a CDN hop of it, too)."""

    ghcr_down: bool = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "ghcr.test" and self.ghcr_down and "/manifests/" in request.url.path:
            self.seen.append(f"ghcr {request.method} {request.url.path}")
            return httpx.Response(503, stream=httpx.ByteStream(b""))
        return super().__call__(request)


async def test_upstream_errors_are_counted_under_the_upstream_that_answered(
    tmp_path: Path,
) -> None:
    """A 429 or 5xx was counted under [upstream] whichever upstream answered it: with ghcr.io
    failing, docxy_upstream_errors_total{upstream="<Docker Hub>",kind="server_error"} rose
    while ghcr.io's had no such sample at all, so an alert named the wrong registry. Each
    upstream's answers are now counted under it (its CDN hops too: the upstream's health
    counts them, not the hook that sees only a host)."""
    upstream = TwoRegistries()
    settings = {"upstreams": "ghcr.io=http://ghcr.test"}
    async with stack(tmp_path, cache=False, settings=settings, upstream=upstream) as mirror:
        assert (await mirror.get("/v2/ghcr.io/owner/tool/manifests/1")).status == 200
        upstream.ghcr_down = True
        assert (await mirror.get("/v2/ghcr.io/owner/tool/manifests/1")).status == 503
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
        seen = await mirror.scrape()
    errors = "docxy_upstream_errors_total"
    assert seen[f"{errors}{{kind=server_error,upstream=ghcr.test}}"] == 1
    assert seen[f"{errors}{{kind=server_error,upstream=upstream.test}}"] == 0
    assert seen[f"{errors}{{kind=rate_limited,upstream=upstream.test}}"] == 0


async def test_a_failure_of_a_registry_two_upstreams_name_is_one_recent_error(
    tmp_path: Path,
) -> None:
    """Two upstream names for one registry share its health (keyed by its host): the status
    page's recent errors listed each of its failures once per name, as if it had failed
    twice (with a third name, three times). Each registry host's failures are listed once."""
    settings = {"upstreams": "a.example=http://lab.test,b.example=http://lab.test"}
    async with stack(tmp_path, settings=settings) as mirror:
        state = mirror_state(mirror.app)
        [lab] = [u for u in state.upstreams.all() if u.name == "a.example"]
        state.client.health_of(lab).failed("ConnectError talking to lab.test")
        status, body = await mirror.admin_get("/status.json")
    assert status == 200
    errors = [e for e in json.loads(body)["recent_errors"] if "lab.test" in e["message"]]
    assert len(errors) == 1, errors


async def test_the_upstream_probe_asks_each_registry_once_a_round(tmp_path: Path) -> None:
    """Two upstream names for one registry share its health: the minute's ``/v2/`` probe
    asked it once per name (two requests where one tells all), and while it was in trouble
    logged the same warning twice a minute. One probe per registry host a round now."""
    probes: list[str] = []
    upstream = RoutesUpstream()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            probes.append(request.url.host)
        return upstream(request)

    settings = {"upstreams": "a.example=http://lab.test,b.example=http://lab.test"}
    async with stack(tmp_path, settings=settings, transport_handler=handler) as mirror:
        task = spawn("probe", probe_upstream(mirror_state(mirror.app), interval=3600))
        try:
            await until(lambda: len(probes) >= 2)
            await asyncio.sleep(0.2)  # the round's last probe, if it makes one more
        finally:
            task.cancel()
    assert sorted(probes) == sorted(set(probes)), probes
    assert "lab.test" in probes, probes


async def test_an_upstream_under_a_path_prefix_counts_its_answers_by_route(
    tmp_path: Path,
) -> None:
    """A registry served under a prefix (``upstream.registry = http://upstream.test/mirror``,
    kept as given) is asked ``/mirror/v2/...``: every answer of it was counted under
    ``route="other"`` in docxy_upstream_responses_total, none under ``manifest`` or ``blob``,
    so a dashboard of upstream blob errors stayed empty however many failed."""
    upstream = RoutesUpstream()

    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/mirror")
        return upstream(httpx.Request(request.method, request.url.copy_with(path=path)))

    settings = {"upstream.registry": "http://upstream.test/mirror"}
    async with stack(tmp_path, settings=settings, transport_handler=handler) as mirror:
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
        assert (await mirror.get(blob_path())).status == 200
        seen = await mirror.scrape()
    responses = "docxy_upstream_responses_total"
    assert seen[f"{responses}{{route=manifest,status_class=2xx}}"] >= 1, seen
    assert seen[f"{responses}{{route=blob,status_class=2xx}}"] >= 1, seen


async def test_an_upstream_body_that_keeps_breaking_off_is_an_upstream_error(
    tmp_path: Path,
) -> None:
    """A fill whose upstream body keeps breaking off gives up after its resumes and cuts its
    clients, but the upstream's health never heard of it: /health stayed ``ok``,
    docxy_upstream_errors_total did not move and the status page's recent errors were
    empty; only the unfinished ``cut`` and one WARNING line showed it. It is now an upstream
    error of that upstream, of kind ``broke_off``, as a timeout or a 5xx is."""
    upstream = RoutesUpstream()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/blobs/{BLOB_DIGEST}") and request.method == "GET":
            length = {"Content-Length": str(len(BLOB))}  # a Range ignored: the whole, cut again
            return httpx.Response(200, headers=length, stream=BrokenBlob())
        return upstream(request)

    async with stack(tmp_path, upstream=upstream, transport_handler=handle) as mirror:
        answer = await mirror.get(blob_path())
        seen = await mirror.scrape()
        report = status_report(mirror.observer)
        health = json.loads((await mirror.get("/health")).body)
    assert answer.status == 200 and not answer.complete
    errors = "docxy_upstream_errors_total"
    assert seen[f"{errors}{{kind=broke_off,upstream=upstream.test}}"] == 1, seen
    assert health["status"] == "degraded"
    said = health["upstream"]["last_error_message"]
    assert BLOB_DIGEST in said and "broke off" in said and "ReadError" in said, said
    assert [e["kind"] for e in report["recent_errors"]] == ["broke_off"]


async def test_blob_answers_from_a_cdn_are_counted_as_blob_answers(tmp_path: Path) -> None:
    """A registry that redirects blob GETs to a CDN (Docker Hub does): the CDN's answer, the
    one with the blob's bytes (or its 5xx), was counted under ``route="other"`` in
    docxy_upstream_responses_total (its URL names no blob), so a dashboard of upstream blob
    answers saw the registry's 307s and none of the blobs. Each hop is counted by what the
    first one asked."""
    upstream = RoutesUpstream()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            return httpx.Response(200, stream=httpx.ByteStream(BLOB))
        if request.url.path.endswith(f"/blobs/{BLOB_DIGEST}") and request.method == "GET":
            return httpx.Response(307, headers={"Location": "http://cdn.test/x/data?sig=s"})
        return upstream(request)

    async with stack(tmp_path, upstream=upstream, transport_handler=handle) as mirror:
        answer = await mirror.get(blob_path())
        seen = await mirror.scrape()
    assert answer.status == 200 and answer.body == BLOB
    responses = "docxy_upstream_responses_total"
    assert seen.get(f"{responses}{{route=blob,status_class=3xx}}") == 1, seen
    assert seen.get(f"{responses}{{route=blob,status_class=2xx}}") == 1, seen
    assert not [key for key in seen if key.startswith(f"{responses}{{route=other")], seen
