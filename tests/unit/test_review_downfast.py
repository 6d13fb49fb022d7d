"""An upstream that fails at the connection (a connect timeout, refused, unreachable; not a
registry slow to answer) is remembered as down for a short, growing while: a
cached pull then gets its stale tag at once instead of waiting the timeout again in every
request, while one request at a time still goes upstream (the probe) to see it back.

Measured with a real ``docxy serve`` and Distribution registry, the registry replaced by a
listener whose backlog is full (SYNs dropped) and ``connect_timeout=2``: a cached pull's
``HEAD`` and ``GET`` of its tag each waited the 2 s (10 s each at the default), every pull,
while the upstream stayed down; its ``/v2/`` and blobs did not wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from docxy.http.app import create_app
from docxy.http.state import mirror_state
from docxy.tasks import spawn
from docxy.upstream import outage
from tests.unit.asgi import AsgiAnswer, call_asgi

OCI_M = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = [("Accept", OCI_M)]
REPO = "team/app"
PATH = f"/v2/{REPO}/manifests/latest"
OTHER = f"/v2/{REPO}/manifests/stable"  # another tag, cached too
#: How long the down registry holds each request before its connect timeout.
WAIT = 0.6


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_M,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 2,
            "digest": _sha(b"{}"),
        },
        "layers": [],
    }
).encode()


class Registry:
    """One tag; ``down``: every request waits :data:`WAIT`, then its connect times out."""

    def __init__(self) -> None:
        self.down = False
        self.asked = 0  # requests that reached it (or waited on it) past /v2/

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path != "/v2/":
            self.asked += 1
        if self.down:
            await asyncio.sleep(WAIT)
            raise httpx.ConnectTimeout("timed out", request=request)
        if path == "/v2/":
            return httpx.Response(200)
        if path.rsplit("/", 1)[-1] not in ("latest", "stable", _sha(MANIFEST)):
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
            return httpx.Response(404, json=error)
        headers = {
            "Content-Type": OCI_M,
            "Content-Length": str(len(MANIFEST)),
            "Docker-Content-Digest": _sha(MANIFEST),
        }
        body = b"" if request.method == "HEAD" else MANIFEST
        return httpx.Response(200, headers=headers, content=body)


def _app(tmp_path: Path, registry: Registry) -> Any:
    config = load_config(
        {
            "upstream.registry": "https://registry.test",
            "upstream.connect_timeout": "1",
            "cache.dir": str(tmp_path / "cache"),
            "cache.tag_ttl": "1",
        },
        environ={},
    )
    return create_app(config, probe=False, transport=httpx.MockTransport(registry))


async def _pull(app: Any, path: str = PATH) -> tuple[AsgiAnswer, float]:
    started = time.monotonic()
    answer = await call_asgi(app, "GET", path, host="mirror.test", headers=ACCEPT)
    return answer, time.monotonic() - started


async def _cached_then_down(app: Any, registry: Registry) -> None:
    for path in (PATH, OTHER):
        first, _ = await _pull(app, path)
        assert first.status == 200
    await asyncio.sleep(1.1)  # past cache.tag_ttl: the next pull revalidates the tag
    registry.down = True


async def _taken_down(app: Any) -> None:
    """The pulls whose failures take the down registry down, each served stale after its wait."""
    for _ in range(outage.FAILURES_TO_HOLD):
        stale, waited = await _pull(app)
        assert stale.status == 200
        assert waited >= WAIT


async def test_a_cached_pull_waits_once_for_a_down_upstream_not_in_every_request(
    tmp_path: Path,
) -> None:
    registry = Registry()
    app = _app(tmp_path, registry)
    async with app.test_app():
        await _cached_then_down(app, registry)
        await _taken_down(app)  # the failures that find it down: waited for
        asked = registry.asked
        again, waited = await _pull(app)
        assert again.status == 200  # served stale, the upstream not tried
        assert again.headers.get("docker-content-digest") == _sha(MANIFEST)
        assert waited < WAIT / 2
        assert registry.asked == asked
        health = mirror_state(app).client.health_of(mirror_state(app).upstream)
        assert health.stale_served == outage.FAILURES_TO_HOLD + 1
        assert health.reachable is False
        assert "not tried" in (health.last_error_message or "")


async def test_one_probe_at_a_time_goes_once_the_hold_is_over_and_sees_the_upstream_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outage, "FIRST_HOLD", 0.3)
    registry = Registry()
    app = _app(tmp_path, registry)
    async with app.test_app():
        client = mirror_state(app).client
        await _cached_then_down(app, registry)
        await _taken_down(app)
        await asyncio.sleep(0.4)  # the hold is over: the next request is the probe
        asked = registry.asked
        probe = spawn("probe", _pull(app))
        await asyncio.sleep(0.1)
        # Another tag (the same one would join the probe's HEAD): not a second probe
        meanwhile, waited = await _pull(app, OTHER)
        assert meanwhile.status == 200
        assert waited < WAIT / 2
        probed, waited = await probe
        assert probed.status == 200  # the probe failed: served stale, after its wait
        assert waited >= WAIT
        assert registry.asked == asked + 1
        assert client.outages.down("registry.test", "https://registry.test/v2/")
        registry.down = False  # back; the probe after the doubled hold (0.6 s) sees it
        await asyncio.sleep(0.7)
        back, waited = await _pull(app)
        assert back.status == 200
        assert registry.asked > asked + 1
        assert not client.outages.down("registry.test", "https://registry.test/v2/")
        assert client.health_of(mirror_state(app).upstream).reachable is True
        await asyncio.sleep(1.1)  # past the tag's ttl: every request goes upstream again
        asked = registry.asked
        both = await asyncio.gather(_pull(app), _pull(app))
        assert [answer.status for answer, _ in both] == [200, 200]
        assert registry.asked > asked


async def test_a_request_with_nothing_cached_gets_the_same_error_at_once(tmp_path: Path) -> None:
    registry = Registry()
    app = _app(tmp_path, registry)
    async with app.test_app():
        await _cached_then_down(app, registry)
        await _taken_down(app)
        cold, waited = await _pull(app, f"/v2/{REPO}/manifests/other")
        assert waited < WAIT / 2
        assert cold.status == 504  # as after the timeout: the registry did not answer
        assert json.loads(cold.body)["errors"][0]["code"] == "UNAVAILABLE"
        assert "not tried" in json.loads(cold.body)["errors"][0]["message"]


def test_the_hold_doubles_to_a_minute_per_upstream_and_any_answer_ends_it() -> None:
    now = [100.0]
    outages = outage.Outages(clock=lambda: now[0], wall=lambda: 0.0)
    told: list[tuple[str, str]] = []

    def tell(said: str, kind: str) -> None:
        told.append((said, kind))

    a, b = "https://a.test/v2/x/manifests/1", "https://b.test/v2/"
    for _ in range(outage.FAILURES_TO_HOLD):
        with outages.attempt("a.test", a, tell):  # sent: not down yet
            outages.failed("a.test", a, "GET a.test ConnectError", timeout=False)
    holds = []
    for _ in range(6):
        with pytest.raises(UpstreamUnavailable, match="not tried"):
            outages.attempt("a.test", a, tell)  # held: not sent
        with outages.attempt("b.test", b, tell):  # another upstream: sent
            pass
        began = now[0]
        while True:  # the first request once the hold is over is the probe
            now[0] += 0.5
            try:
                probe = outages.attempt("a.test", a, tell)
            except UpstreamUnavailable:
                continue
            break
        holds.append(now[0] - began)
        with probe:
            with pytest.raises(UpstreamUnavailable):  # one probe at a time
                outages.attempt("a.test", a, tell)
            outages.failed("a.test", a, "GET a.test ConnectError", timeout=False)
    assert holds == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert told[0] == (told[0][0], "unreachable")
    outages.answered("a.test", "https://a.test/v2/")  # any answer of its origin: up
    for _ in range(outage.FAILURES_TO_HOLD):
        with outages.attempt("a.test", a, tell):
            outages.failed("a.test", a, "GET a.test ConnectTimeout", timeout=True)
    now[0] += 5.0
    with outages.attempt("a.test", a, tell):  # the hold starts at 5 s again
        with pytest.raises(UpstreamTimeout):
            outages.attempt("a.test", a, tell)


def test_failures_at_the_connection_between_answers_take_nothing_down() -> None:
    """One connection refused now and then (one of a registry's addresses, a reset), answers
    between: every request is still sent; only failures in a row take the origin down."""
    outages = outage.Outages(clock=lambda: 100.0, wall=lambda: 0.0)
    told: list[tuple[str, str]] = []
    url = "https://a.test/v2/x/manifests/1"
    for _ in range(10):
        for _ in range(2):  # two in a row, then an answer
            with outages.attempt("a.test", url, lambda said, kind: told.append((said, kind))):
                outages.failed("a.test", url, "GET a.test ConnectError", timeout=False)
        with outages.attempt("a.test", url, lambda said, kind: told.append((said, kind))):
            outages.answered("a.test", url)
    assert not outages.down("a.test", url)
    assert told == []


def test_a_burst_failing_together_holds_it_down_for_the_first_hold_only() -> None:
    """Ten requests sent together, all refused (review s45 r4): the third failure takes the
    origin down for 5 s; the seven after it were sent before, not as its probe, and leave the
    hold alone (each doubled it: a minute after one blip). Only a failed probe doubles it."""
    now = [1000.0]
    outages = outage.Outages(clock=lambda: now[0], wall=lambda: 0.0)
    told: list[str] = []
    url = "https://a.test/v2/x/manifests/1"
    sent = [outages.attempt("a.test", url, lambda said, kind: told.append(said)) for _ in range(10)]
    for request in sent:
        with request:
            outages.failed("a.test", url, "GET a.test ConnectError", timeout=False)
    assert outages.down("a.test", url)
    now[0] += outage.FIRST_HOLD + 0.1
    with outages.attempt("a.test", url, lambda said, kind: told.append(said)):  # the probe
        outages.failed("a.test", url, "GET a.test ConnectError", timeout=False)
    now[0] += outage.FIRST_HOLD + 0.1  # the probe failed: held twice as long
    with pytest.raises(UpstreamUnavailable, match="not tried"):
        outages.attempt("a.test", url, lambda said, kind: told.append(said))
    now[0] += outage.FIRST_HOLD
    with outages.attempt("a.test", url, lambda said, kind: told.append(said)):
        outages.answered("a.test", url)
    assert not outages.down("a.test", url)
