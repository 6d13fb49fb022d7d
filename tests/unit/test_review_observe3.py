"""Review faults in observability (docxy.observe, a third review): each test asserts the right
behaviour; each failed on the code it was written against."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from docxy.config import HostPort
from docxy.http.state import mirror_state
from docxy.observe import create_admin_app
from docxy.observe.recent import TopCounts
from docxy.tasks import spawn
from tests.unit.asgi import call_asgi
from tests.unit.test_observe_admin import make_observer
from tests.unit.test_observe_routes import BLOB, blob_path, stack
from tests.unit.test_review_observe import GUARD, SlowBlobUpstream
from tests.unit.turns import until


@pytest.mark.parametrize("host", ["a" * 64 + ".example:9180", "evil..example:9180"])
async def test_an_unreadable_host_gets_the_admin_listeners_refusal_not_a_crash(
    tmp_path: Path, host: str
) -> None:
    """The main listener answers such a Host with its JSON error (Guard's readable_host); the
    admin listener let werkzeug's BadHost escape the app while Quart built the request
    context, before ``known_host`` ran: no answer of the app's, a traceback in the log."""
    app = create_admin_app(make_observer(tmp_path), HostPort("127.0.0.1", 9180))
    try:
        answer = await call_asgi(app, "GET", "/status.json", host=host)
    except Exception as exc:  # hypercorn turns this into a bare 500 and logs the traceback
        pytest.fail(f"the admin app raised {type(exc).__name__} for Host {host[:20]}...")
    assert answer.status in (400, 403)
    assert json.loads(answer.body)


async def test_metrics_with_an_odd_accept_version_still_answers(tmp_path: Path) -> None:
    """A scraper (or curl) asking ``application/openmetrics-text;version=abc`` should get the
    metrics in some format (the default text one), not a 500 with a traceback logged."""
    app = create_admin_app(make_observer(tmp_path), HostPort("127.0.0.1", 9180))
    accept = [("Accept", "application/openmetrics-text;version=abc")]
    async with app.test_app():
        answer = await call_asgi(app, "GET", "/metrics", host="127.0.0.1:9180", headers=accept)
    assert answer.status == 200, answer.body[:200]
    assert b"docxy_build_info" in answer.body


def test_most_pulled_never_shows_more_pulls_than_were_made() -> None:
    """README: "Most pulled" counts tag resolutions, one per pull. Once the table is full
    (1000 distinct image:tags, a few days of CI tags), each new name inherits the count of
    the one it evicts: an image pulled once is listed first, with 6 pulls, above images
    pulled 5 times each."""
    top = TopCounts(max_keys=2)
    for _ in range(5):
        top.add("library/alpine:3")
        top.add("library/nginx:1")
    top.add("someone/once:x")
    shown = dict(top.top(10))
    assert shown.get("someone/once:x", 0) <= 1, top.top(10)
    assert top.top(1)[0][1] == 5, top.top(1)


async def test_upstream_bytes_a_follower_got_after_the_starter_left_are_upstream_bytes(
    tmp_path: Path,
) -> None:
    """README (docxy_sent_bytes_total): each byte the upstream sent is counted once, under the
    request that started the download; the hit ratios count what cost the upstream no
    download. The client that started a fill leaves once its 200 went out; a follower gets
    the whole blob. The upstream sent the blob once, but only what the starter took counts
    as upstream bytes: the rest is the follower's "cache" bytes, and the byte hit ratio
    counts a download the upstream made as one it was spared."""
    upstream = SlowBlobUpstream()
    async with stack(tmp_path, upstream=upstream, transport_handler=upstream.handle) as mirror:
        store = mirror_state(mirror.app).running.blobs.store
        assert store is not None
        answered, leave = asyncio.Event(), asyncio.Event()
        path = blob_path()
        first = spawn(
            "starter",
            call_asgi(
                mirror.asgi, "GET", path, host="mirror.test", started=answered, hang_up=leave
            ),
        )
        await asyncio.wait_for(answered.wait(), GUARD)
        second = spawn("follower", mirror.get(path))
        await until(lambda: store.followers_joined == 1)
        leave.set()  # the starter goes away, the download going on
        left = await asyncio.wait_for(first, GUARD)
        upstream.release.set()
        followed = await asyncio.wait_for(second, GUARD)
        seen = await mirror.scrape()
    assert not left.complete and followed.body == BLOB
    assert [line for line in upstream.seen if "/blobs/" in line] == [f"GET {path}"]
    # the upstream sent the blob once: all of it is upstream bytes, whoever got them
    assert seen["docxy_sent_bytes_total{source=upstream}"] == len(BLOB)
