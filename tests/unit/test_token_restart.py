"""An anonymous pull whose token the mirror relayed before a restart, going on after it.

The mirror relays the upstream's anonymous tokens (``/auth/token``) and keeps only their
digests in memory (:mod:`docxy.upstream.anonymous`), which a restart forgets. The token is the
upstream's: it still pulls through the restarted mirror, with no new token round-trip. What the
mirror forgot is whose it is: until it expires, a ``429`` answered to it counts as the client's
own account's limit, not the mirror's (its health, ``ratelimit-*``); the mirror's own next
request to the upstream says that again.
"""

from __future__ import annotations

import json

import httpx

from docxy.http.state import mirror_state
from tests.unit.fakes import reply
from tests.unit.test_routes import HUB_CHALLENGE, hub, mirror

TOKEN = "/auth/token?scope=repository:library/redis:pull&service=registry.example"
MANIFEST = "/v2/library/redis/manifests/7"


class Upstream:
    """A hub that honours only the tokens its token service issued, and may be rate limited."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.limited = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.issued.append(f"anon-{len(self.issued)}")
            body = json.dumps({"token": self.issued[-1], "expires_in": 300}).encode()
            return reply(200, body, {"Content-Type": "application/json"})
        if request.url.path != "/v2/":
            sent = request.headers.get("authorization", "").removeprefix("Bearer ")
            if sent not in self.issued:
                return reply(401, b"{}", {"WWW-Authenticate": HUB_CHALLENGE})
            if self.limited:
                return reply(429, b"{}", {"Retry-After": "60"})
        return hub(request)


async def test_a_token_relayed_before_a_restart_pulls_after_it() -> None:
    upstream = Upstream()
    async with mirror(upstream) as before:
        answer = await before.client.get(TOKEN)
        token = json.loads(await answer.get_data())["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await before.client.get(MANIFEST, headers=bearer)).status_code == 200
        upstream.limited = True  # known as the mirror's anonymous token: the mirror's limit
        assert (await before.client.get(MANIFEST, headers=bearer)).status_code == 429
        state = mirror_state(before.app)
        assert state.client.health_of(state.upstreams.default).healthy is False
        upstream.limited = False
    async with mirror(upstream) as after:  # a restart: nothing of `before` in memory
        answer = await after.client.get(MANIFEST, headers=bearer)
        assert answer.status_code == 200
        assert upstream.issued == [token]  # no new token asked for
        # What the restart cost: the token is the client's now, as far as the mirror knows.
        upstream.limited = True
        assert (await after.client.get(MANIFEST, headers=bearer)).status_code == 429
        state = mirror_state(after.app)
        assert state.client.health_of(state.upstreams.default).healthy is True
