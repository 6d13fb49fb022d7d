"""The mirror's own login, from a whole read of the login code after tokens8 (7b36d08):

1. A miss whose OWN scope-less check timed out (or that joined one that did) took its 401 as
   checked: remembered for ``REFUSED_TTL``, a public repository stood refused a minute for a
   revoked password although the token service answered again seconds later; only a 401 in
   the hold after such a check was left unremembered.
2. A scoped ``403`` to a request carrying the login (known, denied one repository) did not
   renew a stale acceptance, as the scope-less check's ``403`` does.
"""

from __future__ import annotations

import asyncio

import httpx

from docxy.upstream.tokens import CHECK_SILENCE_HOLD, REFUSED_TTL
from tests.unit.logins import InFlight, logged_in
from tests.unit.test_review_tokens4 import ROBOT, Revocable, miss
from tests.unit.test_review_tokens4 import now as now  # noqa: F401  (fixture)
from tests.unit.test_review_tokens6 import Silent, revoked_and_check_silent, silent_login


async def test_a_401_whose_own_check_timed_out_is_not_remembered(now: list[float]) -> None:
    registry = Silent()
    async with silent_login(registry) as tokens:
        await revoked_and_check_silent(registry, tokens, now)  # owner/b's 401
        tokens.mark_refused(ROBOT, "owner/b")  # as the pull services mark the 401 sent
        registry.checks_silent = False  # the token service answers again
        now[0] += CHECK_SILENCE_HOLD + 1  # the hold over, well inside REFUSED_TTL
        assert CHECK_SILENCE_HOLD + 1 < REFUSED_TTL
        assert not tokens.refused(ROBOT, "owner/b")
        scoped = len(registry.scoped)
        assert await miss(tokens, "owner/b") == 200  # checked: refused; anonymously
        assert len(registry.scoped) > scoped  # asked again, not a remembered 401
        assert tokens.login_refused(ROBOT)


class Denies(Revocable):
    """``Revocable``, whose token service answers ``403`` to the login's scoped request for
    ``owner/denied`` (the login known, denied that repository)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test" and request.url.params.get("scope") == (
            "repository:owner/denied:pull"
        ):
            self.scoped.append(
                ("repository:owner/denied:pull", request.headers.get("authorization"))
            )
            return httpx.Response(403, json={"details": "requested access is denied"})
        return super().__call__(request)


async def test_a_scoped_403_to_the_login_renews_its_acceptance(now: list[float]) -> None:
    """Past ``REFUSED_TTL`` of an accepted login the next misses go one at a time until one
    outcome with the login is known (165be19); a ``403`` is such an outcome (the scope-less
    check takes it for the login known), but it left the acceptance stale."""
    registry = Denies()
    flights = InFlight(registry)
    async with logged_in(httpx.MockTransport(flights.handle)) as tokens:
        now[0] += REFUSED_TTL + 60  # stale, still trusted
        checks = registry.checks
        assert await miss(tokens, "owner/denied") in (401, 403)
        assert registry.checks == checks  # a 403 needs no scope-less check
        # The acceptance as fresh as that answer: the next misses go at once, none waiting
        # for one to go first with the login (as they would after a stale acceptance).
        flights.most = 0
        answers = await asyncio.gather(*(miss(tokens, f"owner/img{n}") for n in range(5)))
    assert answers == [200] * 5
    assert flights.most == 5
    assert registry.checks == checks
