"""``/v2/`` and ``/auth/token`` passed upstream, per client address (``docxy.edge.relays``).

In open mode each of them makes the mirror ask the upstream (its ``/v2/``, its token service)
from the mirror's own address with no pull behind it. These tests drive the app as clients do
and count what reached the fake upstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from docxy.config import TOKEN_RELAYS_PER_MINUTE
from docxy.http.state import mirror_state
from docxy.observe.metrics import MirrorCollector
from tests.unit.fakes import reply
from tests.unit.test_access_routes import basic, users_mirror
from tests.unit.test_multi_routes import mirror as several
from tests.unit.test_routes import MIRROR_REALM, SERVICE, Mirror, mirror

TOKEN = "/auth/token?scope=repository:redis:pull&service=registry.example"
MANIFEST = "/v2/library/redis/manifests/7"


class Clock:
    """A clock that moves only when told: the buckets refill by it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def relaying(
    settings: dict[str, object] | None = None,
) -> AsyncIterator[tuple[Mirror, Clock]]:
    clock = Clock()
    async with mirror(settings=settings) as m:
        mirror_state(m.app).relays.buckets.clock = clock
        yield m, clock


async def probe(m: Mirror) -> None:
    """What the mirror's background probe does now and then: its own ``/v2/``, its challenge
    kept (``docxy.http.health.probe_upstream``; off in these tests)."""
    state = mirror_state(m.app)
    await state.client.challenge(state.upstreams.default, refresh=True)


async def ask(m: Mirror, path: str, client: str = "192.0.2.1", **kwargs: Any) -> Any:
    return await m.client.get(path, scope_base={"client": (client, 40000)}, **kwargs)


async def refused(response: Any) -> bool:
    """Whether ``response`` is the limit's refusal, checked as a client reads it."""
    if response.status_code != 429:
        return False
    body = json.loads(await response.get_data())
    assert response.headers["Content-Type"] == "application/json"
    assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(response.headers["Retry-After"]) >= 1
    return True


async def test_a_loop_from_one_address_reaches_the_upstream_no_more_than_the_default() -> None:
    """700 ``/v2/`` and token requests (GET and POST) in a moment: the upstream hears the
    default's worth, the rest are ``429`` with ``Retry-After`` (on 8c69772 all 700 went)."""
    sent = TOKEN_RELAYS_PER_MINUTE + 100
    async with relaying() as (m, _):
        answers = []
        for i in range(sent):
            if i % 3 == 0:
                answers.append(await ask(m, "/v2/"))
            elif i % 3 == 1:
                answers.append(await ask(m, TOKEN))
            else:
                form = {"grant_type": "none", "scope": "repository:redis:pull"}
                answers.append(
                    await m.client.post(
                        "/auth/token", form=form, scope_base={"client": ("192.0.2.1", 1)}
                    )
                )
        refusals = [a for a in answers if await refused(a)]
        assert len(m.upstream.requests) == TOKEN_RELAYS_PER_MINUTE
        assert len(refusals) == sent - TOKEN_RELAYS_PER_MINUTE
        assert all(a.status_code in (200, 401) for a in answers[:TOKEN_RELAYS_PER_MINUTE])


async def test_the_bucket_refills_at_the_limit_a_minute() -> None:
    async with relaying({"limits.token_relays_per_minute": "60"}) as (m, clock):
        for _ in range(60):
            assert not await refused(await ask(m, TOKEN))
        answer = await ask(m, TOKEN)
        assert await refused(answer)
        assert answer.headers["Retry-After"] == "1"
        clock.now += 1.0  # one a second
        assert (await ask(m, TOKEN)).status_code == 200
        assert await refused(await ask(m, "/v2/"))
        assert len(m.upstream.requests) == 61


async def test_each_address_has_its_own_bucket_and_an_ipv6_client_its_64() -> None:
    async with relaying({"limits.token_relays_per_minute": "2"}) as (m, _):
        for client in ("192.0.2.1", "2001:db8:1:2::1"):
            assert not await refused(await ask(m, "/v2/", client))
            assert not await refused(await ask(m, TOKEN, client))
        assert await refused(await ask(m, "/v2/", "192.0.2.1"))
        assert await refused(await ask(m, TOKEN, "2001:db8:1:2::ffff"))  # the same /64
        assert not await refused(await ask(m, TOKEN, "192.0.2.2"))
        assert not await refused(await ask(m, TOKEN, "2001:db8:1:3::1"))
        assert len(m.upstream.requests) == 6


async def test_an_ipv6_site_has_a_bucket_ten_times_an_addresses_over_all_its_64s() -> None:
    """A home's /56 is 256 /64s, each with a bucket of its own: one holder relayed 256 times an
    address's share to the upstream's auth service (which rate-limits the mirror's address for
    everyone). Its /48 has one bucket of SITE_FACTOR (10) times an address's as well."""
    async with relaying({"limits.token_relays_per_minute": "2"}) as (m, clock):
        mirror_state(m.app).relays.sites.clock = clock
        answers = [await ask(m, TOKEN, f"2001:db8:7:{net:x}::1") for net in range(30)]
        passed = [not await refused(answer) for answer in answers]
        assert passed.count(True) == 20, passed
        assert not await refused(await ask(m, TOKEN, "2001:db8:8::1"))  # another /48
        assert not await refused(await ask(m, TOKEN, "192.0.2.9"))  # IPv4: its address alone


async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client() -> None:
    settings: dict[str, object] = {
        "limits.token_relays_per_minute": "1",
        "server.trusted_proxies": "10.0.0.1",
    }
    async with relaying(settings) as (m, _):
        for client in ("192.0.2.1", "192.0.2.2"):
            forwarded = {"X-Forwarded-For": client}
            assert not await refused(await ask(m, TOKEN, "10.0.0.1", headers=forwarded))
        assert await refused(
            await ask(m, TOKEN, "10.0.0.1", headers={"X-Forwarded-For": "192.0.2.1"})
        )
        # From a peer that is no trusted proxy the header is the client's own word: ignored.
        untrusted = "10.0.0.9"
        assert not await refused(
            await ask(m, TOKEN, untrusted, headers={"X-Forwarded-For": "192.0.2.3"})
        )
        assert await refused(
            await ask(m, TOKEN, untrusted, headers={"X-Forwarded-For": "192.0.2.4"})
        )


async def test_pulls_are_not_relays() -> None:
    """Manifest and blob requests are what the other limits are for: they never take from
    this bucket, and an empty bucket does not stop them."""
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        for _ in range(5):
            assert (await ask(m, MANIFEST)).status_code == 200
        assert not await refused(await ask(m, TOKEN))
        assert await refused(await ask(m, TOKEN))
        assert (await ask(m, MANIFEST)).status_code == 200


async def test_users_mode_answers_v2_and_its_own_tokens_without_counting(tmp_path: Path) -> None:
    """The mirror that is its own token authority asks the upstream nothing for them."""
    async with users_mirror(tmp_path, **{"limits.token_relays_per_minute": "1"}) as m:
        for _ in range(5):
            assert (await ask(m, "/v2/")).status_code == 401
            assert (await ask(m, TOKEN)).status_code == 401  # anonymous: a login needed
            assert (await ask(m, TOKEN, headers=basic("alice", "right"))).status_code == 200
        assert m.upstream.requests == []


async def test_zero_turns_the_limit_off() -> None:
    async with relaying({"limits.token_relays_per_minute": "0"}) as (m, _):
        for _ in range(50):
            assert not await refused(await ask(m, "/v2/"))
        assert len(m.upstream.requests) == 50


async def test_refused_relays_are_counted_for_metrics_by_their_setting() -> None:
    """docxy_refused_total names the setting a 429 came from, as for every other limit."""
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        assert not await refused(await ask(m, "/v2/"))
        assert await refused(await ask(m, TOKEN))
        assert await refused(await ask(m, "/v2/"))
        collector = MirrorCollector(mirror_state(m.app), lambda: None)
        family = next(f for f in collector.collect() if f.name == "docxy_refused")
    counts = {s.labels["setting"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counts["limits.token_relays_per_minute"] == 2
    assert counts["limits.requests_per_minute"] == 0


# --- /v2/ without credentials: the challenge the mirror knows ---------------------------------

HUB_V2 = f'Bearer realm="{MIRROR_REALM}",service="{SERVICE}"'


async def test_a_client_out_of_relays_still_gets_the_challenge_on_v2() -> None:
    """``/v2/`` only asks for the challenge, which the mirror knows: a client out of relays
    was refused it (429) on 7c3e2a4, and a docker pull then stopped at its first request."""
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        await probe(m)
        assert not await refused(await ask(m, TOKEN))
        assert await refused(await ask(m, TOKEN))
        for path in ("/v2/", "/v2", "/v2/?ns=docker.io"):
            answer = await ask(m, path)
            assert answer.status_code == 401, path
            assert answer.headers["WWW-Authenticate"] == HUB_V2
            assert (await answer.get_json())["errors"][0]["code"] == "UNAUTHORIZED"
        assert await refused(await ask(m, TOKEN))  # the real relays: still 429
        assert len(m.upstream.requests) == 2  # the probe and the one token


async def test_v2_without_credentials_relays_nothing_while_the_challenge_is_fresh() -> None:
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        relayed = await ask(m, "/v2/")  # nothing known yet: relayed, and counted
        assert relayed.headers["WWW-Authenticate"] == HUB_V2
        assert await refused(await ask(m, TOKEN))
        await probe(m)
        sent = len(m.upstream.requests)
        for _ in range(20):
            answer = await ask(m, "/v2/")
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"] == relayed.headers["WWW-Authenticate"]
        assert len(m.upstream.requests) == sent


async def test_v2_without_credentials_in_front_of_an_open_upstream_relays_nothing() -> None:
    """A plain private registry asks for no credentials (its ``/v2/`` is ``200``): once the
    mirror's probe has seen that, an anonymous ``/v2/`` is answered by the mirror and takes no
    relay (before, each one went upstream and counted: the third of these was a ``429``)."""
    async with mirror(lambda request: reply(200, b"{}"), ONE_RELAY) as m:
        mirror_state(m.app).relays.buckets.clock = Clock()
        await probe(m)
        sent = len(m.upstream.requests)
        answers = [await ask(m, "/v2/") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert [await a.get_json() for a in answers] == [{}] * 5
        assert all("WWW-Authenticate" not in a.headers for a in answers)
        assert len(m.upstream.requests) == sent
        credentials = {"Authorization": "Basic dTpw"}  # whether they hold: only it can say
        assert (await ask(m, "/v2/", headers=credentials)).status_code == 200
        assert len(m.upstream.requests) == sent + 1
        assert await refused(await ask(m, "/v2/", headers=credentials))


async def test_a_stale_challenge_is_asked_again_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``REALM_TTL`` the upstream is asked again (a relay) while the client may; one out
    of relays gets what the mirror last saw."""
    monkeypatch.setattr("docxy.upstream.client.REALM_TTL", 0.0)
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        await probe(m)
        assert (await ask(m, "/v2/")).status_code == 401
        assert [r.url.path for r in m.upstream.requests] == ["/v2/", "/v2/"]
        answer = await ask(m, "/v2/")
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == HUB_V2
        assert len(m.upstream.requests) == 2
        assert await refused(await ask(m, TOKEN))


async def test_v2_with_credentials_is_relayed_and_counted() -> None:
    """Whether a token holds only the upstream can say (``docker login`` checks so)."""
    async with relaying({"limits.token_relays_per_minute": "1"}) as (m, _):
        await probe(m)
        bearer = {"Authorization": "Bearer t0ken"}
        assert (await ask(m, "/v2/", headers=bearer)).status_code == 401
        assert m.upstream.requests[-1].headers["authorization"] == "Bearer t0ken"
        assert await refused(await ask(m, "/v2/", headers=bearer))
        assert len(m.upstream.requests) == 2


# --- /auth/token: what asks the upstream, and what the mirror answers itself ------------------

LAB_TOKEN = "/auth/token?scope=repository:lab.test/owner/img:pull"
HUB_TOKEN = "/auth/token?service=hub-service&scope=repository:redis:pull"
ONE_RELAY: dict[str, object] = {"limits.token_relays_per_minute": "1"}


async def test_a_token_the_mirror_answers_itself_takes_no_relay() -> None:
    """An upstream without a token service gets a mirror-only token: once its ``/v2/`` was
    looked at (that look is a relay), nothing is asked, and a client out of relays still gets
    it (on 00eccfd each one took a relay: the second was a ``429``)."""
    async with several(None, **ONE_RELAY) as m:
        answers = [await m.get(LAB_TOKEN) for _ in range(5)]
        assert [a.status for a in answers] == [200] * 5
        assert m.sent() == ["lab.example/v2/"]
        assert (await m.get(HUB_TOKEN)).status == 429  # a real relay: the bucket is empty
        assert m.sent() == ["lab.example/v2/"]


async def test_a_realm_lookup_is_a_relay_counted_once_with_its_token() -> None:
    """A token request that must look up the realm (the upstream's ``/v2/``) asks the upstream
    twice and counts once; one for another upstream whose realm must be looked up is refused
    before anything is sent."""
    async with several(None, **ONE_RELAY) as m:
        assert (await m.get(HUB_TOKEN)).status == 200
        assert m.sent() == ["hub.example/v2/", "auth.hub.example/token"]
        assert (await m.get(LAB_TOKEN)).status == 429
        assert (await m.get(HUB_TOKEN)).status == 429
        assert len(m.sent()) == 2
