"""The admin app's routes, fed by real requests through the mirror's ASGI stack.

The upstream is an ``httpx.MockTransport``; requests go through ``AccessLog(Guard(app))`` as
hypercorn would call them, so the observer sees what the access log sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.middleware import AccessLog, Guard
from docxy.http.state import mirror_state
from docxy.observe import Observer, create_admin_app
from docxy.observe.status import status_report
from docxy.tasks import spawn
from tests.unit import test_pull_blobs as pull_tests
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.turns import until

REGISTRY = "http://upstream.test"
STORE_HOST = "store.test"
SHARED = {
    "shared.endpoint": f"http://{STORE_HOST}:8333",
    "shared.bucket": "docxy-cache",
    "shared.access_key": "docxy",
    "shared.secret_key": "not-a-real-secret-0123456789",
}
BLOB = b"layer bytes " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "x", "digest": BLOB_DIGEST, "size": len(BLOB)},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still to be read, as from the network."""
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


def no_such_key(request: httpx.Request) -> httpx.Response:
    """An S3 store's answer for an object that is not there: a GET's ``NoSuchKey``, a HEAD's
    bodiless 404 (with the request id every S3 answer has): what the shared tier takes for a
    miss (a bare 404 is no S3 store's, and counts as the store failing)."""
    headers = {"x-amz-request-id": "18EE17D3BF0E9510", "Content-Type": "application/xml"}
    if request.method == "HEAD":
        return answer(404, b"", headers)
    code = b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
    return answer(404, code + b"</Error>", headers)


@dataclass
class Upstream:
    """An open registry (no auth); ``down`` makes every request fail to connect."""

    down: bool = False
    status: int | None = None  # answer every manifest request with this status
    seen: list[str] = field(default_factory=list)
    in_bucket: bool = False  # the shared bucket (STORE, with SHARED settings) holds the blob
    bucket_seen: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == STORE_HOST:
            said = self.bucket(request)
            # every answer of an S3 store has one (a web server's has none): the tier tells so
            said.headers.setdefault("x-amz-request-id", "18EE17D3BF0E9510")
            return said
        self.seen.append(f"{request.method} {request.url.path}")
        if self.down:
            raise httpx.ConnectError("connection refused")
        path = request.url.path
        if path == "/v2/":
            return answer(200, b"{}")
        if "/manifests/" in path:
            if self.status is not None:
                return answer(self.status, headers={"ratelimit-remaining": "0;w=21600"})
            headers = {
                "Content-Type": MANIFEST_TYPE,
                "Docker-Content-Digest": MANIFEST_DIGEST,
                "ratelimit-remaining": "99;w=21600",
                "ratelimit-limit": "100;w=21600",
            }
            return answer(200, MANIFEST, headers)
        if path.endswith(f"/blobs/{BLOB_DIGEST}"):
            return answer(200, BLOB)
        return answer(404, b'{"errors": [{"code": "NOT_FOUND", "message": "no"}]}')

    def bucket(self, request: httpx.Request) -> httpx.Response:
        """An S3-compatible store: the blob's object if ``in_bucket``, uploads taken."""
        self.bucket_seen.append(f"{request.method} {request.url.path}")
        if request.method == "PUT":
            return answer(200)
        if self.in_bucket and request.url.path.endswith(BLOB_DIGEST.removeprefix("sha256:")):
            return answer(200, BLOB, {"Content-Length": str(len(BLOB))})
        return no_such_key(request)


@dataclass
class Stack:
    app: Quart
    admin: Quart
    observer: Observer
    upstream: Upstream
    asgi: Any

    async def get(self, path: str, method: str = "GET") -> AsgiAnswer:
        return await call_asgi(self.asgi, method, path, host="mirror.test")

    async def two_on_one_fill(self, release: asyncio.Event) -> list[AsgiAnswer]:
        """Two GETs of :func:`blob_path`, the second joining the first's fill (the upstream
        holds its answer until ``release``, set once both are in): their answers."""
        store = mirror_state(self.app).running.blobs.store
        assert store is not None
        first = spawn("first", self.get(blob_path()))
        await until(lambda: store.fills_started == 1)
        second = spawn("second", self.get(blob_path()))
        await until(lambda: store.followers_joined == 1)
        release.set()
        return list(await asyncio.wait_for(asyncio.gather(first, second), 10))

    async def pulled(self) -> AsgiAnswer:
        """A GET of :func:`blob_path`, and its fill committed (when it verified)."""
        answer = await self.get(blob_path())
        await self.committed()
        return answer

    async def shared_health(self) -> dict[str, Any]:
        """/health's part for the shared tier."""
        shared = json.loads((await self.get("/health")).body)["shared"]
        assert isinstance(shared, dict)
        return shared

    async def committed(self) -> None:
        """Wait for the fills that verified to be committed (their clients are done first)."""
        await pull_tests.committed(self.app)

    async def admin_get(self, path: str) -> tuple[int, str]:
        response = await self.admin.test_client().get(path)
        return response.status_code, await response.get_data(as_text=True)

    async def scrape(self) -> dict[str, float]:
        status, text = await self.admin_get("/metrics")
        assert status == 200
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
        return found


@asynccontextmanager
async def stack(
    tmp_path: Path,
    *,
    cache: bool = True,
    settings: dict[str, str] | None = None,
    upstream: Upstream | None = None,
    transport_handler: Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
    | None = None,
) -> AsyncIterator[Stack]:
    """``transport_handler``: answers the upstream's requests instead of ``upstream``."""
    config = load_config(
        {
            "upstream.registry": REGISTRY,
            "cache.enabled": str(cache).lower(),
            "cache.dir": str(tmp_path / "cache"),
            **(settings or {}),
        },
        environ={},
    )
    upstream = upstream or Upstream()
    transport = httpx.MockTransport(transport_handler or upstream)
    app = create_app(config, probe=False, transport=transport)
    observer = Observer(mirror_state(app))
    observer.attach(app)
    async with app.test_app():
        yield Stack(
            app,
            create_admin_app(observer),
            observer,
            upstream,
            AccessLog(Guard(app, None), observer),
        )


def blob_path(name: str = "library/hello") -> str:
    return f"/v2/{name}/blobs/{BLOB_DIGEST}"


async def test_a_miss_then_a_hit_move_the_counters_they_should(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
        first = await mirror.get(blob_path())
        assert first.status == 200 and first.body == BLOB
        await mirror.committed()  # counted in the cache's size
        fetched = len(mirror.upstream.seen)
        second = await mirror.get(blob_path())
        assert second.status == 200 and second.body == BLOB
        assert len(mirror.upstream.seen) == fetched  # served from disk

        seen = await mirror.scrape()
    blob = "outcome=miss,route=blob"
    assert seen[f"docxy_cache_requests_total{{{blob}}}"] == 1
    assert seen["docxy_cache_requests_total{outcome=hit,route=blob}"] == 1
    assert seen["docxy_cache_requests_total{outcome=miss,route=manifest}"] == 1
    assert seen["docxy_sent_bytes_total{source=cache}"] == len(BLOB)
    assert seen["docxy_sent_bytes_total{source=upstream}"] == len(BLOB) + len(MANIFEST)
    assert seen["docxy_http_requests_total{method=GET,route=blob,status_class=2xx}"] == 2
    assert seen["docxy_upstream_responses_total{route=blob,status_class=2xx}"] == 1
    assert seen["docxy_upstream_duration_seconds_count{route=blob}"] == 1  # not the hit
    assert seen["docxy_cache_size_bytes{}"] == len(BLOB)
    assert seen["docxy_cache_fills_total{}"] == 1
    assert seen["docxy_open_requests{}"] == 0
    assert seen["docxy_upstream_ratelimit_remaining{upstream=upstream.test}"] == 99


@pytest.mark.parametrize("in_bucket", [True, False], ids=["in the bucket", "not there"])
async def test_a_fill_from_the_shared_bucket_is_told_apart_from_an_upstream_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, in_bucket: bool
) -> None:
    """In the access log (cache=shared), the metrics and the status report: a byte from the
    bucket is no upstream byte. Not there, the same request is an upstream miss as ever."""
    upstream = Upstream(in_bucket=in_bucket)
    async with stack(tmp_path, settings=SHARED, upstream=upstream) as mirror:
        caplog.set_level(logging.INFO, logger="docxy.access")
        first = await mirror.get(blob_path())
        assert first.status == 200 and first.body == BLOB
        second = await mirror.get(blob_path())  # then a local hit either way
        assert second.status == 200 and second.body == BLOB
        seen = await mirror.scrape()
        _, body = await mirror.admin_get("/status.json")
    blob_gets = [line for line in upstream.seen if line.startswith("GET /v2/library/hello/blobs")]
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(lines) == 2, lines
    report = json.loads(body)
    sent = report["traffic"]["sent_bytes"]
    if in_bucket:
        assert blob_gets == []  # only a free HEAD confirmed that the repository holds it
        assert " cache=shared " in lines[0], lines
        assert seen["docxy_cache_requests_total{outcome=shared,route=blob}"] == 1
        assert seen["docxy_cache_requests_total{outcome=miss,route=blob}"] == 0
        assert (sent["shared"], sent["upstream"], sent["cache"]) == (len(BLOB), 0, len(BLOB))
        assert report["cache"]["byte_hit_ratio"] == 1.0  # nothing came from the upstream
    else:
        assert len(blob_gets) == 1
        assert " cache=miss " in lines[0], lines
        assert seen["docxy_cache_requests_total{outcome=shared,route=blob}"] == 0
        assert (sent["shared"], sent["upstream"], sent["cache"]) == (0, len(BLOB), len(BLOB))
        assert report["cache"]["byte_hit_ratio"] == 0.5
    assert " cache=hit " in lines[1], lines
    assert report["cache"]["requests"]["hit"] == 1


async def test_the_main_listener_does_not_serve_metrics_or_status(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        for path in ("/metrics", "/status", "/status.json"):
            answer = await mirror.get(path)
            assert answer.status == 404, path
            assert b"docxy_" not in answer.body
            assert answer.headers["Content-Type"] == "application/json"
        status, _ = await mirror.admin_get("/v2/")
        assert status == 404  # and the admin app serves no registry


async def test_status_json_reports_pulls_hits_and_upstream(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        for _ in range(3):
            await mirror.get("/v2/library/hello/manifests/latest", "HEAD")
        await mirror.get("/v2/hello/manifests/latest")  # same image without the prefix
        await mirror.get("/v2/library/other/manifests/1.0")
        await mirror.get(f"/v2/library/other/manifests/{MANIFEST_DIGEST}")  # by digest: no pull
        await mirror.get(blob_path())
        await mirror.get(blob_path())
        status, body = await mirror.admin_get("/status.json")
    assert status == 200
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["top_images"] == [
        {"image": "library/hello:latest", "pulls": 4},
        {"image": "library/other:1.0", "pulls": 1},
    ]
    assert report["upstream"]["reachable"] is True
    assert report["cache"]["requests"]["hit"] >= 1
    assert 0 < report["cache"]["byte_hit_ratio"] < 1
    assert report["traffic"]["requests"] == 8
    assert report["recent_errors"] == []


async def test_absolute_form_targets_count_under_their_route_and_upstream(tmp_path: Path) -> None:
    """``GET http://host/v2/...`` (RFC 9112 §3.2.2) is the request its origin form would be:
    its route in the metrics, and a pull of the upstream its authority picks."""
    lab = {"upstreams": "lab.test=http://upstream.test", "upstreams.lab.test.hosts": "lab.example"}
    async with stack(tmp_path, settings=lab) as mirror:
        for target in ("/v2/", "/v2/team/tool/manifests/1", blob_path("team/tool")):
            answer = await mirror.get("http://lab.example" + target)
            assert answer.status == 200, target
        seen = await mirror.scrape()
        report = status_report(mirror.observer)
    for route in ("ping", "manifest", "blob"):
        assert seen[f"docxy_http_requests_total{{method=GET,route={route},status_class=2xx}}"] == 1
    assert not [name for name in seen if "route=other" in name]
    assert report["top_images"] == [{"image": "lab.test/team/tool:1", "pulls": 1}]


async def test_upstream_errors_reach_metrics_and_the_status_page(tmp_path: Path) -> None:
    async with stack(tmp_path, cache=False) as mirror:
        mirror.upstream.status = 503
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 503
        mirror.upstream.status = 429
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 429
        mirror.upstream.down = True
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 502
        seen = await mirror.scrape()
        report = status_report(mirror.observer)
        status, page = await mirror.admin_get("/status")
    host = "upstream=upstream.test"
    assert seen[f"docxy_upstream_errors_total{{kind=server_error,{host}}}"] == 1
    assert seen[f"docxy_upstream_errors_total{{kind=rate_limited,{host}}}"] == 1
    assert seen[f"docxy_upstream_errors_total{{kind=unreachable,{host}}}"] == 1
    assert seen[f"docxy_upstream_up{{{host}}}"] == 0
    assert seen["docxy_http_requests_total{method=GET,route=manifest,status_class=5xx}"] == 2
    assert report["status"] == "degraded"
    assert [e["kind"] for e in report["recent_errors"]] == [
        "unreachable",
        "rate_limited",
        "server_error",
    ]
    assert report["cache"]["enabled"] is False
    assert status == 200
    assert "unreachable" in page and "answered 429" in page


async def test_an_upstream_answering_5xx_is_up_but_failing(tmp_path: Path) -> None:
    """``docxy_upstream_up`` says the upstream answers at all (as the README's table says):
    a 503 keeps it 1; the errors counter and the last success are what tell it is failing."""
    async with stack(tmp_path, cache=False) as mirror:
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
        succeeded = (await mirror.scrape())[
            "docxy_upstream_last_success_timestamp_seconds{upstream=upstream.test}"
        ]
        mirror.upstream.status = 503
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 503
        seen = await mirror.scrape()
        health = json.loads((await mirror.get("/health")).body)
    host = "upstream=upstream.test"
    assert seen[f"docxy_upstream_up{{{host}}}"] == 1
    assert seen[f"docxy_upstream_errors_total{{kind=server_error,{host}}}"] == 1
    assert seen[f"docxy_upstream_last_success_timestamp_seconds{{{host}}}"] == succeeded
    assert health["status"] == "degraded"


@dataclass
class ClientLimited(Upstream):
    """Answers a client's own token with its account's rate limit."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Bearer client-token":
            self.seen.append(f"{request.method} {request.url.path} (client)")
            return answer(429, b"{}", {"ratelimit-remaining": "0;w=21600"})
        return super().__call__(request)


async def test_a_clients_own_rate_limit_does_not_degrade_the_mirror(tmp_path: Path) -> None:
    """A pass-through made with the client's own credentials hits that account's rate limit:
    the client gets the 429, the mirror stays ok, with no upstream error on its page."""
    async with stack(tmp_path, cache=False, upstream=ClientLimited()) as mirror:
        answered = await call_asgi(
            mirror.asgi,
            "GET",
            "/v2/library/hello/manifests/latest",
            host="mirror.test",
            headers=[("Authorization", "Bearer client-token")],
        )
        assert answered.status == 429
        assert mirror.upstream.seen == ["GET /v2/library/hello/manifests/latest (client)"]
        health = (await mirror.get("/health")).body
        seen = await mirror.scrape()
        status, body = await mirror.admin_get("/status.json")
    assert json.loads(health)["status"] == "ok"
    report = json.loads(body)
    assert report["status"] == "ok" and report["recent_errors"] == []
    assert report["upstream"]["ratelimit_remaining"] is None  # the client's, not the mirror's
    host = "upstream=upstream.test"
    assert seen.get(f"docxy_upstream_errors_total{{kind=rate_limited,{host}}}", 0) == 0
    assert seen[f"docxy_upstream_up{{{host}}}"] == 1
    assert seen["docxy_upstream_responses_total{route=manifest,status_class=4xx}"] == 1


async def test_metrics_never_label_by_repository(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        for n in range(20):
            await mirror.get(f"/v2/someone/repo{n}/manifests/tag{n}")
        seen = await mirror.scrape()
    assert not [name for name in seen if re.search(r"repo\d|someone", name)]
    assert seen["docxy_http_requests_total{method=GET,route=manifest,status_class=2xx}"] == 20


async def test_bad_paths_are_counted_not_crashed_on(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        answer = await mirror.get("/v2/library/hello/blobs/sha256:nothex")
        assert answer.status == 400
        seen = await mirror.scrape()
    assert seen["docxy_http_requests_total{method=GET,route=other,status_class=4xx}"] == 1
    assert seen["docxy_open_requests{}"] == 0


async def test_admin_root_redirects_to_the_page_and_unknown_paths_are_404(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        response = await mirror.admin.test_client().get("/")
        assert response.status_code == 302
        assert response.headers["Location"] == "/status"
        status, body = await mirror.admin_get("/nope")
    assert status == 404
    assert json.loads(body)["paths"] == ["/metrics", "/status", "/status.json"]


async def test_metrics_speak_openmetrics_to_a_scraper_that_asks(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        plain = await mirror.admin.test_client().get("/metrics")
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        open_metrics = await mirror.admin.test_client().get("/metrics", headers={"Accept": accept})
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await open_metrics.get_data(as_text=True)
        assert text.endswith("# EOF\n")
        assert "_created" not in text  # off for every encoder (make_registry)
        assert plain.headers["Cache-Control"] == "no-store"
