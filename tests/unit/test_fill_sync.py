"""The commit's sync comes after a fill's clients are done: what is served meanwhile (a HEAD, a
Range, from the verified temp file) and what a stop does with a blob still syncing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.cache import fill
from docxy.http import app as app_module
from docxy.tasks import cancel_all
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import BLOB, DIGEST, Upstream, cached_blobs, mirror

SETTINGS = {"upstream__username": "bot", "upstream__password": "s3cret"}
PATH = f"/v2/team/app/blobs/{DIGEST}"
AUTH = [("Authorization", "Bearer account")]


class HeldSync:
    """The commit's sync waits (in its worker thread) until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self._go = threading.Event(), threading.Event()
        real = fill._sync_and_close

        def held(fd: int) -> None:
            self.started.set()
            self._go.wait(30.0)
            real(fd)

        monkeypatch.setattr(fill, "_sync_and_close", held)

    def release(self) -> None:
        self._go.set()


@pytest.fixture
def held_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldSync]:
    held = HeldSync(monkeypatch)
    try:
        yield held
    finally:
        held.release()  # never leave a worker thread waiting


async def test_a_head_and_a_range_while_the_blob_syncs_are_served_from_its_temp_file(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    upstream = Upstream()
    async with mirror(tmp_path, upstream, **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert (first.status, first.body == BLOB) == (200, True)
        assert held_sync.started.is_set() and cached_blobs(tmp_path) == []  # still syncing
        head = await call_asgi(app, "HEAD", PATH, headers=AUTH, host="mirror.test")
        ranged = await call_asgi(
            app, "GET", PATH, headers=[*AUTH, ("Range", "bytes=10-19")], host="mirror.test"
        )
        assert upstream.ranges == [None]  # the one fill's GET: nothing more went upstream
        held_sync.release()
    assert (head.status, head.headers.get("content-length")) == (200, str(len(BLOB)))
    assert (ranged.status, ranged.body) == (206, BLOB[10:20])
    assert [path.read_bytes() == BLOB for path in cached_blobs(tmp_path)] == [True]


async def test_a_stop_waits_for_a_verified_blobs_sync_and_keeps_it(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    async with mirror(tmp_path, Upstream(), **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert first.body == BLOB and held_sync.started.is_set()
        threading.Timer(0.2, held_sync.release).start()  # the stop begins while it syncs
    assert [path.read_bytes() == BLOB for path in cached_blobs(tmp_path)] == [True]


async def test_a_sync_that_outlasts_the_stops_wait_is_given_up_in_one_line(
    tmp_path: Path,
    held_sync: HeldSync,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(app_module, "KEEP_VERIFIED", 0.05)
    caplog.set_level(logging.INFO, logger="docxy")
    async with mirror(tmp_path, Upstream(), **SETTINGS) as app:
        first = await call_asgi(app, "GET", PATH, headers=AUTH, host="mirror.test")
        assert first.body == BLOB and held_sync.started.is_set()
    await cancel_all()  # as `docxy serve` does once the app has stopped
    held_sync.release()
    said = [r.getMessage() for r in caplog.records if "still syncing" in r.getMessage()]
    assert said == ["stopping: 1 verified blob(s) still syncing after 0.05 s are not kept"]
    assert cached_blobs(tmp_path) == []
