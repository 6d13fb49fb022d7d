"""Which name the repository rules see: the one the client wrote in the path, with ``library/``
on Docker Hub; a pull by path prefix through another upstream is ``ghcr.io/owner/img``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docxy.access.users import UsersFile
from docxy.config import load_config
from docxy.core.challenge import parse_challenge
from docxy.edge.admission import Admission
from docxy.http.state import mirror_state
from tests.unit import test_multi_routes as multi
from tests.unit.asgi import call_asgi
from tests.unit.test_access_routes import basic
from tests.unit.test_admission import inner

RULES = {
    "access.repositories": "library/*, ghcr.io/myorg/**",
    "upstreams": "ghcr.io",
    "upstreams.ghcr.io.hosts": "ghcr.mirror.example.com",
}


def admission(**extra: str) -> Admission:
    return Admission(inner, load_config({**RULES, **extra}, environ={}))


async def refused_as(path: str, host: str = "mirror.example.com") -> str | None:
    """The name the refusal names, or None when the request was let through."""
    answer = await call_asgi(admission(), "GET", path, host=host)
    if answer.status == 200:
        return None
    assert answer.status == 403
    error: dict[str, Any] = json.loads(answer.body)["errors"][0]
    assert error["code"] == "DENIED"
    return str(error["detail"]["name"])


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/v2/ghcr.io/myorg/app/manifests/1", None),  # ghcr.io/myorg/app: as written
        ("/v2/ghcr.io/myorg/team/app/blobs/sha256:" + "a" * 64, None),
        ("/v2/ghcr.io/other/app/manifests/1", "ghcr.io/other/app"),
        ("/v2/ghcr.io/library/app/manifests/1", "ghcr.io/library/app"),  # not Docker Hub's
        ("/v2/redis/manifests/1", None),  # library/redis on Docker Hub
        ("/v2/myorg/app/manifests/1", "myorg/app"),  # Docker Hub's myorg, not ghcr.io's
    ],
)
async def test_prefix_routed_names_are_matched_as_written(path: str, refused: str | None) -> None:
    assert await refused_as(path) == refused


@pytest.mark.parametrize(
    ("path", "host", "refused"),
    [
        # containerd's ?ns= and a mirror host name pick ghcr.io too: the same name as a prefix
        ("/v2/myorg/app/manifests/1?ns=ghcr.io", "mirror.example.com", None),
        ("/v2/library/app/manifests/1?ns=ghcr.io", "mirror.example.com", "ghcr.io/library/app"),
        ("/v2/library/app/manifests/1", "ghcr.mirror.example.com", "ghcr.io/library/app"),
        ("/v2/myorg/app/manifests/1", "ghcr.mirror.example.com", None),
        # Docker Hub by its own name is Docker Hub
        ("/v2/docker.io/library/redis/manifests/1", "mirror.example.com", None),
        ("/v2/redis/manifests/1?ns=docker.io", "mirror.example.com", None),
    ],
)
async def test_every_way_to_pick_an_upstream_gives_the_rules_one_name(
    path: str, host: str, refused: str | None
) -> None:
    """A deny rule for ``ghcr.io/**`` or an allow list of ``library/*`` cannot be walked around
    with ``?ns=ghcr.io`` or ghcr.io's host name (the path then holds ``library/app`` only)."""
    assert await refused_as(path, host) == refused


# --- users mode: a token names repositories, not upstreams ------------------------------------


async def test_a_token_for_one_upstreams_repository_pulls_nothing_the_rules_refuse_elsewhere(
    tmp_path: Path,
) -> None:
    """The mirror's token names ``repository:owner/img:pull`` as the client wrote it, with no
    upstream: its check (``docxy.access.gate``) compares names only, so it holds for
    ``owner/img`` on every upstream, and Docker Hub's ``library/redis`` for ``redis`` anywhere.
    What keeps the upstreams apart is the rules, which admission matches against every request
    by its upstream's name, before the token is looked at: a token got for ghcr.test's
    ``owner/img`` pulls it there, and nothing of the same name where the rules say no, however
    the request picks that upstream; nothing of it reaches that upstream."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "access.repositories": "library/*, ghcr.test/owner/**",
    }
    async with multi.mirror(tmp_path / "cache", **settings) as m:
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)

        async def pull(path: str, token: str, host: str = "mirror.example.com") -> int:
            headers = [("Authorization", f"Bearer {token}")]
            answer = await call_asgi(admitted, "GET", path, host=host, headers=headers)
            return answer.status

        async def token_for(scope: str) -> str:
            login = list(basic("alice", "right").items())
            path = f"/auth/token?scope={scope}"
            answer = await call_asgi(
                admitted, "GET", path, host="mirror.example.com", headers=login
            )
            assert answer.status == 200, answer.body
            return str(json.loads(answer.body)["token"])

        # As containerd does through ghcr.test's hosts.toml: the challenge, then its token.
        asked = await call_asgi(
            admitted, "GET", "/v2/owner/img/manifests/1?ns=ghcr.test", host="mirror.example.com"
        )
        assert asked.status == 401
        challenge = parse_challenge(asked.headers["WWW-Authenticate"])
        assert challenge is not None and challenge.params["scope"] == "repository:owner/img:pull"
        ghcr = await token_for(challenge.params["scope"])
        assert await pull("/v2/owner/img/manifests/1?ns=ghcr.test", ghcr) == 200
        assert await pull("/v2/ghcr.test/owner/img/manifests/1", ghcr) == 401  # another name
        hub = await token_for("repository:library/redis:pull")
        assert await pull("/v2/library/redis/manifests/1", hub) == 200
        sent = len(m.upstream.requests)
        for path, host in [
            ("/v2/owner/img/manifests/1?ns=lab.test", "mirror.example.com"),
            ("/v2/owner/img/manifests/1", "lab-mirror.example.com"),
            ("/v2/owner/img/manifests/1", "mirror.example.com"),  # Docker Hub's owner/img
            ("/v2/library/redis/manifests/1?ns=ghcr.test", "mirror.example.com"),
            ("/v2/redis/manifests/1?ns=ghcr.test", "mirror.example.com"),  # no library/ there
            ("/v2/library/redis/manifests/1", "lab-mirror.example.com"),
        ]:
            token = ghcr if "owner" in path else hub
            assert await pull(path, token, host) == 403, (path, host)
        assert len(m.upstream.requests) == sent


@pytest.mark.parametrize(
    ("spelling", "name", "settings"),
    [
        # the raw UTF-8 of U+00A0, U+2003, U+0085 after the name: str.strip() dropped them
        ("ghcr.test\u00a0", "ghcr.test", {"access.repositories": "library/*"}),
        ("ghcr.test\u2003", "ghcr.test", {"access.repositories": "library/*"}),
        ("ghcr.test\u0085", "ghcr.test", {"access.repositories": "library/*"}),
        # KELVIN SIGN, which str.lower() makes an ASCII k
        ("\u212aab.test", "kab.test", {"access.deny_repositories": "kab.test/**"}),
    ],
)
async def test_an_upstream_spelled_in_unicode_past_the_rules_reaches_nothing(
    spelling: str, name: str, settings: dict[str, Any]
) -> None:
    """An h2c ``:path`` may carry raw UTF-8 in ``?ns=``, which h11 refuses: admission and the
    route read the same bytes the same way, so a name the rules take for no upstream (and judge
    as Docker Hub's) is no upstream to the route either, and nothing is sent."""
    upstreams = "ghcr.test=https://ghcr.example,kab.test=https://kab.example"
    upstreams += ",lab.test=https://lab.example"  # test_multi_routes.mirror sets its hosts
    async with multi.mirror(upstreams=upstreams, **settings) as m:
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)
        path = "/v2/img/manifests/1?ns="
        plain = await call_asgi(admitted, "GET", path + name, host="mirror.example.com")
        assert plain.status == 403  # the rules hold for the ASCII spelling
        answer = await call_asgi(admitted, "GET", path + spelling, host="mirror.example.com")
        assert answer.status in (403, 404), answer.status
        assert m.upstream.requests == []
