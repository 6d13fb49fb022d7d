"""Review faults in the upstream/pull path (docxy.pull, docxy.upstream), each shown failing first:
a confirming HEAD in trouble, a ``/v2/`` re-probe in trouble, concurrent 401s, and a direct
fill's bad redirect."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_scoped_blobs import APP, Hub, blob_url, get, json_reply

BLOB_PATH = "/v2/library/redis/blobs/sha256:" + "a" * 64

# --- 1. a confirming HEAD answered 429/5xx ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(429, "TOOMANYREQUESTS"), (503, "UNAVAILABLE")], ids=["429", "503"]
)
async def test_a_confirming_head_in_trouble_tells_the_client_when_to_retry(
    tmp_path: Path, status: int, code: str
) -> None:
    """A blob cached under one repository is asked for under another: the mirror confirms the
    pairing with an upstream HEAD, which the upstream answers 429 (or 503) with a Retry-After.
    The client got a 502 without it, which tells it nothing of when to try again; it gets
    the upstream's status and Retry-After, in the registry's JSON error format, as a relayed
    answer, ``/v2/`` and the token endpoint pass them on. Nothing cached leaks."""
    hub = Hub()

    def troubled(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            hub.requests.append(request)
            return json_reply(status, {"errors": [{"code": code}]}, {"Retry-After": "120"})
        return hub(request)

    async with mirror(tmp_path, troubled) as app:
        assert await get(app, blob_url("library/app", APP)) == (200, APP)
        response = await app.test_client().get(
            blob_url("library/other", APP), headers={"Authorization": "Bearer client-anon"}
        )
        body = await response.get_data(as_text=False)
    assert (response.status_code, response.headers.get("Retry-After")) == (status, "120")
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == code
    assert APP not in body
