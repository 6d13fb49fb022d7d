"""Whose rate limit a 429 is: the mirror's, unless a client's own login asked.

Docker Hub limits anonymous pulls by address, and every anonymous pull through the mirror comes
from the mirror's address; a logged-in client's pulls count against that client's account. A
client that took an anonymous token from the mirror's own token endpoint is pulling anonymously:
a 429 it gets is the mirror's trouble, and /health says so (what a cache-off mirror, whose
clients always pull with their own tokens, otherwise never does).
"""

from __future__ import annotations

import httpx
import pytest

from lab.bed import Bed, Fault
from lab.mirror import Mirror
from tests.conftest import StartMirror
from tests.e2e.test_integration import ALL_MANIFESTS, MULTI, PRIVATE, assert_error, bearer

pytestmark = pytest.mark.e2e

LIMITED = {
    "Retry-After": "3600",  # the limit stands all the test long (/health ends it then)
    "ratelimit-limit": "100;w=21600",
    "ratelimit-remaining": "0;w=21600",
}


def upstream_health(mirror: Mirror) -> dict[str, object]:
    response = httpx.get(f"{mirror.url}/health", timeout=10)
    assert response.status_code == 200
    upstream: dict[str, object] = response.json()["upstream"]
    return upstream


def test_a_429_to_an_anonymous_token_is_the_mirrors_rate_limit(
    start_mirror: StartMirror, bed: Bed
) -> None:
    mirror = start_mirror("--no-cache")
    bed.faults.add(
        Fault(
            site="front",
            kind="status",
            status=429,
            headers=LIMITED,
            path_contains="/manifests/",
            times=None,
        )
    )
    with httpx.Client(base_url=mirror.url, timeout=30, follow_redirects=False) as client:
        # A logged-in client's 429 is its account's: nothing about the mirror.
        alice = bearer(client, bed, PRIVATE, (bed.user, bed.password))
        response = client.get(f"/v2/{PRIVATE}/manifests/{bed.images[PRIVATE].tag}", headers=alice)
        assert_error(response, 429, "TOOMANYREQUESTS")
        seen = upstream_health(mirror)
        assert seen["last_error_message"] is None and seen["ratelimit_remaining"] is None, seen

        # An anonymous token from the mirror's endpoint: the mirror's address was refused.
        anonymous = bearer(client, bed, MULTI)
        assert anonymous["Accept"] == ALL_MANIFESTS
        response = client.get(f"/v2/{MULTI}/manifests/{bed.images[MULTI].tag}", headers=anonymous)
        assert_error(response, 429, "TOOMANYREQUESTS")
    seen = upstream_health(mirror)
    assert seen["last_error_message"] == "the upstream answered 429", seen
    assert seen["ratelimit_remaining"] == "0;w=21600", seen
    assert bed.faults.fired, "the fault never fired: the test proved nothing"


def health_status(mirror: Mirror) -> str:
    response = httpx.get(f"{mirror.url}/health", timeout=10)
    assert response.status_code == 200
    status: str = response.json()["status"]
    return status


def test_the_mirrors_rate_limit_lasts_until_a_pull_gets_through(
    start_mirror: StartMirror, bed: Bed
) -> None:
    """Docker Hub's `/v2/` and token service answer whatever the pull limit: such an answer
    says nothing about it. Every docker pull pings `/v2/` first, and the mirror probes it once
    a minute; each of those ended the mirror's rate-limited state, so /health said `ok` while
    every pull was refused."""
    mirror = start_mirror("--no-cache")
    fault = Fault(
        site="front",
        kind="status",
        status=429,
        headers=LIMITED,
        path_contains="/manifests/",
        times=None,
    )
    bed.faults.add(fault)
    url = f"/v2/{MULTI}/manifests/{bed.images[MULTI].tag}"
    with httpx.Client(base_url=mirror.url, timeout=30, follow_redirects=False) as client:
        anonymous = bearer(client, bed, MULTI)
        assert_error(client.get(url, headers=anonymous), 429, "TOOMANYREQUESTS")
        # The next pull begins as every pull does: a ping, a token.
        assert client.get("/v2/").status_code == 401
        anonymous = bearer(client, bed, MULTI)
        assert health_status(mirror) == "degraded"

        bed.faults.clear()  # the limit's window is over
        assert client.get(url, headers=anonymous).status_code == 200
        assert health_status(mirror) == "ok"
