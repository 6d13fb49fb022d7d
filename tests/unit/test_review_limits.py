"""Review of the per-client limits and admission (``docxy.edge.admission``, ``docxy.core.cidr``).

Driven through :class:`docxy.edge.admission.Admission` with the stand-ins of
``tests/unit/test_admission.py`` (a registry answering 200, a ``Bearer NAME`` user check, a
clock the test turns): what a client sees is the status admission answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from docxy.access.gate import Decision
from docxy.access.identity import ANONYMOUS
from docxy.core.cidr import client_key, site_key
from docxy.edge.admission import BANDWIDTH_GRACE, Admission
from tests.unit.test_admission import DIGEST, Clock, call, config, gate, inner

MANIFEST = "/v2/library/redis/manifests/latest"
BLOB = f"/v2/library/redis/blobs/{DIGEST}"
#: /64s of one /48 (2001:db8:5::/48), more than any site's share of a one-a-minute budget
REAL_SLEEP = asyncio.sleep
SIXTY_FOURS = [f"2001:db8:5:{n:x}::1" for n in range(64)]


async def statuses(g: Admission, path: str, clients: list[str]) -> list[int]:
    return [(await call(g, path, client=client))[0] for client in clients]


async def no_time_passes(seconds: float) -> None:
    """The pacing's waits: other downloads run meanwhile, and the clock stands still."""
    await REAL_SLEEP(0)


async def downloads(g: Admission, clients: list[str], headers: list[tuple[str, str]]) -> list[int]:
    """A download of a blob from each of ``clients``, all at once."""
    answers = [call(g, BLOB, client=client, headers=headers) for client in clients]
    return [status for status, _, _ in await asyncio.gather(*answers)]


# 1. The request, manifest and bandwidth buckets keep an IPv6 /48 too, not only its /64s.


async def test_the_64s_of_one_48_share_the_sites_requests() -> None:
    g = gate({"limits.requests_per_minute": 1})
    answers = await statuses(g, "/v2/", SIXTY_FOURS)
    passed = answers.count(200)
    # the site's share, then refused: not one pass for every /64 the holder can pick
    assert 1 < passed < len(SIXTY_FOURS)
    assert answers == [200] * passed + [429] * (len(SIXTY_FOURS) - passed)
    status, head, body = await call(g, "/v2/", client="2001:db8:5:ffff::1")  # a fresh /64
    assert status == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(head["retry-after"]) >= 1
    assert (await call(g, "/v2/", client="2001:db8:6::1"))[0] == 200  # another /48
    assert (await call(g, "/v2/", client="192.0.2.1"))[0] == 200  # IPv4: no site
    # a user is kept by name, not by the site it calls from
    assert (await call(g, "/v2/", client="2001:db8:5:ffff::1", user="ann"))[0] == 200


async def test_a_refused_site_spends_nothing_of_the_64s_own_bucket() -> None:
    clock = Clock()
    g = gate({"limits.requests_per_minute": 1}, clock)
    passed = (await statuses(g, "/v2/", SIXTY_FOURS)).count(200)
    fresh = "2001:db8:5:ffff::1"
    assert (await call(g, "/v2/", client=fresh))[0] == 429  # refused by the site
    clock.now += 60 / passed  # one site place back, and the /64 never spent its own
    assert (await call(g, "/v2/", client=fresh))[0] == 200


async def test_the_64s_of_one_48_share_the_sites_manifests() -> None:
    g = gate({"limits.manifests_per_minute": 1})
    answers = await statuses(g, MANIFEST, SIXTY_FOURS)
    passed = answers.count(200)
    assert 1 < passed < len(SIXTY_FOURS)
    assert answers == [200] * passed + [429] * (len(SIXTY_FOURS) - passed)
    status, _, body = await call(g, MANIFEST, client="2001:db8:5:ffff::1")
    assert status == 429 and "manifest" in body["errors"][0]["message"]
    assert (await call(g, BLOB, client="2001:db8:5:ffff::1"))[0] == 200  # a blob is no manifest
    assert (await call(g, MANIFEST, client="2001:db8:6::1"))[0] == 200  # another /48


async def test_the_64s_of_one_48_share_the_sites_bandwidth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    g = gate({"limits.bandwidth": "1K"}, clock)
    chunks = int(BANDWIDTH_GRACE) + 3
    headers = [("x-size", str(1000 * chunks))]

    monkeypatch.setattr("docxy.edge.admission.asyncio.sleep", no_time_passes)
    # Downloads from many /64s at once: each /64 alone is only a little over its grace.
    assert await downloads(g, SIXTY_FOURS[:40], headers) == [200] * 40
    status, _, body = await call(g, BLOB, client="2001:db8:5:ffff::1")
    assert status == 429 and "bandwidth" in body["errors"][0]["message"]
    assert (await call(g, BLOB, client="2001:db8:6::1"))[0] == 200  # another /48
    clock.now += 3600
    assert (await call(g, BLOB, client="2001:db8:5:ffff::1"))[0] == 200  # paid off


async def test_the_sites_bandwidth_paces_its_64s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A /64 of a site in debt (under the grace) is paced by the site's debt, not its own."""
    clock = Clock()
    g = gate({"limits.bandwidth": "1K"}, clock)
    slept: list[float] = []

    async def paced(seconds: float) -> None:
        slept.append(seconds)
        await no_time_passes(seconds)

    monkeypatch.setattr("docxy.edge.admission.asyncio.sleep", paced)
    assert await downloads(g, SIXTY_FOURS[:40], [("x-size", "13000")]) == [200] * 40
    # 520000 bytes from the site; a /48 has 10 clients' bandwidth (10240 bytes a second, as
    # much burst): about 49.8 s of debt, 5.8 s once 44 s have passed, under the grace
    clock.now += 44
    slept.clear()
    small = [("x-size", "3000")]
    assert (await call(g, BLOB, client="2001:db8:5:ffff::1", headers=small))[0] == 200
    assert max(slept) > 4  # the site's debt; its own full bucket would have waited under 2 s
    slept.clear()
    assert (await call(g, BLOB, client="2001:db8:6::1", headers=small))[0] == 200
    assert max(slept) < 2  # another /48 owes nothing


# 2. IPv4 clients arriving through a NAT64 / SIIT translator are their IPv4 address.


@pytest.mark.parametrize(
    ("address", "key"),
    [
        pytest.param("64:ff9b::192.0.2.1", "192.0.2.1"),  # RFC 6052's prefix
        pytest.param("64:ff9b::c633:6407", "198.51.100.7"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped, as before
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # any other IPv6: its /64, as before
    ],
)
def test_translated_ipv4_clients_are_kept_by_their_ipv4_address(address: str, key: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert client_key(parsed) == key
    if "." in key:
        assert site_key(parsed) is None  # an IPv4 client has no site


def test_local_use_translation_prefix_keeps_each_translated_client_apart() -> None:
    """``64:ff9b:1::/48`` (RFC 8215) is a translator's own prefix of any length from /48 to
    /96: each address in it is one IPv4 client, never a /64 or a /48 of them."""
    one = ipaddress.ip_address("64:ff9b:1::c000:201")
    other = ipaddress.ip_address("64:ff9b:1::c000:202")
    assert client_key(one) != client_key(other)
    assert site_key(one) is None and site_key(other) is None
    assert client_key(one) == client_key(ipaddress.ip_address("64:ff9b:1:0:0:0:c000:201"))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("64:ff9b::192.0.2.1", "64:ff9b::192.0.2.2"),
        ("64:ff9b:1::192.0.2.1", "64:ff9b:1::192.0.2.2"),
    ],
)
async def test_one_translated_ipv4_client_does_not_lock_out_the_others(
    one: str, other: str
) -> None:
    g = gate({"limits.requests_per_minute": 1})
    assert (await call(g, "/v2/", client=one))[0] == 200
    assert (await call(g, "/v2/", client=one))[0] == 429
    assert (await call(g, "/v2/", client=other))[0] == 200
    # and many of them are not one IPv6 site either
    others = [f"64:ff9b::198.51.100.{n}" for n in range(1, 65)]
    assert await statuses(g, "/v2/", others) == [200] * len(others)


# 3. A manifest GET refused by its own bucket does not spend the client's request budget.


async def test_a_refused_manifest_gives_its_request_back() -> None:
    g = gate({"limits.requests_per_minute": 3, "limits.manifests_per_minute": 1})
    assert (await call(g, MANIFEST))[0] == 200
    status, _, body = await call(g, MANIFEST)
    assert status == 429 and "manifest" in body["errors"][0]["message"]
    # one request spent by the manifest that passed, none by the one refused: two left
    assert [(await call(g, "/v2/"))[0] for _ in range(3)] == [200, 200, 429]


async def test_a_refused_manifest_gives_the_sites_request_back() -> None:
    g = gate({"limits.requests_per_minute": 2, "limits.manifests_per_minute": 1})
    # the manifest site's share passes; the /64s it refuses give back the request site's
    # places they took, which blobs from other /64s of the site then have
    manifests = await statuses(g, MANIFEST, SIXTY_FOURS[:32])
    blobs = await statuses(g, BLOB, SIXTY_FOURS[32:])
    assert manifests.count(200) == blobs.count(200) < 32


# 4. The allow list is checked before any credentials are.


class CountingAccess:
    """The access check's stand-in, counting how often admission asks it."""

    users_mode = True

    def __init__(self) -> None:
        self.checked = 0

    def check(self, authorization: str | None, repository: str | None) -> Decision:
        self.checked += 1
        return Decision(ANONYMOUS)


async def test_a_client_off_the_allow_list_costs_no_credential_check() -> None:
    access: Any = CountingAccess()
    g = Admission(inner, config(**{"access.allow": "192.0.2.0/24"}), access, Clock())
    status, _, body = await call(g, "/v2/", client="198.51.100.1", user="x.y.z")
    assert status == 403 and body["errors"][0]["code"] == "DENIED"
    assert "not allowed" in body["errors"][0]["message"]
    assert access.checked == 0
    assert (await call(g, "/v2/", client="192.0.2.1", user="x.y.z"))[0] == 200
    assert access.checked == 1


async def test_an_allowed_client_with_a_bad_token_is_not_refused_by_the_allow_list(
    tmp_path: Any,
) -> None:
    """With the real access check: off the list, a malformed token is the list's 403; on it,
    the token's own 401 (from the route)."""
    from docxy.http.state import mirror_state
    from tests.unit.asgi import call_asgi
    from tests.unit.test_access_routes import users_mirror

    async with users_mirror(tmp_path, **{"access.allow": "127.0.0.0/8"}) as m:
        state = mirror_state(m.app)
        admitted = Admission(m.app, state.config, state.access)
        bad = [("Authorization", "Bearer not.a-jwt.at-all")]
        inside = await call_asgi(admitted, "GET", "/v2/", host="mirror.example.com", headers=bad)
        assert inside.status == 401
        outside = await call_asgi(
            admitted, "GET", "/v2/", host="mirror.example.com", headers=bad, client="192.0.2.1"
        )
        assert outside.status == 403


# bearer_token: one function for the access check and the upstream's anonymous tokens.


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("  Bearer abc", "abc"),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("", None),
    ],
)
def test_one_bearer_token_reader(authorization: str | None, token: str | None) -> None:
    from docxy.core.headers import bearer_token

    assert bearer_token(authorization) == token
