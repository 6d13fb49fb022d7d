"""A client's manifest HEAD that waited for the mirror's own upstream HEAD another request
started is told so as a joined GET is: ``Cache-Status: ...; collapsed`` and ``cache=joined``
in the access log, not a ``miss`` of its own (review: 20 clients at once showed 20 misses for
one upstream HEAD)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_review_heads1 import CLIENTS, TAG, HeldHeads, fleet_heads, mirror_heads


async def test_heads_that_joined_another_are_told_collapsed(tmp_path: Path) -> None:
    hub = HeldHeads()
    answers = await fleet_heads(tmp_path, hub)
    assert mirror_heads(hub.requests) == [TAG]
    said = sorted(answer.headers.get("Cache-Status", "") for answer in answers)
    assert said.count("Docxy; fwd=miss; collapsed") == CLIENTS - 1
    assert said.count("Docxy; fwd=miss") == 1
