"""Review faults in observability (docxy.observe, a fourth review: tests/unit/test_review_observe.py
was taken by the first): each test asserts the right behaviour; each failed on the code it was
written against."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from docxy.config import HostPort
from docxy.observe import create_admin_app
from docxy.observe.status import render_page, status_report
from tests.unit.asgi import call_asgi
from tests.unit.test_observe_admin import make_observer
from tests.unit.test_observe_routes import Upstream, stack

ADMIN = HostPort("127.0.0.1", 9180)


async def test_the_admin_listener_serves_no_file_of_the_directory_it_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: the admin listener serves /metrics, /status and /status.json (its 404 names
    those three). Quart's default static route, rooted in the working directory for an app
    named after no module, answered ``/static/<path>`` with any file under ``./static`` of the
    directory ``docxy serve`` was started in, to whoever reaches the listener."""
    started_in = tmp_path / "home"
    (started_in / "static").mkdir(parents=True)
    (started_in / "static" / "notes.txt").write_text("a secret of the operator's\n")
    monkeypatch.chdir(started_in)
    app = create_admin_app(make_observer(tmp_path), ADMIN)
    async with app.test_app():
        answer = await call_asgi(app, "GET", "/static/notes.txt", host="127.0.0.1:9180")
    assert b"secret" not in answer.body
    assert answer.status == 404, answer.status


def test_uptime_is_not_moved_by_the_wall_clock_stepping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``uptime_seconds`` (``/status.json``, the page's footer) is how long the mirror has run.
    It was the difference of two wall-clock readings: a clock that NTP steps back by an hour
    after the mirror started (a host booted with its clock ahead) showed an uptime of -3600 s
    ("up -3600 s"), one stepped forward by a day "up 1 d" a minute after start."""
    observer = make_observer(tmp_path)
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - 3600)  # NTP stepped the clock back
    report = status_report(observer)
    assert 0 <= report["uptime_seconds"] < 60, report["uptime_seconds"]
    assert "up -" not in render_page(report)


@pytest.mark.parametrize("status", [503, 429])
async def test_the_page_does_not_show_an_upstream_failing_every_pull_as_fine(
    tmp_path: Path, status: int
) -> None:
    """The status page's upstream badge was green "reachable" whenever the upstream answered
    at all: an upstream answering every manifest 503 (or the mirror's own pulls 429) showed
    as fine in its section, while ``/health`` said ``degraded`` for it and pulls failed."""
    async with stack(tmp_path, upstream=Upstream(status=status)) as mirror:
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == status
        code, page = await mirror.admin_get("/status")
        _, text = await mirror.admin_get("/status.json")
    assert code == 200 and json.loads(text)["status"] == "degraded"
    badge = re.search(r'<span id=upstream-state class="badge (\w+)">([^<]*)</span>', page)
    assert badge is not None, page
    assert badge.group(1) != "ok" and badge.group(2) != "reachable", badge.group(0)
