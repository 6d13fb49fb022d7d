"""A client's manifest HEAD that waited for the mirror's own upstream HEAD another request
started is told so as a joined GET is: ``Cache-Status: ...; collapsed`` and ``cache=joined``
in the access log, not a ``miss`` of its own (review: 20 clients at once showed 20 misses for
one upstream HEAD)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from docxy.tasks import spawn
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import AS_ANON, anonymous_token
from tests.unit.test_review_heads1 import CLIENTS, GUARD, TAG, HeldHeads, all_in, mirror_heads


async def test_heads_that_joined_another_are_told_collapsed(tmp_path: Path) -> None:
    hub = HeldHeads()
    async with mirror(tmp_path, hub.handle) as app:  # type: ignore[arg-type]
        anonymous_token(app)

        async def head() -> AsgiAnswer:
            return await call_asgi(app, "HEAD", TAG, host="mirror.test", headers=AS_ANON.items())

        heads = [spawn(f"head {n}", head()) for n in range(CLIENTS)]
        await all_in(hub, app)
        hub.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*heads), GUARD)
    assert mirror_heads(hub.requests) == [TAG]
    said = sorted(answer.headers.get("Cache-Status", "") for answer in answers)
    assert said.count("Docxy; fwd=miss; collapsed") == CLIENTS - 1
    assert said.count("Docxy; fwd=miss") == 1
