"""Review faults in observability (docxy.observe), each shown by a failing test first."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore, Usage
from docxy.config import load_config
from docxy.http.app import open_store
from docxy.http.state import MirrorState
from docxy.observe import Observer, create_admin_app
from docxy.upstream.client import Upstream


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
