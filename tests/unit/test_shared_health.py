"""What the shared tier shows, and to whom: the public ``/health`` says how the tier is doing;
where the bucket is and what the store said (an S3 endpoint is often an internal address, a
bucket name and an error message infrastructure detail) stay on the admin listener."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.unit.test_observe_routes import SHARED, STORE_HOST, Upstream, answer, blob_path, stack

BUCKET = SHARED["shared.bucket"]
#: AWS's own words for a refused GET name the account, the user, the bucket and the key.
ARN = "arn:aws:iam::123456789012:user/docxy-replica"
DENIED = (
    f"<Error><Code>AccessDenied</Code><Message>User: {ARN} is not authorized to perform: "
    f"s3:GetObject on resource: arn:aws:s3:::{BUCKET}/docxy/blobs</Message></Error>"
).encode()


@dataclass
class DenyingBucket(Upstream):
    """The upstream as ever; the bucket refuses every request, saying why as AWS does."""

    def bucket(self, request: httpx.Request) -> httpx.Response:
        self.bucket_seen.append(f"{request.method} {request.url.path}")
        return answer(403, DENIED, {"Content-Type": "application/xml"})


async def test_the_public_health_says_how_the_shared_tier_is_not_where_it_is(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path, settings=SHARED, upstream=DenyingBucket()) as mirror:
        pulled = await mirror.get(blob_path())  # the bucket refuses: filled from the upstream
        assert pulled.status == 200
        public = await mirror.get("/health")
        _, admin_body = await mirror.admin_get("/status.json")
        _, page = await mirror.admin_get("/status")
    assert public.status == 200
    shared = json.loads(public.body)["shared"]
    assert shared["reachable"] is False and shared["errors"] == 1  # the state, for anyone
    for detail in (STORE_HOST, BUCKET, ARN, "AccessDenied"):
        assert detail.encode() not in public.body, detail
    admin = json.loads(admin_body)["shared"]  # the operator's view keeps the detail
    assert (admin["endpoint"], admin["bucket"]) == (SHARED["shared.endpoint"], BUCKET)
    assert "AccessDenied" in admin["last_error"] and ARN in admin["last_error"]
    for shown in ('id=shared-state class="badge bad">unreachable', SHARED["shared.endpoint"]):
        assert shown in page, shown
    assert BUCKET in page and "AccessDenied" in page


async def test_the_status_page_has_no_shared_section_without_the_tier(tmp_path: Path) -> None:
    async with stack(tmp_path) as mirror:
        _, page = await mirror.admin_get("/status")
    assert "id=shared" not in page and "id=cache" in page
