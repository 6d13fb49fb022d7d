"""A password change ends the tokens issued under the old password.

A token was honoured as long as its ``sub`` was still a name in the users file: after
``docxy users add alice`` on an existing user (a leaked password set again), the tokens got with
the old password kept pulling until their ``exp`` (up to ``auth.token_ttl``, which may be a
day). The mirror's tokens now carry a short fingerprint of the stored hash they were issued
under (never the hash), compared in constant time with the user's current hash.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import bcrypt

from docxy.access.scopes import Access
from docxy.access.tokens import issue
from docxy.access.users import UsersFile
from docxy.http.state import mirror_state
from tests.unit.test_access_routes import (
    CERTS,
    MANIFEST_PATH,
    basic,
    bearer,
    presenting,
    token_for,
    users_mirror,
)

SCOPE = "repository:library/redis:pull"
PULL = [Access("repository", "library/redis", ("pull",))]


def payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    data: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * 4))
    return data


async def test_a_password_change_ends_the_tokens_of_the_old_password(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        old = await token_for(m, SCOPE)
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(old))).status_code == 200
        UsersFile(tmp_path / "users").add("alice", "a-new-password")  # another process
        for path in ("/v2/", MANIFEST_PATH):
            response = await m.client.get(path, headers=bearer(old))
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        refused = await m.client.get(f"/auth/token?scope={SCOPE}", headers=basic("alice", "right"))
        assert refused.status_code == 401
        new = await token_for(m, SCOPE, password="a-new-password")
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(new))).status_code == 200


async def test_other_users_changes_keep_a_users_tokens(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, SCOPE)
        users = UsersFile(tmp_path / "users")
        users.add("bob", "bobs")
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(token))).status_code == 200
        users.add("bob", "bobs-new")
        users.remove("bob")
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(token))).status_code == 200


async def test_a_token_without_the_users_password_fingerprint_is_refused(tmp_path: Path) -> None:
    """Only the mirror issues these tokens, always with the claim: one without it (signed by an
    older mirror, or by someone who holds the key), or with another user's, is refused."""
    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        UsersFile(tmp_path / "users").add("bob", "bobs")
        now = time.time()
        bare = issue(access.keys, access.spec, "alice", PULL, now)
        bobs = access.users.fingerprint("bob")
        wrong = issue(access.keys, access.spec, "alice", PULL, now, fingerprint=bobs)
        said = {bare: "without a password fingerprint", wrong: "before a password change"}
        for token, why in said.items():
            response = await m.client.get(MANIFEST_PATH, headers=bearer(token))
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
            assert why in (await response.get_data(as_text=True))
        alices = access.users.fingerprint("alice")
        right = issue(access.keys, access.spec, "alice", PULL, now, fingerprint=alices)
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(right))).status_code == 200


async def test_the_token_carries_a_fingerprint_never_the_hash(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, SCOPE)
    stored = UsersFile(tmp_path / "users").users()["alice"]
    claims = payload(token)
    fingerprint = claims["pwf"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 16
    int(fingerprint, 16)  # hex
    salt, digest = stored.split("$")[-2:]
    text = json.dumps(claims)
    assert stored not in text and salt not in text and digest not in text


async def test_a_bcrypt_users_token_works_until_the_password_changes(tmp_path: Path) -> None:
    """Hashes ``htpasswd -B`` wrote are fingerprinted alike."""
    async with users_mirror(tmp_path) as m:
        hashed = bcrypt.hashpw(b"carols", bcrypt.gensalt(4)).decode()
        with (tmp_path / "users").open("a") as users:
            users.write(f"carol:{hashed}\n")
        token = await token_for(m, SCOPE, user="carol", password="carols")
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(token))).status_code == 200
        UsersFile(tmp_path / "users").add("carol", "carols")  # argon2id now, same password
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(token))).status_code == 401


async def test_certificate_clients_are_not_touched_by_a_password_change(tmp_path: Path) -> None:
    """Client certificates carry no token of the mirror's: a user's password change leaves
    them pulling, and a certificate client's login naming a mirror user gets a token that
    holds until that user's password changes."""
    settings = {"auth.upstream_logins": "true", **CERTS}
    async with users_mirror(tmp_path, **settings) as m, presenting(tmp_path, "laptop"):
        token = await token_for(m, SCOPE)
        assert "pwf" in payload(token)
        UsersFile(tmp_path / "users").add("alice", "a-new-password")
        assert (await m.client.get("/v2/")).status_code == 200
        assert (await m.client.get(MANIFEST_PATH)).status_code == 200
    sent = {r.headers.get("Authorization") for r in m.upstream.requests}
    assert f"Bearer {token}" not in sent


def test_the_fingerprint_follows_the_stored_hash(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users")
    users.add("alice", "right")
    first = users.fingerprint("alice")
    assert first is not None and users.fingerprint("nobody") is None
    assert users.checked("alice", "right") == first
    assert users.checked("alice", "wrong") is None and users.checked("nobody", "x") is None
    users.add("alice", "right")  # set again: a new salt, a new hash
    assert users.fingerprint("alice") not in (None, first)


async def test_odd_fingerprint_claims_are_refused_without_an_exception(tmp_path: Path) -> None:
    """``pwf`` is the client's to send: a lone surrogate, another type or a huge string signed
    with the mirror's key (as by someone who holds it) is a 401, never an exception out of the
    check (``hmac.compare_digest`` refuses non-ASCII ``str``; a lone surrogate cannot be
    encoded)."""
    import jwt

    async with users_mirror(tmp_path) as m:
        access = mirror_state(m.app).access
        assert access is not None
        signing = access.keys.signing()
        now = int(time.time())
        for odd in ("\ud800", "é" * 16, 12345, ["x"], None, "0" * 100_000):
            claims: dict[str, object] = {"iss": access.spec.issuer, "aud": access.spec.audience}
            claims |= {"sub": "alice", "iat": now, "nbf": now, "exp": now + 60, "pwf": odd}
            token = jwt.encode(claims, signing.key, algorithm="ES256", headers={"kid": signing.kid})
            who = access.identify(f"Bearer {token}")
            assert who.problem is not None and who.error == "invalid_token", odd
