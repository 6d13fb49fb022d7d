"""Review of the registry's 4xx relayed from the mirror's own request (1b9672e, 6a42954,
6b98411) for a client whose request carries credentials of its own for the upstream.

Registries that hide a private repository behind a ``404`` instead of a ``401``/``403``
(Artifactory's "Hide Existence of Unauthorized Resources", some Nexus and Quay set-ups, GitLab
for some paths) answer the mirror's token ``404`` and the client's own ``200``: that ``404`` is
the registry's word on the mirror's token, not on the content, for such a client. The upstream
is the in-process hub of ``test_pull_scoped_blobs`` (an ``httpx.MockTransport``: no socket).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from quart import Quart

from docxy.core.digests import parse_digest
from docxy.core.errors import UpstreamAnswered
from docxy.core.names import Kind, Reference
from docxy.http.state import mirror_state
from docxy.pull.outcome import Pull, Reason, upstream_failed
from docxy.upstream.client import Upstream
from tests.unit.test_pull_blobs import basic, mirror
from tests.unit.test_pull_scoped_blobs import (
    ACCOUNT,
    BASE,
    HOST,
    Hub,
    digest_of,
    json_reply,
)
from tests.unit.test_review_manifest404 import ONE_PLATFORM

MINE = "team/mine"
BLOB = f"/v2/{MINE}/blobs/{digest_of(BASE)}"
MANIFEST = f"/v2/{MINE}/manifests/1"


class HidesPrivate(Hub):
    """The hub, but a private repository asked with a token that may not read it is answered
    ``404 NAME_UNKNOWN`` (its existence hidden), not ``401``: what the mirror's own token gets
    for ``team/mine``, while the client's token of ``team/mine`` reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.repos[MINE].manifests["1"] = self.repos["library/base"].manifests["1"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        auth = request.headers.get("authorization")
        if request.url.host == HOST and path != "/v2/" and auth is not None:
            name = path.removeprefix("/v2/").rpartition("/")[0].rsplit("/", 1)[0]
            repo = self.repos.get(name)
            if (
                repo is not None
                and repo.private
                and auth not in ("Bearer account", self.client_token)
            ):
                self.requests.append(request)
                return json_reply(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "hidden"}]})
        return super().__call__(request)

    def asked(self, path: str) -> list[tuple[str, str | None]]:
        """Each registry request for ``path``: its method and ``Authorization``."""
        return [
            (r.method, r.headers.get("authorization"))
            for r in self.requests
            if r.url.host == HOST and r.url.path == path
        ]


async def token_from_mirror(app: Quart, login: tuple[str, str] | None = None) -> str:
    """A client's token for ``team/mine`` asked of the mirror's token endpoint (relayed to the
    hub's token service), as docker gets one: anonymously, or with ``login``."""
    query = urlencode({"service": HOST, "scope": f"repository:{MINE}:pull"})
    headers = {"Authorization": basic(*login)} if login is not None else {}
    response = await app.test_client().get(f"/auth/token?{query}", headers=headers)
    assert response.status_code == 200
    return f"Bearer {json.loads(await response.get_data(as_text=False))['token']}"


# --- 1. a client with credentials of its own: the hidden 404 passes through, as before -----------


async def test_a_blob_of_a_hidden_private_repository_reaches_the_clients_token(
    tmp_path: Path,
) -> None:
    """The mirror's fill GET of a blob of ``team/mine`` gets the registry's 404 (it hides the
    repository from the mirror's token); the client, holding a token of ``team/mine``, was
    answered that 404 (relayed since 1b9672e) and its ``docker pull`` failed. Its GET goes
    upstream with its own token, and gets the blob."""
    hub = HidesPrivate()
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().get(BLOB, headers={"Authorization": hub.client_token})
        body = await response.get_data(as_text=False)
    assert (response.status_code, body) == (200, BASE)
    assert ("GET", hub.client_token) in hub.asked(BLOB)


@pytest.mark.parametrize("accept", [{}, ONE_PLATFORM], ids=["any-type", "no-index"])
async def test_a_manifest_of_a_hidden_private_repository_reaches_the_clients_token(
    tmp_path: Path, accept: dict[str, str]
) -> None:
    """As above for the manifest GET (6a42954: the mirror's GET's 404 relayed), and for a
    client that takes no index, looked up by the mirror's HEAD first (6b98411: its 404
    relayed): the client's GET goes upstream with its own token, and gets the manifest."""
    hub = HidesPrivate()
    manifest = hub.repos[MINE].manifests["1"]
    headers = {**accept, "Authorization": hub.client_token}
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().get(MANIFEST, headers=headers)
        body = await response.get_data(as_text=False)
    assert (response.status_code, body) == (200, manifest)
    assert ("GET", hub.client_token) in hub.asked(MANIFEST)


async def test_a_manifest_head_of_a_hidden_private_repository_reaches_the_clients_token(
    tmp_path: Path,
) -> None:
    """containerd resolves by HEAD: the mirror's HEAD got the hidden 404, relayed (6b98411).
    The client's HEAD goes upstream with its own token, and is told the manifest."""
    hub = HidesPrivate()
    manifest = hub.repos[MINE].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().head(
            MANIFEST, headers={"Authorization": hub.client_token}
        )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest_of(manifest)
    assert ("HEAD", hub.client_token) in hub.asked(MANIFEST)


@pytest.mark.parametrize("kind", ["blob", "manifest"])
async def test_a_token_the_mirror_relayed_for_a_login_reaches_the_private_content(
    tmp_path: Path, kind: str
) -> None:
    """End to end as docker does it: ``docker login`` to the mirror, whose token endpoint
    relays the login to the registry's token service; the token it hands back reads
    ``team/mine``, which the mirror's own (anonymous) token is told does not exist."""
    hub = HidesPrivate()
    path = BLOB if kind == "blob" else MANIFEST
    async with mirror(tmp_path, hub) as app:
        token = await token_from_mirror(app, ACCOUNT)
        response = await app.test_client().get(path, headers={"Authorization": token})
    assert response.status_code == 200
    assert hub.asked(path)[-1] == ("GET", token)


async def test_a_basic_login_reaches_the_private_content(tmp_path: Path) -> None:
    """A client sending a Basic login of its own (podman, containerd answering a Basic
    challenge) has credentials of its own too: its GET goes upstream."""
    hub = HidesPrivate()
    login = basic(*ACCOUNT)
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().get(BLOB, headers={"Authorization": login})
    assert ("GET", login) in hub.asked(BLOB)  # passed through: the registry's answer to it
    assert json.loads(await response.get_data(as_text=False))["errors"][0]["code"] == "NAME_UNKNOWN"


# --- 2. a client without credentials of its own: the one relayed 404 -----------------------------


@pytest.mark.parametrize(
    ("method", "kind"), [("GET", "blob"), ("GET", "manifest"), ("HEAD", "manifest")]
)
async def test_an_anonymous_client_still_gets_the_one_relayed_404(
    tmp_path: Path, method: str, kind: str
) -> None:
    """A client holding the token the mirror's endpoint relayed for an anonymous pull asks as
    nobody, as the mirror's own token does: the registry would tell it the same 404. It gets
    the one the mirror's request got, nothing sent again."""
    hub = HidesPrivate()
    path = BLOB if kind == "blob" else MANIFEST
    async with mirror(tmp_path, hub) as app:
        token = await token_from_mirror(app)
        assert mirror_state(app).client.anonymous_tokens.holds(token)
        client = app.test_client()
        ask = client.head if method == "HEAD" else client.get
        response = await ask(path, headers={"Authorization": token})
    assert response.status_code == 404
    assert [m for m, _ in hub.asked(path)] == [method]


async def test_a_client_without_authorization_still_gets_the_one_relayed_404(
    tmp_path: Path,
) -> None:
    """No ``Authorization`` at all (a script's curl, an open registry's client): relayed."""
    hub = HidesPrivate()
    async with mirror(tmp_path, hub) as app:
        response = await app.test_client().get(BLOB)
    assert response.status_code == 404
    assert [m for m, _ in hub.asked(BLOB)] == ["GET"]


# --- 3. the rule itself ----------------------------------------------------------------------


PULL = Pull(
    Upstream("https://registry.test"),
    MINE,
    Reference(MINE, Kind.BLOB, digest=parse_digest(digest_of(BASE))),
)
ANSWERED = UpstreamAnswered(404, b"", MINE)


@pytest.mark.parametrize(
    ("authorization", "relayed"),
    [
        (None, True),  # nothing sent, or none meant for the upstream (users mode)
        ("anonymous", True),  # a token the mirror relayed for an anonymous pull
        ("Bearer of-a-login", False),
        (basic(*ACCOUNT), False),
    ],
    ids=["none", "anonymous-token", "login-token", "basic-login"],
)
def test_the_registrys_word_is_relayed_only_to_a_client_without_its_own_credentials(
    authorization: str | None, relayed: bool
) -> None:
    """What :func:`upstream_failed` makes of the registry's 404 in the pull's repository: the
    client's answer when its request carries nothing of its own for the upstream; passed
    through with the client's credentials (``upstream-answer``: it gets the registry's own
    answer to them) when it does."""
    if authorization == "anonymous":
        pull = replace(PULL, authorization="Bearer relayed-anonymously", anonymous_token=True)
    else:
        pull = replace(PULL, authorization=authorization)
    outcome = upstream_failed(ANSWERED, pull)
    assert outcome.reason is Reason.UPSTREAM_ANSWER
    assert (outcome.failed is ANSWERED) is relayed
