"""``limits.exempt``: networks the per-client limits spare (a NAT-ed office, a CI farm).

Each per-client limit, driven as clients meet it: an address in the exempt networks (IPv4, and
IPv6 inside an exempt prefix) passes where another address, under the same setting, is
refused; the limits that still hold (failed logins, the global caps, the allow list) hold for
it too; and nothing an exempt client does is counted as a refusal.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

import pytest

from docxy.access.logins import FailedLogins
from docxy.config import load_config
from docxy.core.errors import TooManyRequests
from docxy.edge.admission import BANDWIDTH_GRACE, Admission
from docxy.edge.connections import ConnectionGuard
from docxy.edge.fills import CLIENT, EXEMPT, FillPermits
from docxy.edge.replies import send_error
from docxy.http.server import hypercorn_config
from docxy.http.state import mirror_state
from docxy.observe.metrics import MirrorCollector
from tests.unit.test_access_routes import basic, users_mirror
from tests.unit.test_admission import DIGEST, Clock, Users, call, config, gate, inner
from tests.unit.test_token_relays import TOKEN, ask, refused, relaying

EXEMPT_NETWORKS = "10.20.0.0/16, 2001:db8:42::/48"
#: (exempt, not exempt) pairs: an IPv4 address, and an IPv6 one (another /64 of the same /48
#: is the same exempt network; the address beside it is outside the /48).
PAIRS = [("10.20.3.4", "10.21.3.4"), ("2001:db8:42:7::1", "2001:db8:43::1")]
MANIFEST = "/v2/library/redis/manifests/latest"
BLOB = f"/v2/library/redis/blobs/{DIGEST}"
USERS: Any = Users()  # stands in for docxy.access: "Bearer NAME" is the user NAME


@pytest.mark.parametrize(("exempt", "other"), PAIRS)
async def test_requests_per_minute(exempt: str, other: str) -> None:
    g = gate({"limits.requests_per_minute": 2, "limits.exempt": EXEMPT_NETWORKS})
    assert [(await call(g, "/v2/", client=exempt))[0] for _ in range(10)] == [200] * 10
    assert [(await call(g, "/v2/", client=other))[0] for _ in range(3)] == [200, 200, 429]
    assert g.refusals() == {"limits.requests_per_minute": 1}  # the other's only


@pytest.mark.parametrize(("exempt", "other"), PAIRS)
async def test_manifests_per_minute(exempt: str, other: str) -> None:
    g = gate({"limits.manifests_per_minute": 1, "limits.exempt": EXEMPT_NETWORKS})
    assert [(await call(g, MANIFEST, client=exempt))[0] for _ in range(5)] == [200] * 5
    assert [(await call(g, MANIFEST, client=other))[0] for _ in range(2)] == [200, 429]
    assert g.refusals() == {"limits.manifests_per_minute": 1}


@pytest.mark.parametrize(("exempt", "other"), PAIRS)
async def test_bandwidth_is_neither_paced_nor_refused(
    exempt: str, other: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = gate({"limits.bandwidth": "1K", "limits.exempt": EXEMPT_NETWORKS})
    headers = [("x-size", str(1024 * (int(BANDWIDTH_GRACE) + 3)))]
    slept: list[float] = []

    async def paced(seconds: float) -> None:  # the pacing's waits, recorded; the clock stands
        slept.append(seconds)

    monkeypatch.setattr("docxy.edge.admission.asyncio.sleep", paced)
    for _ in range(3):
        assert (await call(g, BLOB, client=exempt, headers=headers))[0] == 200
    assert slept == []
    assert (await call(g, BLOB, client=other, headers=headers))[0] == 200
    assert slept and slept[-1] > BANDWIDTH_GRACE  # the same download, paced for the other
    assert (await call(g, BLOB, client=other))[0] == 429
    assert (await call(g, BLOB, client=exempt))[0] == 200
    assert g.refusals() == {"limits.bandwidth": 1}


async def test_a_user_logged_in_from_an_exempt_network_is_spared_too() -> None:
    """The limits key by user when one is known; the exemption goes by the address."""
    g = gate({"limits.requests_per_minute": 1, "limits.exempt": EXEMPT_NETWORKS})
    assert [(await call(g, "/v2/", client="10.20.0.1", user="ci"))[0] for _ in range(3)] == [
        200
    ] * 3
    assert (await call(g, "/v2/", client="192.0.2.1", user="ci"))[0] == 200  # ci's bucket: full
    assert (await call(g, "/v2/", client="192.0.2.1", user="ci"))[0] == 429


async def test_the_address_is_the_one_a_trusted_proxy_names() -> None:
    g = gate(
        {
            "limits.requests_per_minute": 1,
            "limits.exempt": EXEMPT_NETWORKS,
            "server.trusted_proxies": "10.0.0.1",
        }
    )
    farm = [("X-Forwarded-For", "10.20.0.9")]
    assert [(await call(g, "/v2/", "10.0.0.1", headers=farm))[0] for _ in range(3)] == [200] * 3
    outside = [("X-Forwarded-For", "192.0.2.9")]
    assert [(await call(g, "/v2/", "10.0.0.1", headers=outside))[0] for _ in range(2)] == [
        200,
        429,
    ]
    # From a peer that is no trusted proxy, the header is the client's own claim: ignored.
    assert [(await call(g, "/v2/", "192.0.2.7", headers=farm))[0] for _ in range(2)] == [200, 429]


async def test_exempt_is_no_allow_list_and_spares_no_repository_rule() -> None:
    g = gate(
        {
            "access.allow": "192.0.2.0/24",
            "access.repositories": "library/*",
            "limits.exempt": "10.20.0.0/16, 192.0.2.0/24",
        }
    )
    assert (await call(g, "/v2/", client="10.20.0.1"))[0] == 403  # exempt, but not allowed
    status, _, body = await call(g, "/v2/someone/tool/manifests/1", client="192.0.2.5")
    assert status == 403 and "is not served" in body["errors"][0]["message"]
    assert g.refusals() == {"access.allow": 1, "access.repositories": 1}


# --- fills_per_client: counted towards fills_total only -----------------------------------


def holding_fills(permits: FillPermits) -> Any:
    """An app whose every request starts a fill and keeps it going (its permit never given
    back), refused as the blob service refuses one over a cap."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            permits.acquire()
        except TooManyRequests as exc:
            await send_error(send, exc)
            return
        await inner(scope, receive, send)

    return app


@pytest.mark.parametrize(("exempt", "other"), PAIRS)
async def test_fills_per_client(exempt: str, other: str) -> None:
    permits = FillPermits(per_client=1, total=100)
    settings = load_config({"limits.exempt": EXEMPT_NETWORKS}, environ={})
    g = Admission(holding_fills(permits), settings, USERS, Clock())
    assert [(await call(g, BLOB, client=exempt))[0] for _ in range(4)] == [200] * 4
    assert [(await call(g, BLOB, client=other))[0] for _ in range(2)] == [200, 429]
    assert permits.refusals() == {"limits.fills_per_client": 1}


async def test_exempt_fills_count_towards_fills_total() -> None:
    permits = FillPermits(per_client=1, total=3)
    g = Admission(holding_fills(permits), config(**{"limits.exempt": "10.20.0.0/16"}), USERS)
    assert [(await call(g, BLOB, client="10.20.0.1"))[0] for _ in range(4)] == [200] * 3 + [429]
    assert (await call(g, BLOB, client="192.0.2.1"))[0] == 429  # the mirror's cap: full
    assert permits.refusals() == {"limits.fills_total": 2}


def test_the_exempt_name_is_capped_only_overall() -> None:
    contextvars.copy_context().run(exempt_permits)  # the client name stays in this test


def exempt_permits() -> None:
    permits = FillPermits(per_client=1, total=3)
    CLIENT.set(EXEMPT)
    releases = [permits.acquire() for _ in range(3)]
    with pytest.raises(TooManyRequests, match="as much as it may"):
        permits.acquire()
    releases[0]()
    permits.acquire()
    assert permits.refused_by == {"limits.fills_total": 1}


# --- connections_per_client: the peer's address ------------------------------------------


def test_connections_per_client() -> None:
    guard = ConnectionGuard(
        max_connections=100, send_timeout=5.0, per_client=2, exempt=load_exempt(EXEMPT_NETWORKS)
    )
    for exempt, other in PAIRS:
        assert all(guard.admit((exempt, port)) for port in range(10)), exempt
        assert [bool(guard.admit((other, port))) for port in range(3)] == [True, True, False]
    assert guard.admit(("::ffff:10.20.3.4", 1))  # IPv4-mapped: the exempt IPv4 address
    assert guard.admit(("2001:db8:42:8::1", 1))  # another /64 of the exempt /48
    assert guard.refused_per_client == 2  # the others' third connections only
    assert guard.open == 2 * 10 + 2 * 2 + 2


def test_connections_over_max_connections_are_refused_exempt_or_not() -> None:
    guard = ConnectionGuard(
        max_connections=3, send_timeout=5.0, per_client=1, exempt=load_exempt("10.20.0.0/16")
    )
    assert all(guard.admit(("10.20.0.1", port)) for port in range(3))
    assert not guard.admit(("10.20.0.1", 4))
    assert guard.refusals()["limits.max_connections"] == 1
    assert guard.refusals()["limits.connections_per_client"] == 0


def test_the_server_hands_the_networks_to_the_connection_guard(tmp_path: Path) -> None:
    settings = {"cache.dir": str(tmp_path / "cache"), "limits.exempt": EXEMPT_NETWORKS}
    guard = hypercorn_config(load_config(settings, environ={}), None).edge
    assert isinstance(guard, ConnectionGuard)
    assert guard.admit(("10.20.0.1", 1)) and str(guard.exempt) == "10.20.0.0/16, 2001:db8:42::/48"


def load_exempt(value: str) -> Any:
    return load_config({"limits.exempt": value}, environ={}).limits.exempt


# --- token_relays_per_minute: through the routes -----------------------------------------


@pytest.mark.parametrize(("exempt", "other"), PAIRS)
async def test_token_relays_per_minute(exempt: str, other: str) -> None:
    settings: dict[str, object] = {
        "limits.token_relays_per_minute": "1",
        "limits.exempt": EXEMPT_NETWORKS,
    }
    async with relaying(settings) as (m, _):
        for _ in range(5):
            assert not await refused(await ask(m, TOKEN, exempt))
            assert not await refused(await ask(m, "/v2/", exempt, headers=basic("ci", "pw")))
        assert len(m.upstream.requests) == 10  # every one relayed
        assert not await refused(await ask(m, TOKEN, other))
        assert await refused(await ask(m, TOKEN, other))
        collector = MirrorCollector(mirror_state(m.app), lambda: None)
        family = next(f for f in collector.collect() if f.name == "docxy_refused")
    counts = {s.labels["setting"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counts["limits.token_relays_per_minute"] == 1  # the other's only


async def test_token_relays_behind_a_trusted_proxy_go_by_the_named_address() -> None:
    settings: dict[str, object] = {
        "limits.token_relays_per_minute": "1",
        "limits.exempt": "10.20.0.0/16",
        "server.trusted_proxies": "10.0.0.1",
    }
    async with relaying(settings) as (m, _):
        farm = {"X-Forwarded-For": "10.20.0.9"}
        for _ in range(3):
            assert not await refused(await ask(m, TOKEN, "10.0.0.1", headers=farm))
        spoofed = await ask(m, TOKEN, "192.0.2.7", headers=farm)  # no trusted proxy: ignored
        assert not await refused(spoofed)
        assert await refused(await ask(m, TOKEN, "192.0.2.7", headers=farm))


# --- failed_logins_per_minute: still limited -----------------------------------------------


@pytest.mark.parametrize(("exempt", "_other"), PAIRS)
async def test_failed_logins_are_limited_in_an_exempt_network(
    tmp_path: Path, exempt: str, _other: str
) -> None:
    """A password guesser inside the office is still guessing: its wrong passwords count as
    anyone's, and its address's logins are refused once they are spent."""
    path = "/auth/token?scope=repository:library/redis:pull"
    async with users_mirror(tmp_path, **{"limits.exempt": EXEMPT_NETWORKS}) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(2, clock=lambda: 100.0)

        async def login(password: str) -> int:
            scope = {"client": (exempt, 40000)}
            answer = await m.client.get(path, headers=basic("alice", password), scope_base=scope)
            return answer.status_code

        assert [await login("guess"), await login("guess")] == [401, 401]
        assert await login("right") == 429
        assert access.logins.refusals() == {"limits.failed_logins_per_minute": 1}


@pytest.mark.parametrize(
    ("networks", "warned"),
    [
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.20.0.0/16, ::/0", "::/0"),
        ("2000::/3", "2000::/3"),
        ("0.0.0.0/1, 128.0.0.0/1", "0.0.0.0/1, 128.0.0.0/1"),
        ("::ffff:0.0.0.0/96", "0.0.0.0/0"),  # all of IPv4, as a dual-stack socket writes it
        (EXEMPT_NETWORKS, None),
        ("10.0.0.0/8, 172.16.0.0/12, fc00::/7", None),  # private, however wide
        ("1.0.0.0/8, 2001:db8::/32", None),  # a public /8 and an ISP's /32: the widest not warned
    ],
)
def test_a_broad_exempt_network_is_warned_of_once(
    networks: str, warned: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """``0.0.0.0/0`` in ``limits.exempt`` turns the per-client limits off for everyone: the
    start-up log says so, once, naming the setting and the network."""
    with caplog.at_level("WARNING", logger="docxy.edge.admission"):
        gate({"limits.exempt": networks})
    said = [r.getMessage() for r in caplog.records if r.name == "docxy.edge.admission"]
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1, said
        assert said[0].startswith(f"limits.exempt lists {warned} (")
