"""Review faults in the guards on where the mirror connects for an upstream: the fills' direct
connect tried a name's addresses one after another, each with the whole connect timeout (an
address that never answers, broken IPv6, held every new fill connection that long), and the
token service a public upstream's ``/v2/`` challenge names was asked wherever it pointed (the
redirect rule judged only redirects). Each shown failing first.

Every server here listens on 127.0.0.238-241, ports 9900-9949. Names are resolved by the
lookups of test_review_lanredirect's ``names`` fixture: no DNS is asked. A "public" upstream
is ``registry.example``, which the rule is told is 8.8.8.8 (never contacted) while
connections to it go to a bed here."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamUnavailable
from docxy.http.app import create_app
from docxy.upstream import direct, redirects
from docxy.upstream.client import Upstream, UpstreamClient
from docxy.upstream.tokens import MirrorTokens
from tests.unit.asgi import call_asgi
from tests.unit.test_login_in_clear import challenging
from tests.unit.test_review_lanredirect import LAN_NAME, PUBLIC_NAME, Unanswering, _direct
from tests.unit.test_review_lanredirect import names as names  # the fixture
from tests.unit.test_review_redirects import BLOB, Bed, Redirecting, _client, _close, beds

HANG, CDN, REG, INSIDE = "127.0.0.238", "127.0.0.239", "127.0.0.240", "127.0.0.241"


# --- 1: the fills' direct connect races a name's addresses -----------------------------------


async def test_a_fills_connect_does_not_wait_out_an_address_that_never_answers(
    names: dict[str, list[str]],
) -> None:
    """A blob redirected to a CDN name whose first address never answers (broken IPv6): the
    fill's direct GET tried it for the whole connect timeout (5 s here) before the next one,
    on every new connection. The next address is tried after a short stagger now."""
    names["cdn.lan"] = [HANG, CDN]  # HANG never answers a connect
    hanging = Unanswering(HANG, 9901)
    try:
        with beds(lambda: Bed(CDN, 9901), lambda: Bed(REG, 9900)) as (cdn, reg):
            reg.location = "http://cdn.lan:9901/blob"
            registry = f"http://{REG}:9900"
            client = _client()
            try:
                started = time.monotonic()
                assert await _direct(client, Upstream(registry), registry + BLOB) == b"blob"
                waited = time.monotonic() - started
            finally:
                await _close(client)
            assert cdn.seen.snapshot() == ["/blob"]
    finally:
        hanging.close()
    assert waited < 2.0, f"waited {waited:.1f}s for an address that never answers"


def _entries(port: int, *addresses: str) -> list[tuple[object, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


def test_a_direct_connect_has_one_deadline_for_all_its_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two addresses that never answer: the connect gives up after the connect timeout, not
    once per address; a refused one gives way to the next at once."""
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: _entries(9902, HANG, INSIDE))
    first, second = Unanswering(HANG, 9902), Unanswering(INSIDE, 9902)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            direct._connect(("two.lan", 9902), 1.0)
        waited = time.monotonic() - started
    finally:
        first.close()
        second.close()
    assert 0.9 <= waited < 1.6, f"gave up after {waited:.1f}s"

    # nothing listens at HANG:9903 nor INSIDE:9903 (refused), a bed at CDN:9903
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: _entries(9903, HANG, INSIDE, CDN))
    # A stagger far past the connect timeout: an address started only a stagger after a
    # refused one would never be tried (TimeoutError at 5 s). No clock is read: the addresses
    # tried, in order, tell that each refusal gave way to the next at once (a bound on the
    # time could not tell one 0.25 s stagger from two under load).
    monkeypatch.setattr(direct, "STAGGER_SECONDS", 60.0)
    tried: list[tuple[str, int]] = []
    real_connect_ex = socket.socket.connect_ex

    def connect_ex(sock: socket.socket, address: tuple[str, int]) -> int:
        tried.append(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    with beds(lambda: Bed(CDN, 9903)):
        sock = direct._connect(("two.lan", 9903), 5.0)
        try:
            assert sock.getpeername() == (CDN, 9903)
            assert sock.gettimeout() == 5.0  # blocking, with the timeout, as create_connection's
        finally:
            sock.close()
    assert tried == [(HANG, 9903), (INSIDE, 9903), (CDN, 9903)]  # each once, in order


def test_a_direct_connect_to_a_name_that_resolves_to_nothing_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: [])
    with pytest.raises(OSError, match="no address found for none.lan"):
        direct._connect(("none.lan", 9904), 1.0)


# --- 2: the token service a public upstream's challenge names -------------------------------


class Challenging(Redirecting):
    """A registry whose ``/v2/`` (and every ``/v2/...`` asked without a Bearer token) answers
    401 with a Bearer challenge naming the bed's ``location`` as its realm."""

    def do_GET(self) -> None:  # noqa: N802 - http.server names it
        owner: Bed = self.server.owner  # type: ignore[attr-defined]
        owner.seen.append(self.path)
        challenge = f'Bearer realm="{owner.location}",service="reg"'
        body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
        self.send_bytes(401, body, "application/json", {"WWW-Authenticate": challenge})


def _challenging(host: str, port: int, realm: str) -> Bed:
    bed = Bed(host, port, location=realm)
    bed.server.RequestHandlerClass = Challenging  # before any request
    return bed


async def _pull(tmp_path: Path, registry: str, auth_realm: str = "") -> tuple[int, str, int]:
    """Through the mirror, as docker pulls: a client's anonymous token ask (relayed to the
    realm), then a manifest by tag with the token it got (the mirror's own token fetched from
    the realm for the fill). The manifest's status and error message, and the token ask's
    status."""
    config = load_config(
        {
            "upstream.registry": registry,
            "upstream.auth_realm": auth_realm,
            "upstream.connect_timeout": 3,
            "upstream.read_timeout": 3,
            "cache.dir": str(tmp_path / "cache"),
        },
        environ={},
    )
    app = create_app(config, probe=False)
    async with app.test_app():
        asked = "/auth/token?service=reg&scope=repository:team/app:pull"
        token = await call_asgi(app, "GET", asked, host="mirror.test")
        bearer = json.loads(token.body).get("token", "") if token.status == 200 else ""
        got = await call_asgi(
            app,
            "GET",
            "/v2/team/app/manifests/latest",
            host="mirror.test",
            headers=[("Authorization", f"Bearer {bearer}")],
        )
    said = json.loads(got.body)["errors"][0]["message"] if got.status >= 400 else ""
    return got.status, said, token.status


@pytest.mark.parametrize("realm_host", [INSIDE, "auth.lan"])
async def test_a_public_upstreams_challenge_does_not_send_the_mirror_inside(
    tmp_path: Path, names: dict[str, list[str]], realm_host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``registry.example`` (public for the rule) answers ``/v2/`` with a challenge whose realm
    is an inside address (written as one, or a name resolving there): the mirror asked it, for
    its own token and for a client's, and relayed its answer. Not asked now: the refusal says
    why, and the operator's remedy (the client gets an offline token, as while a token service
    is down; the fill gets no token of the mirror's)."""
    names[PUBLIC_NAME] = [REG]
    names["auth.lan"] = [INSIDE]
    with beds(
        lambda: Bed(INSIDE, 9911),
        lambda: _challenging(REG, 9910, f"http://{realm_host}:9911/token"),
    ) as (inside, registry):
        with caplog.at_level(logging.WARNING):
            status, _said, _token = await _pull(tmp_path, f"http://{PUBLIC_NAME}:9910")
        assert inside.seen.snapshot() == []
        assert "/v2/" in registry.seen.snapshot()  # the upstream itself was asked
    assert status != 200
    refused = [
        r.getMessage() for r in caplog.records if "challenge names a token" in r.getMessage()
    ]
    assert refused, caplog.text
    assert all(realm_host in said and "auth_realm" in said for said in refused), refused


async def test_a_lan_upstreams_realm_inside_is_still_asked(
    tmp_path: Path, names: dict[str, list[str]]
) -> None:
    """A LAN registry by name (``harbor.lan``: 10.0.0.2 for the rule) naming its token service
    at an inside address: asked, as before."""
    names[LAN_NAME] = [REG]
    with beds(
        lambda: Bed(INSIDE, 9913),
        lambda: _challenging(REG, 9912, f"http://{INSIDE}:9913/token"),
    ) as (inside, _registry):
        await _pull(tmp_path, f"http://{LAN_NAME}:9912")
        asked = inside.seen.snapshot()
    assert asked and all(path.startswith("/token?") for path in asked), asked


async def test_a_public_upstreams_configured_realm_inside_is_the_operators_choice(
    tmp_path: Path, names: dict[str, list[str]]
) -> None:
    """``auth_realm`` set to an inside address for a public upstream: asked, as configured."""
    names[PUBLIC_NAME] = [REG]
    realm = f"http://{INSIDE}:9915/token"
    with beds(lambda: Bed(INSIDE, 9915), lambda: _challenging(REG, 9914, realm)) as (inside, _):
        await _pull(tmp_path, f"http://{PUBLIC_NAME}:9914", auth_realm=realm)
        asked = inside.seen.snapshot()
    assert asked and all(path.startswith("/token?") for path in asked), asked


def _rule_says(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    """The rule's lookup of ``registry.example`` gives ``address`` (never contacted); any other
    name is refused: no DNS is asked."""

    def lookup(host: str, *args: object) -> list[tuple[object, ...]]:
        if host != PUBLIC_NAME:
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]

    monkeypatch.setattr(redirects, "RESOLVE", lookup)


async def _mirror_token(upstream: Upstream, realm: str) -> list[httpx.Request]:
    """The mirror's own token for ``library/redis`` from an upstream (a fake transport: nothing
    is contacted) whose ``/v2/`` names ``realm``: the token service's requests."""
    sent: list[httpx.Request] = []
    transport = challenging(realm)

    async def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return await transport.handle_async_request(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
        await MirrorTokens(UpstreamClient(http)).headers(upstream, "library/redis")
    return [request for request in sent if request.url.path != "/v2/"]


async def test_a_public_https_upstreams_plain_http_realm_is_not_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An HTTPS registry, public, whose challenge names ``http://auth.example/token``: the
    mirror asked it in clear (anonymously), a token any on-path host could read or forge. A
    refusal now, which tells the operator what ``auth_realm`` to set."""
    _rule_says(monkeypatch, "8.8.8.8")
    with pytest.raises(UpstreamUnavailable) as refused:
        await _mirror_token(Upstream(f"https://{PUBLIC_NAME}"), "http://auth.example/token")
    said = refused.value.message
    assert "plain-HTTP token service (auth.example)" in said, said
    assert "auth_realm to https://auth.example/token" in said, said


@pytest.mark.parametrize(
    ("rule", "configured", "realm"),
    [
        # a LAN registry over HTTPS, its token service in clear inside
        ("10.0.0.2", None, "http://10.0.0.3/token"),
        # the operator's own choice, for a public registry
        ("8.8.8.8", "http://auth.example/token", "http://auth.example/token"),
        ("8.8.8.8", "http://10.0.0.3/token", "http://10.0.0.3/token"),
    ],
)
async def test_a_plain_http_realm_is_asked_inside_or_where_the_operator_set_it(
    monkeypatch: pytest.MonkeyPatch, rule: str, configured: str | None, realm: str
) -> None:
    _rule_says(monkeypatch, rule)
    [ask] = await _mirror_token(Upstream(f"https://{PUBLIC_NAME}", configured), realm)
    assert str(ask.url.copy_with(query=None)) == realm
