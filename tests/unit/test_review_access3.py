"""Third review of the mirror's own access control: what the second one
(``test_review_access2``) reported and left: the wrong-password limit against a client holding
a whole IPv6 site (a /48 or /56), a users file mounted alone into a container, and the
mirror's own tokens issued under an earlier ``server.public_url``.

Each fault is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.access.logins import FailedLogins
from docxy.access.tokens import ALGORITHM, TokenSpec, issue
from docxy.access.users import UsersFile, UsersFileError
from docxy.http.state import mirror_state
from tests.unit.test_access_routes import (
    CERTS,
    HeldChecks,
    basic,
    bearer,
    code_of,
    presenting,
    private,
    users_mirror,
)
from tests.unit.test_routes import Mirror, mirror

TOKEN_PATH = "/auth/token?scope=repository:library/redis:pull"


async def login(m: Mirror, client: str, password: str = "guess") -> int:
    scope = {"client": (client, 40000)}
    answer = await m.client.get(TOKEN_PATH, headers=basic("alice", password), scope_base=scope)
    return answer.status_code


def two_guesses_checked_at_once(m: Mirror) -> HeldChecks:
    """Two wrong passwords a client (no refill: the clock stands), each checked at once; the
    checks, to count."""
    access = mirror_state(m.app).access
    assert access is not None
    access.logins = FailedLogins(2, clock=lambda: 100.0)
    held = HeldChecks()
    held.release.set()
    access.users.checked = held.checked  # type: ignore[method-assign]
    return held


# --- 1. wrong passwords from a whole IPv6 site --------------------------------------------


async def test_wrong_passwords_from_many_64s_of_one_48_share_a_wider_budget(
    tmp_path: Path,
) -> None:
    """Wrong passwords were limited per /64 only: whoever holds a /56 or a /48 (what an ISP
    gives a home or a business) has 256 or 65536 of them, each with its own bucket of
    ``limits.failed_logins_per_minute``, and guessed hundreds of times a minute, held back
    only by the two hashing slots (which made everyone's logins wait). Now an IPv6 guess also
    needs room in its /48's budget, ten times the per-address one: the /48 out of it is
    ``429`` from every /64 of it, the right password too; another /48 logs in as before."""
    async with users_mirror(tmp_path) as m:
        held = two_guesses_checked_at_once(m)
        answers = [await login(m, f"2001:db8:1:{n:x}::1") for n in range(10) for _ in range(2)]
        assert answers == [401] * 20  # ten /64s of one /48, two guesses each: its budget
        assert await login(m, "2001:db8:1:a::1") == 429  # a fresh /64 of the same /48
        assert await login(m, "2001:db8:1:ff00::7", "right") == 429  # the site's budget is out
        assert await login(m, "2001:db8:2::1", "right") == 200  # another /48
        assert held.started == 21  # nothing refused was hashed


async def test_a_right_password_gives_back_its_place_in_both_budgets(tmp_path: Path) -> None:
    """Right passwords cost a /48 nothing, as they cost an address nothing: a site whose
    people log in all day is not locked out by it."""
    async with users_mirror(tmp_path) as m:
        two_guesses_checked_at_once(m)
        rights = [await login(m, f"2001:db8:1:{n:x}::1", "right") for n in range(40)]
        assert rights == [200] * 40
        wrongs = [await login(m, f"2001:db8:1:{n:x}::1") for n in range(20)]
        assert wrongs == [401] * 20
        assert await login(m, "2001:db8:1:100::1") == 429


def test_a_guess_refused_by_the_48_takes_nothing_from_the_64() -> None:
    """A guess needs room in both budgets; refused by one, it takes from neither (the /64's
    place is not lost to a refusal that checked nothing)."""
    logins = FailedLogins(1, clock=lambda: 0.0)
    network = "2001:db8:1::/48"
    for n in range(10):
        assert logins.take(f"2001:db8:1:{n:x}::/64", network) is None
    refusal = logins.take("2001:db8:1:a::/64", network)
    assert refusal is not None and refusal.status == 429
    # the /48 refused it: the /64 still has its one guess, in another /48's budget
    assert logins.take("2001:db8:1:a::/64", "2001:db8:9::/48") is None
    assert logins.refused == 1


async def test_ipv4_addresses_keep_a_budget_each(tmp_path: Path) -> None:
    """Guard: IPv4 is as before, a budget per address and none wider (a /24 is many people's
    NAT-ed offices, and nobody holds a /24 for the asking as one does an IPv6 /48)."""
    async with users_mirror(tmp_path) as m:
        two_guesses_checked_at_once(m)
        answers = [await login(m, f"203.0.113.{n}") for n in range(15) for _ in range(2)]
        assert answers == [401] * 30
        assert await login(m, "203.0.113.0", "right") == 429
        assert await login(m, "203.0.113.200", "right") == 200


# --- 2. a users file mounted alone, replaced on the host ----------------------------------


def replaced_behind(tmp_path: Path) -> tuple[Path, int]:
    """A users file with alice and bob seen through a path that keeps the file as it was
    (``/proc/self/fd/N``, as a container's single-file bind mount keeps the inode it
    mounted), and then ``docxy users rm bob`` on the "host" path, which writes a new file and
    renames it over the old one."""
    host = tmp_path / "users"
    UsersFile(host).add("alice", "right")
    UsersFile(host).add("bob", "right")
    fd = os.open(host, os.O_RDONLY)
    mounted = Path(f"/proc/self/fd/{fd}")
    assert UsersFile(mounted).exists("bob")
    assert UsersFile(host).remove("bob")
    return mounted, fd


def test_a_users_file_replaced_behind_a_single_file_mount_is_an_error(tmp_path: Path) -> None:
    """Mounted alone into a container, the users file is the inode the mount was made with:
    ``docxy users rm`` on the host writes a new file and renames it over the old one, and the
    container goes on reading the old one, so a removed user (or an old password) worked
    until a restart. The old file then has no name left on the host (link count 0), which a
    file reached by its path never has: the mirror now takes that for an unreadable users
    file (nobody's password or token is honoured, 503) and says why and what to mount."""
    mounted, fd = replaced_behind(tmp_path)
    try:
        with pytest.raises(UsersFileError, match="mount its directory") as said:
            UsersFile(mounted).exists("bob")
        assert str(mounted) in str(said.value)
    finally:
        os.close(fd)


async def test_a_removed_user_behind_a_stale_mount_logs_in_no_more(tmp_path: Path) -> None:
    """Through the app: the removed user's login is 503 (users file unreadable), not a
    token."""
    mounted, fd = replaced_behind(tmp_path)
    try:
        UsersFile(tmp_path / "users").add("alice", "right")
        async with mirror(private, {"auth.mode": "users", "auth.users_file": str(mounted)}) as m:
            answer = await m.client.get(TOKEN_PATH, headers=basic("bob", "right"))
            assert answer.status_code == 503
            assert await code_of(answer) == "UNAVAILABLE"
    finally:
        os.close(fd)


# --- 3. the mirror's tokens from before a change of server.public_url ----------------------


def old_url_token(m: Mirror) -> str:
    """A token the mirror signed (its current key) while its public URL was another one."""
    access = mirror_state(m.app).access
    assert access is not None
    before = TokenSpec("https://old-mirror.example", "old-mirror.example", access.spec.ttl)
    return issue(access.keys, before, "alice", [], time.time(), fingerprint="0" * 16)


UPSTREAM_LOGINS = {"auth.mode": "users", "auth.upstream_logins": "true", **CERTS}


async def test_the_mirrors_token_of_an_earlier_public_url_never_goes_upstream(
    tmp_path: Path,
) -> None:
    """Whether a token is the mirror's was read from its ``iss``: after a change of
    ``server.public_url``, the mirror's unexpired tokens name the old URL, so with
    ``auth.upstream_logins`` a certificate client's such token went to the upstream as its
    Docker Hub login. A token one of the mirror's keys signed is now the mirror's, whatever
    it claims: refused (401), never sent on; nor to the upstream's token service."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {**UPSTREAM_LOGINS, "auth.dir": str(tmp_path)}
    async with mirror(private, settings) as m, presenting(tmp_path, "laptop"):
        token = old_url_token(m)
        response = await m.client.get("/v2/library/secret/manifests/1", headers=bearer(token))
        assert response.status_code == 401
        answer = await m.client.get("/auth/token?scope=x", headers=bearer(token))
        assert answer.status_code == 401
        sent = {r.headers.get("Authorization") for r in m.upstream.requests}
        assert f"Bearer {token}" not in sent


async def test_a_client_without_a_certificate_is_told_its_old_url_token_is_not_valid(
    tmp_path: Path,
) -> None:
    """Guard: without ``auth.upstream_logins`` such a token is refused as any token the mirror
    no longer honours (401 with the mirror's challenge)."""
    async with users_mirror(tmp_path) as m:
        response = await m.client.get(
            "/v2/library/redis/manifests/7", headers=bearer(old_url_token(m))
        )
        assert response.status_code == 401
        assert "invalid_token" in response.headers["WWW-Authenticate"]
        said = (await response.get_json())["errors"][0]["message"]
        assert "issued under another server.public_url" in said


async def test_a_strangers_signed_token_still_goes_upstream(tmp_path: Path) -> None:
    """Guard: a JWT another key signed (Docker Hub's, say) is the client's own login and goes
    upstream with ``auth.upstream_logins``, whatever issuer it names but the mirror's."""
    UsersFile(tmp_path / "users").add("alice", "right")
    settings: dict[str, object] = {**UPSTREAM_LOGINS, "auth.dir": str(tmp_path)}
    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "auth.docker.io", "sub": "alice", "exp": int(time.time()) + 300}
    token = jwt.encode(claims, stranger, algorithm=ALGORITHM, headers={"kid": "x"})
    async with mirror(private, settings) as m, presenting(tmp_path, "laptop"):
        await m.client.get("/v2/library/secret/manifests/1", headers=bearer(token))
        sent = {r.headers.get("Authorization") for r in m.upstream.requests}
        assert f"Bearer {token}" in sent


def test_a_mirror_that_signs_nothing_makes_no_key_to_tell_a_strangers_token(tmp_path: Path) -> None:
    """Client certificates in open mode: the mirror issues no token, so ``auth.dir`` has no
    signing key (it may be mounted read-only). Telling whether a client's upstream token is
    the mirror's wrote one there at the first such request (on the event loop), and, the
    directory read-only, took every such token for the mirror's and never sent it upstream."""
    from docxy.access.keys import CURRENT, KeyRing
    from docxy.access.tokens import issued_here

    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "auth.docker.io", "sub": "alice", "exp": int(time.time()) + 300}
    token = jwt.encode(claims, stranger, algorithm=ALGORITHM, headers={"kid": "x"})
    spec = TokenSpec("https://mirror.test", "mirror.test", 300)
    assert not issued_here(KeyRing(tmp_path, grace=60), spec, token)
    assert not (tmp_path / CURRENT).exists()
