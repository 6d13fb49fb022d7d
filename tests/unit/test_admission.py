"""Admission as an ASGI layer: allow lists, repository rules and per-client limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docxy.access.gate import Decision
from docxy.access.identity import ANONYMOUS, ClientIdentity, Via
from docxy.access.users import UsersFile
from docxy.config import Config, load_config
from docxy.core.cidr import parse_address
from docxy.edge.admission import BANDWIDTH_GRACE, Admission
from docxy.edge.clients import limit_key
from docxy.http.state import mirror_state
from tests.unit.asgi import call_asgi, get_with_token
from tests.unit.test_access_routes import token_for, users_mirror

DIGEST = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def inner(scope: Any, receive: Any, send: Any) -> None:
    """A registry stand-in: 200 and a body of ``size`` bytes in 1000-byte chunks."""
    size = int(dict(scope["headers"]).get(b"x-size", b"0"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(size // 1000):
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def call(
    gate: Admission,
    path: str,
    client: str = "192.0.2.1",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    user: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers or []]
        + ([] if user is None else [(b"authorization", f"Bearer {user}".encode())]),
        "client": (client, 40000),
        "docxy": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)  # type: ignore[arg-type]
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    parsed = json.loads(body) if head.get("content-type") == "application/json" else body
    return start["status"], head, parsed


def config(**settings: object) -> Config:
    return load_config({**settings}, environ={})


class Users:
    """Stands in for ``docxy.access``: a ``Bearer NAME`` header is the user NAME."""

    users_mode = False  # strangers are told the repository rules, as in open mode

    def check(self, authorization: str | None, repository: str | None) -> Decision:
        assert repository is None  # admission only asks who, never whether
        if authorization is None:
            return Decision(ANONYMOUS)
        return Decision(ClientIdentity(Via.TOKEN, authorization.removeprefix("Bearer ")))


def gate(settings: dict[str, object], clock: Clock | None = None) -> Admission:
    access: Any = Users()
    return Admission(inner, config(**settings), access, clock or Clock())


async def test_allow_list_refuses_others_with_denied() -> None:
    g = gate({"access.allow": "192.0.2.0/24, 2001:db8::/32"})
    assert (await call(g, "/v2/"))[0] == 200
    assert (await call(g, "/v2/", client="2001:db8::7"))[0] == 200
    status, _, body = await call(g, "/v2/", client="198.51.100.1")
    assert status == 403
    assert body["errors"][0]["code"] == "DENIED"
    assert "198.51.100.1" in body["errors"][0]["message"]


async def test_health_and_acme_pass_an_allow_list() -> None:
    g = gate({"access.allow": "192.0.2.0/24"})
    assert (await call(g, "/health", client="198.51.100.1"))[0] == 200
    path = "/.well-known/acme-challenge/token"
    assert (await call(g, path, client="198.51.100.1"))[0] == 200


async def test_forwarded_address_counts_only_from_a_trusted_proxy() -> None:
    g = gate({"access.allow": "192.0.2.0/24", "server.trusted_proxies": "10.0.0.1"})
    xff = [("X-Forwarded-For", "192.0.2.9")]
    assert (await call(g, "/v2/", client="10.0.0.1", headers=xff))[0] == 200
    assert (await call(g, "/v2/", client="10.0.0.2", headers=xff))[0] == 403
    spoofed = [("X-Forwarded-For", "192.0.2.9, 198.51.100.1")]
    assert (await call(g, "/v2/", client="10.0.0.1", headers=spoofed))[0] == 403


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/redis/manifests/latest", 200),  # library/redis
        ("/v2/library/redis/manifests/latest", 200),
        (f"/v2/library/redis/blobs/{DIGEST}", 200),
        ("/v2/someone/tool/manifests/latest", 403),
        (f"/v2/someone/tool/blobs/{DIGEST}", 403),
        ("/v2/library/evil/manifests/latest", 403),
        ("/v2/", 200),
        ("/v2/NOT..valid/manifests/x", 200),  # the routes answer NAME_INVALID
    ],
)
async def test_repository_rules(path: str, status: int) -> None:
    g = gate({"access.repositories": "library/*", "access.deny_repositories": "library/evil"})
    answer, _, body = await call(g, path)
    assert answer == status
    if status == 403:
        assert body["errors"][0]["code"] == "DENIED"
        assert "is not served by this mirror" in body["errors"][0]["message"]


async def test_request_rate_per_client_with_retry_after() -> None:
    clock = Clock()
    g = gate({"limits.requests_per_minute": 3}, clock)
    assert [(await call(g, "/v2/"))[0] for _ in range(3)] == [200, 200, 200]
    status, head, body = await call(g, "/v2/")
    assert status == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert head["retry-after"] == "20"  # one request every 20 s
    assert (await call(g, "/v2/", client="192.0.2.2"))[0] == 200  # another client
    clock.now += 20
    assert (await call(g, "/v2/"))[0] == 200


async def test_ipv6_clients_share_their_64_and_users_their_name() -> None:
    g = gate({"limits.requests_per_minute": 1})
    assert (await call(g, "/v2/", client="2001:db8::1"))[0] == 200
    assert (await call(g, "/v2/", client="2001:db8::2"))[0] == 429
    assert (await call(g, "/v2/", client="2001:db8:0:1::2"))[0] == 200
    assert (await call(g, "/v2/", client="198.51.100.7", user="ann"))[0] == 200
    assert (await call(g, "/v2/", client="198.51.100.8", user="ann"))[0] == 429
    assert (await call(g, "/v2/", client="198.51.100.7"))[0] == 200  # the address, not ann


async def test_the_fill_caps_count_the_client_admission_names() -> None:
    """The fill caps (``docxy.edge.fills``) count per ``CLIENT``, which admission sets: an
    IPv6 client by its /64, an IPv4-mapped address as the IPv4 one, a user by name."""
    from docxy.edge.fills import CLIENT

    named: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        named.append(CLIENT.get())
        await inner(scope, receive, send)

    g = Admission(app, config(), Users(), Clock())  # type: ignore[arg-type]
    for client in ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::2", "::ffff:192.0.2.9", "192.0.2.9"):
        assert (await call(g, "/v2/", client=client))[0] == 200
    assert (await call(g, "/v2/", client="2001:db8:1:2::1", user="ann"))[0] == 200
    assert named == ["2001:db8:1:2::/64", "2001:db8:1:2::/64", "192.0.2.9", "192.0.2.9", "user:ann"]


async def test_manifest_gets_have_their_own_limit() -> None:
    g = gate({"limits.manifests_per_minute": 2})
    path = "/v2/library/redis/manifests/latest"
    assert [(await call(g, path))[0] for _ in range(3)] == [200, 200, 429]
    assert (await call(g, path, method="HEAD"))[0] == 200
    assert (await call(g, f"/v2/library/redis/blobs/{DIGEST}"))[0] == 200


async def test_bandwidth_debt_refuses_new_requests_until_paid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    g = gate({"limits.bandwidth": "1K"}, clock)
    chunks = int(BANDWIDTH_GRACE) + 3
    headers = [("x-size", str(1000 * chunks))]
    big = f"/v2/library/redis/blobs/{DIGEST}"
    slept: list[float] = []

    async def paced(seconds: float) -> None:  # the pacing's waits, recorded, as time passing
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr("docxy.edge.admission.asyncio.sleep", paced)
    assert (await call(g, big, headers=headers))[0] == 200
    # Paced to the rate: what is past the bucket's one second of burst, at 1024 bytes a second.
    assert sum(slept) == pytest.approx((1000 * chunks - 1024) / 1024, rel=0.01)
    # A debt deeper than the grace, as downloads opened at once leave it (test_review_edge).
    g.bandwidth.charge(limit_key(None, parse_address("192.0.2.1")), 1024 * (BANDWIDTH_GRACE + 3))
    status, head, body = await call(g, big)
    assert status == 429 and "bandwidth" in body["errors"][0]["message"]
    assert int(head["retry-after"]) >= 1
    assert (await call(g, big, client="192.0.2.2"))[0] == 200
    clock.now += 60
    assert (await call(g, big))[0] == 200


async def test_users_of_docxy_access_have_limits_of_their_own(tmp_path: Path) -> None:
    """With the real access check (users mode): two users behind one address are two clients,
    and a token the check refuses counts against the address."""
    UsersFile(tmp_path / "users").add("bob", "right")
    settings = {"limits.requests_per_minute": "2"}
    async with users_mirror(tmp_path, **settings) as m:
        tokens = {
            user: await token_for(m, "repository:library/redis:pull", user)
            for user in ("alice", "bob")
        }
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)

        async def status(token: str | None) -> int:
            headers = [] if token is None else [("Authorization", f"Bearer {token}")]
            answer = await call_asgi(
                admitted, "GET", "/v2/", host="mirror.example.com", headers=headers
            )
            return answer.status

        assert [await status(tokens["alice"]) for _ in range(3)] == [200, 200, 429]
        assert await status(tokens["bob"]) == 200
        assert [await status("forged") for _ in range(3)] == [401, 401, 429]  # the address's


async def test_users_mode_tells_only_known_clients_which_repositories_are_served(
    tmp_path: Path,
) -> None:
    """In users mode a client without a valid login is refused every repository (401), but a
    repository the rules refuse got 403 first, naming the rule (``it serves library/*``): a
    stranger could learn the rules, and try names one by one, where ``/health`` tells it
    nothing of the settings. It now gets the same 401 for every repository; a user still gets
    the 403 and the rule."""
    settings = {
        "access.repositories": "library/*",
        "access.deny_repositories": "library/evil",
    }
    served, other, denied = (
        "/v2/library/redis/manifests/latest",
        "/v2/someone/tool/manifests/latest",
        "/v2/library/evil/manifests/x",
    )
    async with users_mirror(tmp_path, **settings) as m:
        token = await token_for(m, "repository:library/redis:pull", "alice")
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)

        async def answer(path: str, token: str | None) -> tuple[int, str, str]:
            headers = [] if token is None else [("Authorization", f"Bearer {token}")]
            got = await call_asgi(admitted, "GET", path, host="mirror.example.com", headers=headers)
            [error] = json.loads(got.body)["errors"]
            return got.status, error["code"], error["message"]

        for who in (None, "forged"):
            strangers = {await answer(path, who) for path in (served, other, denied)}
            assert len(strangers) == 1, strangers  # nothing tells the three apart
            [(status, code, _)] = strangers
            assert (status, code) == (401, "UNAUTHORIZED")
        assert await answer(other, token) == (
            403,
            "DENIED",
            "repository someone/tool is not served by this mirror (it serves library/*)",
        )
        assert (await answer(denied, token))[2].endswith("(denied by library/evil)")


async def test_users_mode_tells_a_certificate_client_the_rule() -> None:
    """A client known by its certificate (``cert:NAME``, no token at all) is no stranger: it
    gets the 403 and the rule, as a logged-in user does; a client with neither passes on to
    the routes (their 401)."""

    class CertificateClients(Users):
        users_mode = True

        def check(self, authorization: str | None, repository: str | None) -> Decision:
            assert authorization is None  # no token: only the connection's certificate
            return Decision(ClientIdentity(Via.CERTIFICATE, "build-01"))

    settings = config(**{"access.repositories": "library/*"})
    certified: Any = CertificateClients()
    known = Admission(inner, settings, certified, Clock())
    status, _, body = await call(known, "/v2/someone/tool/manifests/latest")
    assert status == 403
    assert body["errors"][0]["message"].endswith("(it serves library/*)")

    class Strangers(Users):
        users_mode = True

    nobody: Any = Strangers()
    stranger = Admission(inner, settings, nobody, Clock())
    assert (await call(stranger, "/v2/someone/tool/manifests/latest"))[0] == 200  # the routes'


async def test_an_unreadable_token_key_is_503_not_an_exception_out_of_the_edge(
    tmp_path: Path,
) -> None:
    """``token-key.pem`` broken by hand (or left unreadable to the mirror's user by a root
    ``docxy tokens rotate``) while tokens are out: the edge's token check raised
    ``TokenKeyError`` out of the ASGI stack, so every client holding a token got the server's
    bare 500. Like an unreadable users file, it is now 503 in the registry's JSON format, and
    nothing is let through; ``/auth/token`` says the same."""
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        (tmp_path / "token-key.pem").write_text("not a key\n")
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)
        for path in ("/v2/", "/v2/library/redis/manifests/7"):
            answer = await get_with_token(admitted, path, token)
            assert answer.status == 503
            assert answer.headers["Content-Type"] == "application/json"
            assert json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE"
        issued = await call_asgi(
            admitted,
            "GET",
            "/auth/token?scope=repository:library/redis:pull",
            host="mirror.example.com",
            headers=[("Authorization", "Basic YWxpY2U6cmlnaHQ=")],
        )
        assert issued.status == 503
        assert json.loads(issued.body)["errors"][0]["code"] == "UNAVAILABLE"
        assert [r for r in m.upstream.requests if "/manifests/" in r.url.path] == []
