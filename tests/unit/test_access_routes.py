"""Users mode through the app: the mirror's own challenge, tokens and refusals; and the
offline token, which is never an answer to credentials the mirror cannot check."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.access.keys import KeyRing
from docxy.access.users import UsersFile
from docxy.core.challenge import parse_challenge
from tests.unit.asgi import call_asgi
from tests.unit.fakes import reply
from tests.unit.test_routes import HUB_CHALLENGE, MIRROR_REALM, Mirror, hub, mirror

MANIFEST_PATH = "/v2/library/redis/manifests/7"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def users_mirror(tmp_path: Path, **settings: object) -> AsyncIterator[Mirror]:
    UsersFile(tmp_path / "users").add("alice", "right")
    config: dict[str, object] = {"auth.mode": "users", "auth.dir": str(tmp_path)}
    config.update(settings)
    async with mirror(hub, config) as m:
        yield m


async def token_for(m: Mirror, scope: str, user: str = "alice", password: str = "right") -> str:
    response = await m.client.get(f"/auth/token?scope={scope}", headers=basic(user, password))
    assert response.status_code == 200, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    return str(body["token"])


async def code_of(response: Any) -> str:
    body = await response.get_json()
    return str(body["errors"][0]["code"])


async def test_no_token_gets_the_mirrors_own_challenge_with_the_scope(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        for path, scope in (("/v2/", None), (MANIFEST_PATH, "repository:library/redis:pull")):
            response = await m.client.get(path)
            assert response.status_code == 401
            challenge = parse_challenge(response.headers["WWW-Authenticate"])
            assert challenge is not None and challenge.realm == MIRROR_REALM
            assert challenge.service == "mirror.example.com"
            assert challenge.params.get("scope") == scope
            assert await code_of(response) == "UNAUTHORIZED"
        assert m.upstream.requests == []  # the upstream never hears of refused clients


async def test_right_password_gets_a_token_that_pulls(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        assert (await m.client.get("/v2/", headers=bearer(token))).status_code == 200
        response = await m.client.get(MANIFEST_PATH, headers=bearer(token))
        assert response.status_code == 200
        # upstream, the mirror uses its own credentials: never the client's token
        sent = [r for r in m.upstream.requests if "/manifests/" in r.url.path]
        assert sent and all(r.headers.get("Authorization") != f"Bearer {token}" for r in sent)


@pytest.mark.parametrize(
    "headers",
    [basic("alice", "wrong"), basic("mallory", "right"), basic("alice", ""), {}, bearer("x")],
)
async def test_wrong_or_no_credentials_get_no_token(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with users_mirror(tmp_path) as m:
        response = await m.client.get("/auth/token?scope=repository:x:pull", headers=headers)
        assert response.status_code == 401
        assert "token" not in await response.get_json()
        assert m.upstream.requests == []


async def test_a_token_for_one_repository_is_denied_on_another(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        response = await m.client.get("/v2/library/nginx/manifests/1", headers=bearer(token))
        assert response.status_code == 401  # with error="insufficient_scope": test_auth_faults
        assert await code_of(response) == "UNAUTHORIZED"
        # docker's short name and Docker Hub's library/ name are one repository
        short = await token_for(m, "repository:redis:pull")
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(short))).status_code == 200


async def test_a_removed_users_tokens_stop_working(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        UsersFile(tmp_path / "users").remove("alice")  # `docxy users rm alice`, another process
        response = await m.client.get(MANIFEST_PATH, headers=bearer(token))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert (await m.client.get("/v2/", headers=bearer(token))).status_code == 401


async def test_expired_tokens_and_tokens_of_another_key_are_refused(tmp_path: Path) -> None:
    async with users_mirror(tmp_path, **{"auth.token_ttl": "60"}) as m:
        token = await token_for(m, "repository:library/redis:pull")
        from docxy.access.tokens import issue
        from docxy.http.state import mirror_state

        access = mirror_state(m.app).access
        assert access is not None
        expired = issue(access.keys, access.spec, "alice", [], time.time() - 120)
        assert (await m.client.get("/v2/", headers=bearer(expired))).status_code == 401
        stranger = issue(KeyRing(tmp_path / "other", 60), access.spec, "alice", [], time.time())
        assert (await m.client.get("/v2/", headers=bearer(stranger))).status_code == 401
        assert (await m.client.get("/v2/", headers=bearer(token))).status_code == 200


async def test_a_retired_key_cannot_mint_tokens_after_the_rotation(tmp_path: Path) -> None:
    """The review's reproduction: after ``docxy tokens rotate``, a copy of the retired key
    signed a token for ten years that the mirror honoured (200) for all of ``auth.key_grace``.
    It is refused now, while the token the mirror issued before the rotation still pulls."""
    import jwt

    from docxy.access.keys import SigningKey, load_key
    from docxy.http.state import mirror_state

    async with users_mirror(tmp_path) as m:
        issued = await token_for(m, "repository:library/redis:pull")
        access = mirror_state(m.app).access
        assert access is not None
        leaked = SigningKey.of(load_key(tmp_path / "token-key.pem"))
        KeyRing(tmp_path, 3600).rotate()  # `docxy tokens rotate`, another process
        now = int(time.time()) + 10  # past the leeway: signed after the rotation
        claims: dict[str, object] = {"iss": access.spec.issuer, "sub": "alice"}
        claims["aud"] = access.spec.audience
        claims |= {"iat": now, "nbf": now - 60, "exp": now + 10 * 365 * 86400}
        claims["access"] = [{"type": "repository", "name": "library/redis", "actions": ["pull"]}]
        forged = jwt.encode(claims, leaked.key, algorithm="ES256", headers={"kid": leaked.kid})
        response = await m.client.get(MANIFEST_PATH, headers=bearer(forged))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(issued))).status_code == 200


async def test_users_mode_issues_tokens_while_the_upstream_is_down(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {"auth.mode": "users", "auth.dir": str(tmp_path)}
    async with mirror(down, settings) as m:
        response = await m.client.get("/auth/token", headers=basic("alice", "wrong"))
        assert response.status_code == 401
        assert (
            await m.client.get("/auth/token", headers=basic("alice", "right"))
        ).status_code == 200


# --- open mode: the offline token ---------------------------------------------------------


def auth_down(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        raise httpx.ConnectError("refused")
    return hub(request)


@pytest.mark.parametrize("password", ["wrong", "hunter2"])
async def test_offline_token_is_never_an_answer_to_credentials(
    tmp_path: Path, password: str
) -> None:
    """While the upstream's token service is down, credentials cannot be checked: no token
    (today's mirror handed out its offline token, so `docker login` "succeeded")."""
    settings: dict[str, object] = {"cache.enabled": "true", "cache.dir": str(tmp_path / "cache")}
    async with mirror(auth_down, settings) as m:
        response = await m.client.get("/auth/token", headers=basic("bob", password))
        assert response.status_code == 503
        body = await response.get_json()
        assert "token" not in body and body["errors"][0]["code"] == "UNAVAILABLE"
        anonymous = await m.client.get("/auth/token?scope=repository:library/redis:pull")
        assert anonymous.status_code == 200  # anonymous pulls of cached content go on
        assert (await anonymous.get_json())["token"]


@pytest.mark.parametrize("skew", [-50, 60, 3600])
async def test_the_offline_token_is_timed_by_the_clients_own_clock(
    tmp_path: Path, skew: int
) -> None:
    """The offline token's answer said ``issued_at`` in the mirror's time (the users-mode
    token's no longer does: test_review_access3b): a client whose clock ran its 60 s lifetime
    ahead took it for expired on arrival and asked again before every request, for as long as
    the upstream's token service was down."""
    from datetime import datetime, timedelta

    from tests.unit.test_review_access3b import client_expiry

    settings: dict[str, object] = {"cache.enabled": "true", "cache.dir": str(tmp_path / "cache")}
    async with mirror(auth_down, settings) as m:
        response = await m.client.get("/auth/token?scope=repository:library/redis:pull")
        assert response.status_code == 200
        body = await response.get_json()
    client_now = datetime.now().astimezone() + timedelta(seconds=skew)
    expiry = client_expiry(body, client_now)
    assert expiry - client_now > timedelta(seconds=body["expires_in"] - 10)


# --- client certificates (the TLS layer's verdict stands in: peer._PEER_CERT) ---------------


@asynccontextmanager
async def presenting(tmp_path: Path, client: str | None) -> AsyncIterator[None]:
    """Requests made inside carry the client certificate ``docxy clients add`` issued."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from docxy.access import peer
    from docxy.access.clientca import ClientCA

    der = None
    if client is not None:
        ClientCA(tmp_path).issue(client, tmp_path / f"kit-{client}")
        pem = (tmp_path / f"kit-{client}" / "client.cert").read_bytes()
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    token = peer._PEER_CERT.set(der)
    try:
        yield
    finally:
        peer._PEER_CERT.reset(token)


CERTS = {"auth.client_certs": "true", "server.tls_listen": "127.0.0.1:8443"}


async def test_a_client_certificate_pulls_without_a_token(tmp_path: Path) -> None:
    async with users_mirror(tmp_path, **CERTS) as m, presenting(tmp_path, "laptop"):
        assert (await m.client.get("/v2/")).status_code == 200
        response = await m.client.get(MANIFEST_PATH, headers=bearer("hub-token"))
        assert response.status_code == 200
    async with users_mirror(tmp_path, **CERTS) as m, presenting(tmp_path, None):
        assert (await m.client.get("/v2/")).status_code == 401


async def test_a_revoked_certificate_is_anonymous(tmp_path: Path) -> None:
    from docxy.access.clientca import ClientCA

    async with users_mirror(tmp_path, **CERTS) as m, presenting(tmp_path, "laptop"):
        assert ClientCA(tmp_path).revoke("laptop")
        assert (await m.client.get(MANIFEST_PATH)).status_code == 401


def private(request: httpx.Request) -> httpx.Response:
    """An upstream where library/secret needs the client's own Docker Hub token."""
    if "/secret/" in request.url.path:
        if request.headers.get("Authorization") != "Bearer hub-token":
            return reply(401, b"{}", {"WWW-Authenticate": HUB_CHALLENGE})
    return hub(request)


@pytest.mark.parametrize("allowed", [False, True])
async def test_upstream_logins_pass_through_only_when_the_operator_allows(
    tmp_path: Path, allowed: bool
) -> None:
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.upstream_logins": str(allowed).lower(),
        **CERTS,
    }
    async with mirror(private, settings) as m, presenting(tmp_path, "laptop"):
        path = "/v2/library/secret/manifests/1"
        response = await m.client.get(path, headers=bearer("hub-token"))
        assert response.status_code == (200 if allowed else 403)
        sent = [
            r.headers.get("Authorization") for r in m.upstream.requests if "secret" in r.url.path
        ]
        assert ("Bearer hub-token" in sent) is allowed
        # Without a login of its own, a client the operator lets bring one is asked for it
        # (the upstream's challenge, re-pointed here); any other is told no login helps.
        response = await m.client.get(path)
        assert response.status_code == (401 if allowed else 403)
        if allowed:
            assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
        else:
            assert await code_of(response) == "DENIED"
            assert "WWW-Authenticate" not in response.headers


async def test_a_users_mode_pull_the_upstream_refuses_the_mirror_is_denied_not_challenged(
    tmp_path: Path,
) -> None:
    """What the upstream answers 401 to the mirror's own login (a repository private to
    another account, or none of that name: Docker Hub answers both so) was relayed to a user
    with its challenge re-pointed here, for a token of the mirror's: the client fetched one
    (a password check) and met the same 401 (containerd: ``insufficient_scope: authorization
    failed``; docker: ``may require 'docker login'``). It is ``403 DENIED`` saying why."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {"auth.mode": "users", "auth.dir": str(tmp_path)}
    async with mirror(private, settings) as m:
        token = await token_for(m, "repository:library/secret:pull")
        path = "/v2/library/secret/manifests/1"
        for method in ("get", "head"):
            response = await getattr(m.client, method)(path, headers=bearer(token))
            assert response.status_code == 403, method
            assert "WWW-Authenticate" not in response.headers
            if method == "get":
                assert await code_of(response) == "DENIED"
                message = (await response.get_json())["errors"][0]["message"]
                assert "a login to this mirror cannot change that" in message


async def test_an_unreadable_users_file_is_503_not_an_internal_error(tmp_path: Path) -> None:
    """A users file broken by hand while tokens are out: pulls say why (503, registry JSON)
    instead of a 500 with a traceback, and nothing is let through."""
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        (tmp_path / "users").write_text("alice has no hash\n")
        for path in ("/v2/", MANIFEST_PATH):
            response = await m.client.get(path, headers=bearer(token))
            assert response.status_code == 503
            assert await code_of(response) == "UNAVAILABLE"
        assert [r for r in m.upstream.requests if "/manifests/" in r.url.path] == []


async def test_health_tells_strangers_only_status_and_version_in_users_mode(
    tmp_path: Path,
) -> None:
    async with users_mirror(tmp_path) as m:
        response = await m.client.get("/health")
        assert response.status_code == 200
        report: dict[str, Any] = await response.get_json()
        assert set(report) == {"status", "version"}  # no upstream URLs or their last errors
    async with mirror(hub, {}) as m:  # open mode keeps the whole report
        report = await (await m.client.get("/health")).get_json()
        assert "upstream" in report and "registry" in report["upstream"]


@pytest.mark.parametrize("value", ["Basic \u00e9t\u00e9", "Basic YWxpY2U6cmlnaHQ=\u00ff"])
async def test_basic_credentials_beyond_ascii_are_a_401_not_an_internal_error(
    tmp_path: Path, value: str
) -> None:
    """``base64.b64decode`` refuses text beyond ASCII with a plain ``ValueError``, which the
    Basic parser did not catch: such a header made ``/auth/token`` a ``500``."""
    async with users_mirror(tmp_path) as m:
        answer = await m.raw(
            "GET", "/auth/token?scope=repository:x:pull", [("Authorization", value)]
        )
        assert answer.status == 401
        assert answer.headers["Content-Type"] == "application/json"
        assert b'"UNAUTHORIZED"' in answer.body and b'token"' not in answer.body
        assert m.upstream.requests == []


async def test_the_mirrors_own_expired_or_retired_token_never_goes_upstream(
    tmp_path: Path,
) -> None:
    """With ``auth.upstream_logins``, a certificate client's Bearer token goes upstream unless
    it is the mirror's own. "Own" was decided by verifying it: a token the mirror issued that
    has since expired, or whose key was rotated out, failed the check and so was sent to
    the upstream, user name, issuer and all (README: never a token the mirror issued)."""
    from docxy.access.tokens import issue
    from docxy.http.state import mirror_state

    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.upstream_logins": "true",
        "auth.key_grace": "60",
        **CERTS,
    }
    async with mirror(private, settings) as m, presenting(tmp_path, "laptop"):
        access = mirror_state(m.app).access
        assert access is not None
        expired = issue(access.keys, access.spec, "alice", [], time.time() - 3600)
        retired = issue(access.keys, access.spec, "alice", [], time.time())
        access.keys.rotate()
        access.keys.rotate()  # the key that signed both is gone altogether
        path = "/v2/library/secret/manifests/1"
        for token in (expired, retired):
            response = await m.client.get(path, headers=bearer(token))
            assert response.status_code == 401
        sent = {r.headers.get("Authorization") for r in m.upstream.requests}
        assert f"Bearer {expired}" not in sent and f"Bearer {retired}" not in sent
        response = await m.client.get(path, headers=bearer("hub-token"))  # Docker Hub's own
        assert response.status_code == 200


async def test_password_guessing_is_throttled_per_address(tmp_path: Path) -> None:
    """Nothing limited password guesses at ``/auth/token`` (``limits.requests_per_minute`` is
    off by default): one address could try a dozen passwords a second for as long as it
    liked. Now ``limits.failed_logins_per_minute`` (default 10) wrong passwords from one
    address, and its next logins are ``429`` with ``Retry-After``, the right password too
    (else the refusal would not stop the guessing); another address logs in as before."""
    from docxy.access.logins import FailedLogins
    from docxy.http.state import mirror_state

    stranger = {"client": ("203.0.113.7", 40000)}
    neighbour = {"client": ("203.0.113.8", 40000)}
    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(10, clock=lambda: 100.0)  # no refill while checks run
        path = "/auth/token?scope=repository:library/redis:pull"
        for _ in range(10):
            wrong = await m.client.get(path, headers=basic("alice", "guess"), scope_base=stranger)
            assert wrong.status_code == 401
        for password in ("guess", "right"):
            throttled = await m.client.get(
                path, headers=basic("alice", password), scope_base=stranger
            )
            assert throttled.status_code == 429
            assert await code_of(throttled) == "TOOMANYREQUESTS"
            assert int(throttled.headers["Retry-After"]) >= 1
        right = await m.client.get(path, headers=basic("alice", "right"), scope_base=neighbour)
        assert right.status_code == 200


async def test_password_guesses_are_counted_per_ipv4_address_and_ipv6_64(
    tmp_path: Path,
) -> None:
    """The guesses of one /64 are one client's, whichever of its 2^64 addresses they come
    from; an IPv4 client reaching a dual-stack socket (``::ffff:203.0.113.7``) is the IPv4
    client."""
    from docxy.access.logins import FailedLogins
    from docxy.http.state import mirror_state

    path = "/auth/token?scope=repository:library/redis:pull"
    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(2, clock=lambda: 100.0)

        async def login(client: str, password: str = "guess") -> int:
            scope = {"client": (client, 40000)}
            answer = await m.client.get(path, headers=basic("alice", password), scope_base=scope)
            return answer.status_code

        assert [await login("2001:db8:1:2::1"), await login("2001:db8:1:2:ffff::9")] == [401, 401]
        assert await login("2001:db8:1:2::7", "right") == 429  # the same /64: out of guesses
        assert await login("2001:db8:1:3::1", "right") == 200  # the next /64
        assert [await login("203.0.113.7"), await login("::ffff:203.0.113.7")] == [401, 401]
        assert await login("203.0.113.7", "right") == 429
        assert await login("203.0.113.8", "right") == 200


async def test_the_mirrors_token_sent_to_its_token_endpoint_stays_here(tmp_path: Path) -> None:
    """With ``auth.upstream_logins``, a certificate client's token request goes upstream
    unless its Basic login names one of the mirror's users; a Bearer token the mirror issued
    was not such a login, so it was relayed to the upstream's token service."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.upstream_logins": "true",
        **CERTS,
    }
    async with mirror(private, settings) as m, presenting(tmp_path, "laptop"):
        token = await token_for(m, "repository:library/redis:pull")
        answer = await m.client.get("/auth/token?scope=x", headers=bearer(token))
        assert answer.status_code == 401
        sent = {r.headers.get("Authorization") for r in m.upstream.requests}
        assert f"Bearer {token}" not in sent


async def test_health_tells_addresses_off_the_allow_list_only_status_and_version() -> None:
    """``/health`` is served to every address (health checks come from anywhere), but in open
    mode it gave the whole report, upstream registry URLs (an internal ``10.0.0.5:5000``
    too), their last errors and the cache's size, to the very strangers ``access.allow``
    keeps out. Now an address off the list gets what users mode shows strangers."""
    settings: dict[str, object] = {"access.allow": "192.0.2.0/24"}
    async with mirror(hub, settings) as m:
        stranger = await m.client.get("/health", scope_base={"client": ("203.0.113.9", 1)})
        assert stranger.status_code == 200
        assert set(await stranger.get_json()) == {"status", "version"}
        allowed = await m.client.get("/health", scope_base={"client": ("192.0.2.7", 1)})
        report: dict[str, Any] = await allowed.get_json()
        assert "registry" in report["upstream"]


async def test_concurrent_guesses_cannot_outrun_the_password_guessing_limit(
    tmp_path: Path,
) -> None:
    """The limit was checked before a password check and charged after it: guesses sent at
    once all passed the check while the first ones waited for a hashing slot, so one address
    with 30 connections had 30 passwords checked, not 10. Now each password check takes its
    place first (and gives it back if the password was right)."""
    import asyncio

    from docxy.access.logins import FailedLogins
    from docxy.http.state import mirror_state

    stranger = {"client": ("203.0.113.7", 40000)}
    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(10, clock=lambda: 100.0)
        path = "/auth/token?scope=repository:library/redis:pull"
        answers = await asyncio.gather(
            *(
                m.client.get(path, headers=basic("alice", f"guess{n}"), scope_base=stranger)
                for n in range(30)
            )
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [401] * 10 + [429] * 20
        for _ in range(3):  # right passwords give their place back
            right = await m.client.get(
                path, headers=basic("alice", "right"), scope_base={"client": ("192.0.2.1", 1)}
            )
            assert right.status_code == 200


# --- a client that hangs up while its password is checked -----------------------------------


class HeldChecks:
    """Stands in for the users file's password check, which runs in a thread as argon2's
    does: each check holds until :attr:`release` is set; counts the checks begun, and the
    most that ran at once."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.get_running_loop()
        self.begun = asyncio.Semaphore(0)  # one place per check begun, for the test to await
        self.ended = asyncio.Semaphore(0)  # and per check ended
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.most = 0

    def checked(self, name: str, password: str) -> str | None:
        with self._lock:
            self.started += 1
            self.running += 1
            self.most = max(self.most, self.running)
        self.loop.call_soon_threadsafe(self.begun.release)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        self.loop.call_soon_threadsafe(self.ended.release)
        return "0123456789abcdef" if name == "alice" and password == "right" else None


async def login_then_hang_up(
    m: Mirror, hang_up: asyncio.Event, client: str = "203.0.113.7"
) -> int | None:
    """``/auth/token`` with a wrong password, called as hypercorn does, from a client that
    goes away once ``hang_up`` is set (Quart then cancels the handler): the status the app
    sent, or None if it sent none before the client left."""
    path = "/auth/token?scope=repository:library/redis:pull"
    headers = basic("alice", "guess").items()
    host = "mirror.example.com"
    answer = await call_asgi(
        m.app, "GET", path, host=host, headers=headers, client=client, hang_up=hang_up
    )
    return answer.status or None


async def test_hanging_up_mid_check_neither_refunds_the_guess_nor_frees_the_hashing_slot(
    tmp_path: Path,
) -> None:
    """A client that hung up while its password was being checked had its place in the
    guessing limit given back (the check's ``finally`` took the cancellation for a right
    password) and left its hashing slot while its thread went on hashing: from one address,
    connect, guess, hang up, again, ran any number of argon2 checks at once on the default
    executor (which reads every cached blob), past both ``limits.failed_logins_per_minute``
    and the two checks at a time. Now a check runs to its end whoever waits for it: it holds
    its slot and its place until then, and a wrong password is charged as any other."""
    import asyncio

    from docxy.access.gate import PASSWORD_CHECKS
    from docxy.access.logins import FailedLogins
    from docxy.http.state import mirror_state

    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(PASSWORD_CHECKS, clock=lambda: 100.0)  # no refill
        held = HeldChecks()
        access.users.checked = held.checked  # type: ignore[method-assign]
        try:
            hang_up = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                first = [tasks.create_task(login_then_hang_up(m, hang_up)) for _ in range(2)]
                for _ in first:
                    await held.begun.acquire()  # both checks hashing, both slots taken
                hang_up.set()
            assert [task.result() for task in first] == [None, None]
            # Both still hash: the slots are theirs, and so are the places they took.
            assert access.hashing.locked()
            again = await asyncio.wait_for(login_then_hang_up(m, asyncio.Event()), 5)
            assert again == 429  # out of guesses: refused before any check
            assert held.started == 2
        finally:
            held.release.set()
        for _ in range(2):  # the abandoned checks end (their threads were released)
            await asyncio.wait_for(held.ended.acquire(), 10)
        assert held.most == 2
        # Their wrong passwords were charged: the address is still out of guesses.
        late = await m.client.get(
            "/auth/token?scope=repository:library/redis:pull",
            headers=basic("alice", "right"),
            scope_base={"client": ("203.0.113.7", 40000)},
        )
        assert late.status_code == 429
