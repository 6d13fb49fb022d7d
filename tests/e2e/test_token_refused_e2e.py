"""The bed's token service refusing the mirror's account (a wrong password: 401) is an answer,
not an outage: clients still get public content (the mirror, its login refused, asks for an
anonymous token and fills the cache by the real direct fill path: 6890b56), the refused login
is sent once, not per request. ``/health`` is ``degraded`` with the login ``refused`` (since
fe45a4d: the operator's password is wrong, its private pulls fail), still answering 200, and
nothing is served stale."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from lab.bed import Bed
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e

HELLO = "library/hello"


def test_a_refused_mirror_account_is_not_an_outage(bed: Bed, start_mirror: StartMirror) -> None:
    account = {"DOCXY_UPSTREAM_USERNAME": bed.user, "DOCXY_UPSTREAM_PASSWORD": "not-the-password"}
    mirror = start_mirror(env=account)
    image = bed.images[HELLO]
    with httpx.Client(base_url=mirror.url, timeout=30) as client:
        scope = f"repository:{HELLO}:pull"
        token = client.get("/auth/token", params={"service": bed.service, "scope": scope})
        assert token.status_code == 200
        auth = {"Authorization": f"Bearer {token.json()['token']}"}
        for _ in range(2):
            for digest in image.blobs:
                answer = client.get(f"/v2/{HELLO}/blobs/{digest}", headers=auth)
                assert answer.status_code == 200, answer.text
                assert "sha256:" + hashlib.sha256(answer.content).hexdigest() == digest
        health = client.get("/health").json()
    assert health["status"] == "degraded", health  # not an outage: a login to mend
    assert health["upstream"]["login"] == "refused", health
    assert health["upstream"]["reachable"] is True, health
    assert health["upstream"]["stale_served"] == 0
    mirrors = [r for r in bed.token_log.where(lambda r: r.basic_user == bed.user)]
    assert mirrors and {r.status for r in mirrors} == {401}
    assert len(mirrors) == 1, mirrors  # its answer stands: not asked again per blob
    assert "crashed" not in mirror.log_text(200000)
