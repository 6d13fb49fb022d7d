"""A token the mirror issued to its own client never goes upstream (``users`` mode).

The path that could leak it: a blob the cache holds, asked for under a repository the mirror
has not paired it with yet, where the mirror's own upstream token is refused (private
content). The mirror then confirms the pairing with the client's credentials, and, unconfirmed,
passes the request through: both must go without the client's token when that token is the
mirror's. The fake upstream (``test_pull_scoped_blobs.Hub``) records every request it got.
"""

from __future__ import annotations

from pathlib import Path

from quart import Quart

from docxy.access.users import UsersFile
from tests.unit.test_pull_blobs import basic, mirror
from tests.unit.test_pull_scoped_blobs import APP, BASE, Hub, blob_url


async def users_token(app: Quart, *repositories: str) -> str:
    query = "&".join(f"scope=repository:{name}:pull" for name in repositories)
    response = await app.test_client().get(
        f"/auth/token?{query}", headers={"Authorization": basic("alice", "right")}
    )
    assert response.status_code == 200, await response.get_data()
    return str((await response.get_json())["token"])


async def test_a_mirror_issued_token_never_reaches_the_upstream(tmp_path: Path) -> None:
    UsersFile(tmp_path / "auth" / "users").add("alice", "right")
    hub = Hub()
    users = {"auth__mode": "users", "auth__dir": str(tmp_path / "auth")}
    async with mirror(tmp_path, hub, **users) as app:
        token = await users_token(app, "library/base", "team/mine")
        ours = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        # cached through a public repository, with the mirror's own upstream token
        response = await client.get(blob_url("library/base", BASE), headers=ours)
        assert response.status_code == 200 and await response.get_data() == BASE
        # team/mine is private to the mirror's token: the cached blob there is checked
        # upstream (a HEAD), then passed through; the client's token is the mirror's, so
        # neither carries it, and the client sees the upstream's refusal (403: no login to
        # the mirror changes it).
        for method in ("get", "head"):
            response = await getattr(client, method)(blob_url("team/mine", BASE), headers=ours)
            assert response.status_code == 403
            assert BASE not in await response.get_data()
        manifest = await client.get("/v2/team/mine/manifests/1", headers=ours)
        assert manifest.status_code == 403
    mine = [r for r in hub.requests if "/team/mine/" in r.url.path]
    assert {r.method for r in mine} == {"GET", "HEAD"}  # the upstream was asked, both ways
    assert any("/blobs/" in r.url.path and r.method == "HEAD" for r in mine)
    sent = [r.headers.get("authorization") for r in hub.requests]
    assert all(token not in (value or "") for value in sent), sent


async def test_a_users_mode_pull_passed_through_goes_with_the_mirrors_own_token(
    tmp_path: Path,
) -> None:
    """What the cache does not answer (a ``Range``, a ``HEAD`` of a blob not cached; every pull
    with the cache off) goes upstream for a users-mode client with the mirror's own login,
    as the mirror's fills do: the client's token is the mirror's and stays here, and a token
    upstream such as Docker Hub answers no request without one (public repositories too), so
    without the mirror's the client got 401 for ever."""
    UsersFile(tmp_path / "auth" / "users").add("alice", "right")
    for cache in ("true", "false"):
        hub = Hub()
        settings = {"auth__mode": "users", "auth__dir": str(tmp_path / "auth")}
        async with mirror(tmp_path / cache, hub, cache__enabled=cache, **settings) as app:
            token = await users_token(app, "library/app")
            ours = {"Authorization": f"Bearer {token}"}
            client = app.test_client()
            url = blob_url("library/app", APP)
            ranged = await client.get(url, headers={**ours, "Range": "bytes=0-"})
            assert ranged.status_code in (200, 206), await ranged.get_data()
            assert await ranged.get_data() == APP
            head = await client.head(url, headers=ours)
            assert head.status_code == 200
            if cache == "false":
                manifest = await client.get("/v2/library/app/manifests/1", headers=ours)
                assert manifest.status_code == 200
        passed = [r for r in hub.requests if "/library/app/" in r.url.path]
        assert passed and all(r.headers.get("authorization") == "Bearer anon" for r in passed)
        sent = [r.headers.get("authorization") for r in hub.requests]
        assert all(token not in (value or "") for value in sent), sent
