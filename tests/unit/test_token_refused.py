"""The upstream's token service refusing the mirror (401/403) is an answer, not an outage.

Its credentials were revoked, say, or a registry wants a login for every token: what the
mirror's own token would have read is then treated as the upstream refusing that token (as a
401 to the request itself would be): the cached manifest is not served stale, a cached blob's
pairing is confirmed with the client's own credentials, a miss passes through; the client sees
the upstream's own answer (a registry error when that refuses too), and health counts no
failure: ``ok`` for a ``403``; ``degraded`` for a ``401``, the mirror's login refused (its
private pulls fail, ``login: refused``: test_review_tokens4), with no outage in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from docxy.access.users import UsersFile
from docxy.http.state import mirror_state
from tests.unit.test_pull_blobs import basic, mirror
from tests.unit.test_pull_scoped_blobs import (
    ACCOUNT,
    APP,
    AS_ANON,
    HOST,
    Hub,
    blob_url,
    get,
    json_reply,
)

AS_ACCOUNT = {"upstream__username": ACCOUNT[0], "upstream__password": ACCOUNT[1]}
STALE_AT_ONCE = {"cache__tag_ttl": "0.000001"}


class RefusingHub(Hub):
    """A hub whose token service may refuse the mirror's account with ``refusal``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusal: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test" and self.refusal is not None:
            self.requests.append(request)
            code = "UNAUTHORIZED" if self.refusal == 401 else "DENIED"
            return json_reply(self.refusal, {"errors": [{"code": code, "message": "no"}]})
        return super().__call__(request)


async def health_of(app: Quart) -> dict[str, Any]:
    report: dict[str, Any] = await (await app.test_client().get("/health")).get_json()
    return report


async def fill(tmp_path: Path, hub: RefusingHub) -> None:
    """Cache library/app's tag, manifest and blobs while the account is still good."""
    async with mirror(tmp_path, hub, **AS_ACCOUNT, **STALE_AT_ONCE) as app:
        assert (await get(app, "/v2/library/app/manifests/1"))[0] == 200
        assert await get(app, blob_url("library/app", APP)) == (200, APP)


@pytest.mark.parametrize("refusal", [401, 403])
async def test_a_refused_token_is_not_an_outage(tmp_path: Path, refusal: int) -> None:
    hub = RefusingHub()
    await fill(tmp_path, hub)
    hub.refusal = refusal  # the account is revoked; the mirror restarts
    before = len(hub.requests)
    async with mirror(tmp_path, hub, **AS_ACCOUNT, **STALE_AT_ONCE) as app:
        # the stale tag is asked upstream with the client's token, never served as stale
        response = await app.test_client().get("/v2/library/app/manifests/1", headers=AS_ANON)
        assert response.status_code == 200
        assert (await health_of(app))["upstream"]["stale_served"] == 0
        # the cached blob, under a repository that holds it: confirmed with the client's token
        assert await get(app, blob_url("library/other", APP)) == (200, APP)
        # the token service's answer stands a while: asked once for library/app, whatever comes
        for _ in range(3):
            again = await app.test_client().get("/v2/library/app/manifests/1", headers=AS_ANON)
            assert again.status_code == 200
        report = await health_of(app)
        assert report["status"] == ("degraded" if refusal == 401 else "ok"), report
        assert report["upstream"]["login"] == ("refused" if refusal == 401 else "accepted")
        assert report["upstream"]["stale_served"] == 0
        assert report["upstream"]["reachable"] is True
        health = mirror_state(app).running.client.health_of(mirror_state(app).upstream)
        assert health.failures == {}
    asked = [r for r in hub.requests[before:] if r.url.host == "auth.test"]
    # the login is checked first as ``docker login`` does: once, no scope (test_review_tokens3)
    checks = [r for r in asked if "scope" not in r.url.params]
    assert [r.headers.get("authorization") for r in checks] == [basic(*ACCOUNT)]
    refused = [r for r in asked if r not in checks]
    with_login = [r for r in refused if r.headers.get("authorization") == basic(*ACCOUNT)]
    if refusal == 403:  # a repository denied: the login still holds for the others
        assert with_login == refused
    else:  # the login refused (401): sent once (the check), then tokens asked anonymously
        assert with_login == []
    scopes = sorted(r.url.params["scope"] for r in refused)
    assert scopes == ["repository:library/app:pull", "repository:library/other:pull"]


@pytest.mark.parametrize("refusal", [401, 403])
async def test_users_mode_clients_get_a_registry_error_when_the_mirror_is_refused(
    tmp_path: Path, refusal: int
) -> None:
    """In users mode the client's credentials are the mirror's own and never go upstream: what
    the cache does not answer goes with the mirror's own login, and the token service refusing
    that is what the client gets, in the registry's error format (a 401 with the mirror's
    challenge), not a 5xx."""
    UsersFile(tmp_path / "auth" / "users").add("alice", "right")
    hub = RefusingHub()
    hub.refusal = refusal
    users = {"auth__mode": "users", "auth__dir": str(tmp_path / "auth")}
    async with mirror(tmp_path, hub, **AS_ACCOUNT, **users) as app:
        client = app.test_client()
        scope = "scope=repository:library/app:pull"
        issued = await client.get(
            f"/auth/token?{scope}", headers={"Authorization": basic("alice", "right")}
        )
        ours = {"Authorization": f"Bearer {(await issued.get_json())['token']}"}
        for path in ("/v2/library/app/manifests/1", blob_url("library/app", APP)):
            response = await client.get(path, headers=ours)
            assert response.status_code in (401, 403), path
            body = json.loads(await response.get_data())
            assert body["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED")
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
        report = await health_of(app)
        assert report["status"] == ("degraded" if refusal == 401 else "ok"), report
    asked = [r for r in hub.requests if r.url.host == "auth.test"]
    with_login = [r for r in asked if r.headers.get("authorization") == basic(*ACCOUNT)]
    assert asked and all(
        r.headers.get("authorization") is None for r in asked if r not in with_login
    )
    if refusal == 401:  # the login refused: sent once, then asked for anonymously
        assert len(with_login) == 1
    else:
        assert with_login == asked
    assert not [r for r in hub.requests if r.url.host == HOST and r.url.path != "/v2/"]
