"""Faults of the token endpoint and of challenges, each found by review and shown here first.

Every test drives the app as a client would (``/v2/``, content, ``/auth/token``) against the
fake upstream, and asserts what the client sees and what reached the upstream.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from docxy.access.clientca import ClientCA
from docxy.core.challenge import parse_challenge
from docxy.http.auth import refused_login
from tests.unit import test_multi_routes as multi
from tests.unit.asgi import call_asgi
from tests.unit.fakes import Handler, reply
from tests.unit.test_access_routes import CERTS, presenting, token_for, users_mirror
from tests.unit.test_routes import (
    AUTH,
    HUB_CHALLENGE,
    MIRROR_REALM,
    hub,
    mirror,
)

JSON = {"Content-Type": "application/json"}


# --- an upstream offering Basic and Bearer ----------------------------------------------------


def basic_then_bearer(joined: bool) -> httpx.Response:
    """A 401 offering Basic first, then Bearer: as two headers, or as one value."""
    bearer = HUB_CHALLENGE + ',scope="repository:library/redis:pull"'
    if joined:
        return reply(
            401, b"{}", [("WWW-Authenticate", f'Basic realm="r", {bearer}'), *JSON.items()]
        )
    headers = [("WWW-Authenticate", 'Basic realm="r"'), ("WWW-Authenticate", bearer)]
    return reply(401, b"{}", [*headers, *JSON.items()])


@pytest.mark.parametrize("joined", [False, True], ids=["two-headers", "one-value"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/library/redis/manifests/7"])
async def test_a_bearer_challenge_beside_basic_gets_the_mirrors_realm(
    path: str, joined: bool
) -> None:
    """The upstream's Bearer realm never reaches the client; the mirror's does."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return hub(request)
        return basic_then_bearer(joined)

    async with mirror(upstream) as m:
        answer = await m.raw("GET", path)
    offered = answer.headers.get_all("WWW-Authenticate")
    assert answer.status == 401
    assert offered and not any(AUTH in value for value in offered), offered
    parsed = [parse_challenge(value) for value in offered]
    bearers = [p for p in parsed if p is not None and p.scheme.lower() == "bearer"]
    assert [b.realm for b in bearers] == [MIRROR_REALM]
    assert bearers[0].service == "registry.example"


async def test_the_token_realm_is_found_beside_a_basic_challenge() -> None:
    """No configured realm: the mirror finds the upstream's token service in a ``/v2/`` that
    offers Basic first (it took the first header only, and answered 404 'no token auth')."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return hub(request)
        return basic_then_bearer(joined=False)

    async with mirror(upstream, {"upstream.auth_realm": ""}) as m:
        response = await m.client.get("/auth/token?scope=repository:redis:pull")
        assert response.status_code == 200, await response.get_data()
        assert (await response.get_json())["token"] == "t0ken"
    assert [r.url.host for r in m.upstream.requests] == ["registry.example", "auth.example"]


# --- clients.json that cannot be read ---------------------------------------------------------


async def test_an_unreadable_client_list_is_a_registry_error_naming_the_file(
    tmp_path: Path,
) -> None:
    """clients.json made a directory (EISDIR), as a permission problem would: a client that
    presents a certificate is told the mirror cannot read its client list (503, registry JSON)
    instead of an internal error; nothing of the file's content is said."""
    async with users_mirror(tmp_path, **CERTS) as m, presenting(tmp_path, "laptop"):
        clients = ClientCA(tmp_path).clients_path
        kept = clients.read_text()
        clients.unlink()
        clients.mkdir()
        for path in ("/v2/", "/v2/library/redis/manifests/7"):
            answer = await m.raw("GET", path)
            assert answer.status == 503, answer.body
            body = json.loads(answer.body)
            assert body["errors"][0]["code"] == "UNAVAILABLE"
            assert "clients.json" in body["errors"][0]["message"]
            assert str(tmp_path) not in answer.body.decode()
        clients.rmdir()
        clients.write_text(kept)
        assert (await m.raw("GET", "/v2/")).status == 200  # fixed: honoured again
    assert [r for r in m.upstream.requests if "/manifests/" in r.url.path] == []


def test_client_list_read_errors_name_the_file(tmp_path: Path) -> None:
    from docxy.access.clientca import ClientsFileError

    ca = ClientCA(tmp_path)
    ca.clients_path.mkdir(parents=True)
    with pytest.raises(ClientsFileError, match="clients.json"):
        ca.entries()


# --- a token for another repository -----------------------------------------------------------


async def test_a_token_for_another_repository_asks_for_the_scope_needed(tmp_path: Path) -> None:
    """As Distribution answers: 401 with the mirror's Bearer challenge, error
    ``insufficient_scope`` and the scope the request needs, so the client fetches a token for
    it (containerd does on a 401 naming an error; a 403 ends its pull)."""
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        answer = await m.raw(
            "GET", "/v2/library/nginx/manifests/1", [("Authorization", f"Bearer {token}")]
        )
        assert answer.status == 401
        assert json.loads(answer.body)["errors"][0]["code"] == "UNAUTHORIZED"
        challenge = parse_challenge(answer.headers["WWW-Authenticate"])
        assert challenge is not None and challenge.scheme == "Bearer"
        assert challenge.params == {
            "realm": MIRROR_REALM,
            "service": "mirror.example.com",
            "scope": "repository:library/nginx:pull",
            "error": "insufficient_scope",
        }
        # the token the challenge leads to pulls
        again = await token_for(m, challenge.params["scope"])
        fetched = await m.raw(
            "GET", "/v2/library/nginx/manifests/1", [("Authorization", f"Bearer {again}")]
        )
        assert fetched.status == 200


# --- whose login goes where -------------------------------------------------------------------

MIRROR_LOGIN = ("Authorization", "Basic Ym9iOmh1bnRlcjI=")  # `docker login mirror.example.com`


async def follow_challenge(m: multi.Mirror, path: str, host: str) -> httpx.Request:
    """GET ``path`` on ``host``, then ask the realm its challenge names with the client's login
    for ``host``, as docker does: the request that reached the upstream's token service."""
    answer = await call_asgi(m.app, "GET", path, host=host)
    assert answer.status == 401
    challenge = parse_challenge(answer.headers["WWW-Authenticate"])
    assert challenge is not None and challenge.realm is not None
    realm = httpx.URL(challenge.realm)
    query = httpx.QueryParams(realm.params).merge(
        {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
    )
    before = len(m.upstream.requests)
    token = f"{realm.path}?{query}"
    answered = await call_asgi(
        m.app, "GET", token, host="mirror.example.com", headers=[MIRROR_LOGIN]
    )
    assert answered.status == 200, answered.body
    [sent] = [r for r in m.upstream.requests[before:] if r.url.host.startswith("auth.")]
    return sent


async def test_the_mirrors_login_never_goes_to_an_upstream_named_by_path_prefix() -> None:
    """`docker pull mirror.example.com/ghcr.test/owner/img`: the login docker sends is the one
    for mirror.example.com, which stands for Docker Hub; ghcr.test's token service must not
    get it, from the ``/v2/`` realm or from the realm of ghcr.test's own challenge."""
    async with multi.mirror() as m:
        sent = await follow_challenge(
            m, "/v2/ghcr.test/owner/img/manifests/1", "mirror.example.com"
        )
    assert sent.url.host == "auth.ghcr.example"
    assert "authorization" not in sent.headers
    assert sent.url.params.get_list("scope") == ["repository:owner/img:pull"]


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/v2/owner/img/manifests/1?ns=ghcr.test", "mirror.example.com"),  # containerd mirror
        ("/v2/owner/img/manifests/1", "ghcr-mirror.example.com"),  # a host that stands for it
        ("/v2/owner/img/manifests/1", "mirror.example.com"),  # Docker Hub, the default
    ],
    ids=["ns", "host", "default"],
)
async def test_a_login_still_goes_to_the_upstream_its_host_stands_for(path: str, host: str) -> None:
    hosts: dict[str, object] = {"upstreams.ghcr.test.hosts": "ghcr-mirror.example.com"}
    async with multi.mirror(None, **hosts) as m:
        sent = await follow_challenge(m, path, host)
    assert sent.headers.get("authorization") == MIRROR_LOGIN[1]


async def test_users_file_unreadable_while_a_certificate_client_logs_in_is_503(
    tmp_path: Path,
) -> None:
    """``auth.upstream_logins``: a certificate client's Basic login goes upstream unless it
    names one of the mirror's users. With the users file unreadable the mirror cannot tell:
    it answers 503 (it was a 500) and sends nothing."""
    settings = {"auth.upstream_logins": "true", **CERTS}
    async with users_mirror(tmp_path, **settings) as m, presenting(tmp_path, "laptop"):
        (tmp_path / "users").write_text("alice has no hash\n")
        answer = await m.raw(
            "GET", "/auth/token?scope=repository:x:pull", [basic_header("alice", "right")]
        )
        assert answer.status == 503
        assert json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert [r for r in m.upstream.requests if r.url.host == "auth.example"] == []


def basic_header(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


# --- the OAuth2 form of the token request (POST) ----------------------------------------------


def password_grant(user: str, password: str, scope: str) -> dict[str, str]:
    """What containerd (and docker with an identity token, as ``refresh_token``) POSTs."""
    return {
        "grant_type": "password",
        "username": user,
        "password": password,
        "service": "mirror.example.com",
        "scope": scope,
        "client_id": "containerd-client",
        "access_type": "offline",
    }


async def test_users_mode_answers_the_password_grant(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        form = password_grant("alice", "right", "repository:library/redis:pull")
        response = await m.client.post("/auth/token", form=form)
        assert response.status_code == 200, await response.get_data()
        body = await response.get_json()
        assert response.headers["Cache-Control"] == "no-store"
        assert "refresh_token" not in body  # none issued: nothing to revoke later
        assert body["expires_in"] > 0 and body["scope"] == "repository:library/redis:pull"
        pulled = await m.client.get(
            "/v2/library/redis/manifests/7",
            headers={"Authorization": f"Bearer {body['access_token']}"},
        )
        assert pulled.status_code == 200
        wrong = await m.client.post("/auth/token", form=password_grant("alice", "wrong", "x"))
        assert wrong.status_code == 401 and "access_token" not in await wrong.get_json()
        nobody = await m.client.post("/auth/token", form={"grant_type": "password"})
        assert nobody.status_code == 401
    # The logins are the mirror's to check: none reaches the upstream's token service (the
    # pull, passed through, asks it for the mirror's own token, without a login of alice's).
    logins = [r for r in m.upstream.requests if r.url.host == "auth.example"]
    assert all(r.headers.get("authorization") != basic_header("alice", "right")[1] for r in logins)
    assert all("alice" not in str(r.url) for r in logins)


async def test_users_mode_refuses_a_refresh_token_it_never_issued(tmp_path: Path) -> None:
    """The mirror issues no refresh tokens; one from elsewhere (an identity token docker kept
    from another registry at this address) is a 401 telling to log in again, not a 405."""
    async with users_mirror(tmp_path) as m:
        form = {"grant_type": "refresh_token", "refresh_token": "abc", "service": "s", "scope": "x"}
        response = await m.client.post("/auth/token", form=form)
        assert response.status_code == 401
        body = await response.get_json()
        assert "docker login" in body["errors"][0]["message"]
    assert [r for r in m.upstream.requests if r.url.host == "auth.example"] == []


async def test_fronting_the_upstream_the_password_grant_is_asked_with_basic() -> None:
    """Open mode: the form's username and password go to the upstream's token service as the
    GET form every token service takes (Basic), scopes rewritten as for GET; the answer
    carries ``access_token``, which is all a POST client reads."""
    async with mirror() as m:
        form = password_grant("bob", "hunter2", "repository:redis:pull")
        response = await m.client.post("/auth/token", form=form)
        assert response.status_code == 200, await response.get_data()
        assert (await response.get_json())["access_token"] == "t0ken"
    [sent] = m.upstream.requests
    assert (sent.method, sent.url.host) == ("GET", "auth.example")
    assert sent.headers["authorization"] == "Basic Ym9iOmh1bnRlcjI="
    assert sent.url.params.get_list("scope") == ["repository:library/redis:pull"]
    assert sent.url.params.get_list("service") == ["mirror.example.com"]


async def test_fronting_the_upstream_a_refresh_token_is_relayed_as_a_post() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = {"access_token": "fresh", "expires_in": 300, "refresh_token": "r2"}
            return reply(200, json.dumps(body).encode(), JSON)
        return hub(request)

    async with mirror(upstream) as m:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": "r1",
            "service": "registry.example",
            "scope": "repository:redis:pull",
            "client_id": "docker",
        }
        response = await m.client.post("/auth/token", form=form)
        assert response.status_code == 200, await response.get_data()
        assert (await response.get_json())["access_token"] == "fresh"
    [sent] = m.upstream.requests
    assert (sent.method, sent.url.host) == ("POST", "auth.example")
    assert "authorization" not in sent.headers
    relayed = httpx.QueryParams(sent.content.decode())
    assert relayed["grant_type"] == "refresh_token" and relayed["refresh_token"] == "r1"
    assert relayed["scope"] == "repository:library/redis:pull"
    assert relayed["client_id"] == "docker"


@pytest.mark.parametrize(
    "grant",
    [
        {"grant_type": "password", "username": "bob", "password": "hunter2"},
        {"grant_type": "refresh_token", "refresh_token": "hub-refresh"},
    ],
    ids=["password", "refresh_token"],
)
async def test_a_posted_login_goes_where_a_basic_one_would(grant: dict[str, str]) -> None:
    """The mirror's login (or refresh token) never reaches an upstream named by path prefix:
    that token request is answered anonymously, as a GET with Basic would be."""
    async with multi.mirror() as m:
        form = {**grant, "scope": "repository:ghcr.test/owner/img:pull", "service": "s"}
        response = await m.app.test_client().post("/auth/token?upstream=ghcr.test", form=form)
        assert response.status_code == 200, await response.get_data()
    [sent] = [r for r in m.upstream.requests if r.url.host.startswith("auth.")]
    assert (sent.method, sent.url.host) == ("GET", "auth.ghcr.example")
    assert "authorization" not in sent.headers and not sent.content
    assert "hub-refresh" not in str(sent.url) and "hunter2" not in str(sent.url)


# --- the upstream's "try later" on what the mirror relays ------------------------------------


def rate_limited(request: httpx.Request) -> httpx.Response:
    """Docker Hub rate-limiting the mirror's address: its token service and its ``/v2/``."""
    body = b'{"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}'
    return reply(429, body, [("Retry-After", "37"), *JSON.items()])


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/auth/token?scope=repository:library/redis:pull", {}),
        ("/auth/token?scope=repository:library/redis:pull", {"Authorization": "Basic Ym9iOnB3"}),
        ("/v2/", {"Authorization": "Bearer hub-token"}),  # docker login checking its token
    ],
    ids=["token", "token-with-login", "v2-with-token"],
)
async def test_a_relayed_429_keeps_the_upstreams_retry_after(
    path: str, headers: dict[str, str]
) -> None:
    """Without a cache the mirror relays the upstream's answer to a token request or a
    credentialed ``/v2/``, and a ``429`` came without the ``Retry-After`` the upstream gave:
    the client was told to slow down, not for how long. (Pass-throughs of content kept it.)"""
    async with mirror(rate_limited) as m:
        answer = await m.client.get(path, headers=headers)
        assert answer.status_code == 429
        assert answer.headers.get("Retry-After") == "37"
        body = await answer.get_json()
        assert body["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_a_clients_refresh_token_answered_429_is_not_the_mirrors_rate_limit() -> None:
    """A refresh token is the client's own credential, in the form (no ``Authorization``):
    the upstream's 429 to it was taken for the mirror's own, and ``/health`` said degraded
    for as long as its ``Retry-After`` (up to hours), for one client's account."""

    def upstream(request: httpx.Request) -> httpx.Response:
        return rate_limited(request) if request.method == "POST" else hub(request)

    async with mirror(upstream) as m:
        form = {"grant_type": "refresh_token", "refresh_token": "r1", "service": "s"}
        answer = await m.client.post("/auth/token", form=form)
        assert answer.status_code == 429
        report = await (await m.client.get("/health")).get_json()
    assert report["status"] == "ok", report


# --- a 401 from the upstream's token service ---------------------------------------------------


def login_refused(offered: dict[str, str]) -> Handler:
    """Every registry of ``multi.registries``, their token services refusing every login as
    Docker Hub's does (``{"details": ...}``, not a registry error), with ``offered`` headers."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host.startswith("auth."):
            body = b'{"details": "incorrect username or password"}'
            return reply(401, body, {**offered, **JSON})
        return multi.registries(request)

    return handler


@pytest.mark.parametrize(
    "offered",
    [{}, {"WWW-Authenticate": 'Basic realm="auth.hub.example"'}],
    ids=["no-challenge", "upstream-basic"],
)
@pytest.mark.parametrize(
    ("v2", "token"),
    [
        ("/v2/", "/auth/token?scope=repository:library/redis:pull"),
        ("/v2/?ns=ghcr.test", "/auth/token?upstream=ghcr.test&scope=repository:o/i:pull"),
    ],
    ids=["default", "named-upstream"],
)
async def test_a_refused_login_is_a_registry_401_with_the_mirrors_challenge(
    offered: dict[str, str], v2: str, token: str
) -> None:
    """The upstream's token service refusing a login (a wrong password) was relayed as it came:
    a ``401`` with no ``WWW-Authenticate`` (which RFC 9110 requires on a 401, and Docker's
    client reads to tell what went wrong), or with the upstream's own challenge, and its body,
    not a registry error. Now the client gets the challenge the mirror's ``/v2/`` sends for
    that upstream and the registry's ``UNAUTHORIZED`` body, the upstream's words in its
    message."""
    async with multi.mirror() as m:
        m.upstream.handler = login_refused(offered)
        ping = await m.get(v2)
        assert ping.status == 401
        login = [("Authorization", "Basic " + base64.b64encode(b"bob:wrong").decode())]
        answer = await call_asgi(m.app, "GET", token, host="mirror.example.com", headers=login)
    assert answer.status == 401
    assert answer.headers.get_all("WWW-Authenticate") == ping.headers.get_all("WWW-Authenticate")
    challenge = parse_challenge(answer.headers["WWW-Authenticate"])
    assert challenge is not None and challenge.realm is not None
    assert challenge.realm.startswith(multi.PUBLIC + "/auth/token")
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    [error] = json.loads(answer.body)["errors"]
    assert error["code"] == "UNAUTHORIZED"
    assert "incorrect username or password" in error["message"]


# --- what the token service answers besides a token ------------------------------------------


def html_page(status: int) -> Handler:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(401, b"{}", {"WWW-Authenticate": HUB_CHALLENGE})
        page = b"<html><body>Forbidden by the CDN</body></html>"
        return reply(status, page, {"Content-Type": "text/html"})

    return upstream


@pytest.mark.parametrize("status", [403, 502])
async def test_a_token_services_html_error_page_becomes_a_json_error(status: int) -> None:
    """A CDN's or proxy's HTML page in front of the token service: the client parses error
    bodies as JSON, so it gets the mirror's registry error saying the status instead."""
    async with mirror(html_page(status)) as m:
        answer = await m.client.get("/auth/token?scope=repository:library/redis:pull")
        assert answer.status_code == status
        body = await answer.get_json()
        assert body["errors"][0]["message"] == f"the upstream's token service answered {status}"
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"details": "incorrect username or password"}', "incorrect username or password"),
        (
            b'{"error": "invalid_grant", "error_description": "refresh token expired"}',
            "refresh token expired",
        ),
        (b'{"error": "invalid_client"}', "invalid_client"),
        (b'{"message": "bad credentials"}', "bad credentials"),
        (b'{"details": 7, "error": "unauthorized_client"}', "unauthorized_client"),
    ],
    ids=["hub-details", "oauth-description", "oauth-code", "message", "first-string"],
)
async def test_a_refused_logins_words_come_from_whichever_field_the_token_service_used(
    body: bytes, words: str
) -> None:
    """Only Docker Hub's ``details`` lent its words to the message; an OAuth2 token service
    refusing a ``POST`` grant (RFC 6749: ``error``, ``error_description``) or one answering
    ``{"message": ...}`` left the client with "refused the login" and nothing of why."""
    answer = refused_login('Bearer realm="https://mirror.example.com/auth/token"', body)
    [error] = json.loads(await answer.get_data())["errors"]
    assert error["message"] == f"the upstream's token service refused the login: {words}"


@pytest.mark.parametrize(
    "body", [b'{"error": "a\\nb"}', b'{"details": ""}', b"[]", b'{"error": "' + b"x" * 201 + b'"}']
)
async def test_a_refused_logins_unprintable_or_long_words_are_left_out(body: bytes) -> None:
    answer = refused_login('Bearer realm="https://mirror.example.com/auth/token"', body)
    [error] = json.loads(await answer.get_data())["errors"]
    assert error["message"] == "the upstream's token service refused the login"
