"""Review of several upstreams (multi3): a credential for one upstream never reaches another.

Against the ``httpx.MockTransport`` registries of ``test_multi_routes`` (nothing leaves the
process): Docker Hub (``hub.example``) and ghcr.test (``ghcr.example``), each with a token
service of its own.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.unit.asgi import call_asgi
from tests.unit.fakes import reply
from tests.unit.test_multi_routes import Mirror, mirror

LOGIN = [("Authorization", "Basic " + base64.b64encode(b"bob:hunter2").decode())]


async def _token(m: Mirror, query: str, headers: list[tuple[str, str]]) -> str:
    path = f"/auth/token?{query}"
    answer = await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=headers)
    assert answer.status == 200
    token: str = json.loads(answer.body)["token"]
    return token


@pytest.mark.parametrize(
    "path",
    [
        "/v2/owner/img/manifests/1?ns=docker.io",  # containerd's hosts.toml for docker.io
        "/v2/owner/img/manifests/1",  # Docker's registry-mirrors
        "/v2/docker.io/owner/img/manifests/1",  # by path prefix
    ],
)
async def test_a_token_relayed_for_one_upstream_is_not_sent_to_another(path: str) -> None:
    """containerd keeps one token handler per host it talks to, the mirror's, and reuses a
    token it holds for the same scope (``repository:owner/img:pull``) whichever ``?ns=`` the
    next request names: ghcr.io's token, got with the client's ghcr.io login, was passed
    through to Docker Hub (and the other way round)."""
    async with mirror() as m:
        token = await _token(m, "upstream=ghcr.test&scope=repository:owner/img:pull", LOGIN)
        assert token == "token-of-auth.ghcr.example"
        bearer = [("Authorization", f"Bearer {token}")]
        answer = await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=bearer)
        hub = [r for r in m.upstream.requests if r.url.host == "hub.example"]
    assert hub, "the request went to Docker Hub"
    assert all(f"Bearer {token}" not in r.headers.get_list("authorization") for r in hub)
    assert answer.status == 401  # Docker Hub's challenge, re-pointed: the client asks anew


@pytest.mark.parametrize(
    ("query", "path", "to", "kept"),
    [
        # Docker Hub's token (the mirror's own name's login) with containerd's ?ns=ghcr.test
        ("scope=repository:owner/img:pull", "/v2/owner/img/manifests/1?ns=ghcr.test",
         "ghcr.example", True),
        # ghcr.test's own token goes to ghcr.test, by ?ns= and by its prefix alike
        ("upstream=ghcr.test&scope=repository:owner/img:pull",
         "/v2/owner/img/manifests/1?ns=ghcr.test", "ghcr.example", False),
        ("upstream=ghcr.test&via=prefix&scope=repository:owner/img:pull",
         "/v2/ghcr.test/owner/img/manifests/1", "ghcr.example", False),
        # Docker Hub's token goes to Docker Hub
        ("scope=repository:owner/img:pull", "/v2/owner/img/manifests/1", "hub.example", False),
    ],
)  # fmt: skip
async def test_a_relayed_token_goes_only_to_its_own_upstream(
    query: str, path: str, to: str, kept: bool
) -> None:
    async with mirror() as m:
        token = await _token(m, query, LOGIN)
        bearer = [("Authorization", f"Bearer {token}")]
        await call_asgi(m.app, "GET", path, host="mirror.example.com", headers=bearer)
        sent = [r for r in m.upstream.requests if r.url.host == to]
    assert sent
    carried = any(f"Bearer {token}" in r.headers.get_list("authorization") for r in sent)
    assert carried is not kept


async def test_one_upstreams_429_leaves_the_others_health_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checked, found right: health and the mirror's rate limit are kept per registry host."""
    import tests.unit.test_multi_routes as multi

    plain = multi.registries

    def limited(request: httpx.Request) -> httpx.Response:
        if request.url.host == "ghcr.example" and "/manifests/" in request.url.path:
            return reply(429, b"{}", {"Retry-After": "120", **multi.JSON})
        return plain(request)

    monkeypatch.setattr(multi, "registries", limited)
    async with mirror(tmp_path / "cache") as m:
        ghcr = await m.get("/v2/ghcr.test/owner/img/manifests/1")
        hub = await m.get("/v2/owner/img/manifests/1")
        report = json.loads((await m.get("/health")).body)
    assert ghcr.status == 429 and hub.status == 200
    assert report["upstreams"]["ghcr.test"]["rate_limited_until"] is not None
    assert report["upstreams"]["docker.io"]["rate_limited_until"] is None
    assert report["upstreams"]["docker.io"]["reachable"] is True
