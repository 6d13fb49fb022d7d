"""Second review of the mirror's own access control (``docxy.access``, the token endpoint and
the README's "Access control" and "Threat model").

Each fault found is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from docxy.access.gate import PASSWORD_CHECKS, refuse_plain_http
from docxy.access.logins import FailedLogins
from docxy.config import load_config
from docxy.core.errors import ConfigError
from docxy.http.state import mirror_state
from tests.unit.test_access_routes import HeldChecks, login_then_hang_up, users_mirror


@pytest.mark.parametrize("public_url", ["http://mirror.example:8080", "http://192.0.2.10"])
def test_users_mode_with_a_plain_http_public_url_off_loopback_is_refused(
    tmp_path: Path, public_url: str
) -> None:
    """The README: users mode "needs HTTPS: passwords and tokens must not cross the network in
    clear", a loopback ``server.listen`` being allowed as the back of a TLS proxy on the same
    host. But ``server.public_url`` is what every challenge sends clients to (the realm,
    ``<public_url>/auth/token``): an ``http://`` one on another host sends each ``docker
    login`` password there in clear, whatever the listener, and the mirror started without a
    word. It is refused as a plain-HTTP listener off loopback is, naming
    ``auth.allow_plain_http``."""
    settings = {
        "cache.dir": str(tmp_path),
        "auth.mode": "users",
        "server.listen": "127.0.0.1:8080",
        "server.public_url": public_url,
    }
    config = load_config(settings, environ={})
    with pytest.raises(ConfigError, match="auth.allow_plain_http") as refused:
        refuse_plain_http(config)
    said = str(refused.value)
    assert said.startswith("auth.mode:") and "server.public_url" in said and "\n" not in said
    allowed = load_config({**settings, "auth.allow_plain_http": "true"}, environ={})
    refuse_plain_http(allowed)  # the operator's opt-in, for a network it trusts


@pytest.mark.parametrize(
    "public_url", ["https://mirror.example", "http://127.0.0.1:8080", "http://localhost:8080"]
)
def test_users_mode_behind_a_tls_proxy_or_on_loopback_only_still_starts(
    tmp_path: Path, public_url: str
) -> None:
    """Guard for the above: a TLS proxy in front (an ``https://`` public URL) and a mirror
    reached on loopback only (the tests, a client on the same host) are not refused."""
    settings = {
        "cache.dir": str(tmp_path),
        "auth.mode": "users",
        "server.listen": "127.0.0.1:8080",
        "server.public_url": public_url,
    }
    refuse_plain_http(load_config(settings, environ={}))


async def test_a_check_whose_client_left_before_its_turn_is_dropped_and_not_charged(
    tmp_path: Path,
) -> None:
    """A login whose client hangs up mid-check keeps its check running to its end (so the
    guess is charged and the hashing slot is not freed while a thread still hashes). But one
    still *waiting* for a slot was kept too: connect, send a wrong password, hang up, from
    every address one holds (an IPv6 /48 is 65536 buckets of 10 a minute), and the waiting
    checks piled up outside every connection cap, each to be hashed in turn, two at a time,
    ahead of every later login. A check whose client left before its turn is now dropped,
    never hashed, its place given back: a password never checked is no guess (nobody learns
    anything of it), and a client whose own login timed out in the queue is not charged."""
    waiting = 20
    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        access.logins = FailedLogins(1, clock=lambda: 100.0)  # one guess an address, no refill
        held = HeldChecks()
        access.users.checked = held.checked  # type: ignore[method-assign]
        async with asyncio.TaskGroup() as tasks:
            try:
                stay = asyncio.Event()
                hashing = [  # two clients that wait for their answers: both slots taken
                    tasks.create_task(login_then_hang_up(m, stay, client=f"198.51.100.{n}"))
                    for n in range(PASSWORD_CHECKS)
                ]
                for _ in hashing:
                    await held.begun.acquire()
                hang_up = asyncio.Event()
                left = [
                    tasks.create_task(login_then_hang_up(m, hang_up, client=f"203.0.113.{n}"))
                    for n in range(waiting)
                ]
                await asyncio.sleep(0.2)  # each has taken its place and waits for a slot
                hang_up.set()
                assert await asyncio.gather(*left) == [None] * waiting
            finally:
                held.release.set()
        assert [task.result() for task in hashing] == [401] * PASSWORD_CHECKS
        await asyncio.sleep(0.5)  # what is still queued gets its turn now
        assert held.started == PASSWORD_CHECKS  # none of the abandoned checks was hashed
        # an address whose check was dropped keeps its place; one whose check ran is charged
        again = await login_then_hang_up(m, asyncio.Event(), client="203.0.113.3")
        assert again == 401  # checked (a wrong password), not 429
        charged = await login_then_hang_up(m, asyncio.Event(), client="198.51.100.0")
        assert charged == 429
