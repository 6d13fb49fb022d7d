"""A blob request during start-up waits for the manifest catalogue without holding the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from docxy.tasks import spawn
from tests.unit.held import Held
from tests.unit.test_cache_catalogue import held_scan
from tests.unit.test_pull_blobs import BLOB, DIGEST, Upstream, cached_blobs, mirror

__all__ = ["held_scan"]  # the fixture, used by name below


async def test_a_blob_asked_for_while_the_catalogue_is_read_does_not_stop_the_loop(
    tmp_path: Path, held_scan: Held
) -> None:
    upstream = Upstream()
    account = {"upstream__username": "bot", "upstream__password": "s3cret"}
    held_scan.release.set()
    async with mirror(tmp_path, upstream, **account) as app:  # the blob gets cached
        assert (await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")).status_code == 200
    assert cached_blobs(tmp_path)
    held_scan.release.clear()
    async with mirror(tmp_path, upstream, **account) as app:  # a restart; the read is held
        request = spawn("held get", app.test_client().get(f"/v2/team/app/blobs/{DIGEST}"))
        for _ in range(50):  # the loop keeps turning while the request waits for the read
            await asyncio.sleep(0)
        assert not request.done()
        held_scan.release.set()
        response = await request
        assert response.status_code == 200
        assert await response.get_data() == BLOB
    assert held_scan.held == [True, True]
