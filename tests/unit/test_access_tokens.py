"""The mirror's tokens: claims, lifetime, issuer and audience, signing keys and rotation."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from docxy.access import keys
from docxy.access.keys import KeyRing
from docxy.access.scopes import Access
from docxy.access.tokens import TokenInvalid, TokenSpec, issue, verify
from docxy.tls import files

SPEC = TokenSpec("https://mirror.test", "mirror.test", 300)
PULL = [Access("repository", "library/redis", ("pull",))]


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    data: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return data


def test_claims(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=60)
    now = time.time()
    token = issue(ring, SPEC, "alice", PULL, now)
    claims = claims_of(token)
    assert claims["sub"] == "alice" and claims["iss"] == SPEC.issuer
    assert claims["aud"] == SPEC.audience
    assert claims["exp"] == int(now) + 300
    assert claims["access"] == [
        {"type": "repository", "name": "library/redis", "actions": ["pull"]}
    ]
    verified = verify(ring, SPEC, token, now)
    assert verified.user == "alice" and verified.access == tuple(PULL)


def test_expired_and_not_yet_valid_tokens_are_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=60)
    now = time.time()
    token = issue(ring, SPEC, "alice", PULL, now)
    with pytest.raises(TokenInvalid, match="expired"):
        verify(ring, SPEC, token, now + 301 + 5)
    old = issue(ring, SPEC, "alice", PULL, now - 400)
    with pytest.raises(TokenInvalid, match="expired"):
        verify(ring, SPEC, old, now)
    future = issue(ring, SPEC, "alice", PULL, now + 120)
    with pytest.raises(TokenInvalid):
        verify(ring, SPEC, future, now)


@pytest.mark.parametrize(
    "other",
    [
        TokenSpec("https://evil.test", "mirror.test", 300),
        TokenSpec("https://mirror.test", "x", 300),
    ],
)
def test_other_issuer_or_audience_is_refused(tmp_path: Path, other: TokenSpec) -> None:
    ring = KeyRing(tmp_path, grace=60)
    token = issue(ring, other, "alice", PULL, time.time())
    with pytest.raises(TokenInvalid):
        verify(ring, SPEC, token)


def test_tampered_and_foreign_tokens_are_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "a", grace=60)
    token = issue(ring, SPEC, "alice", PULL, time.time())
    head, payload, sig = token.split(".")
    claims = claims_of(token)
    claims["sub"] = "root"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    for bad in (f"{head}.{forged}.{sig}", "garbage", "", token[:-4] + "AAAA"):
        with pytest.raises(TokenInvalid):
            verify(ring, SPEC, bad)
    stranger = issue(KeyRing(tmp_path / "b", grace=60), SPEC, "alice", PULL, time.time())
    with pytest.raises(TokenInvalid, match="unknown or retired key"):
        verify(ring, SPEC, stranger)


def test_none_algorithm_is_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=60)
    kid = ring.signing().kid
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode())
    body = base64.urlsafe_b64encode(
        json.dumps(claims_of(issue(ring, SPEC, "a", PULL, time.time()))).encode()
    )
    with pytest.raises(TokenInvalid):
        verify(ring, SPEC, f"{head.decode().rstrip('=')}.{body.decode().rstrip('=')}.")


def test_rotation_keeps_the_previous_key_for_the_grace_only(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=600)
    now = time.time()
    before = issue(ring, SPEC, "alice", PULL, now)
    first = ring.signing().kid
    running = KeyRing(tmp_path, grace=600)  # the server's ring, told by the files only
    assert verify(running, SPEC, before, now).user == "alice"
    rotated = KeyRing(tmp_path, grace=600).rotate()  # `docxy tokens rotate`
    assert rotated != first
    assert running.signing().kid == rotated
    assert verify(running, SPEC, before, now).user == "alice"  # still honoured: no mass logout
    after = issue(running, SPEC, "alice", PULL, now)
    assert verify(running, SPEC, after, now).user == "alice"
    with pytest.raises(TokenInvalid, match="retired"):
        verify(running, SPEC, before, now + 601)
    # a second rotation retires the first key at once
    KeyRing(tmp_path, grace=600).rotate()
    with pytest.raises(TokenInvalid):
        verify(running, SPEC, before, now)
    assert verify(running, SPEC, after, now).user == "alice"


def test_a_rotation_while_the_mirror_reads_the_keys_is_picked_up_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docxy tokens rotate` in another process lands between the running mirror's read of the
    key files and its note of what it read: the next use must read them again, not keep the
    retired key as the current one for good."""
    running = KeyRing(tmp_path, grace=600)
    running.signing()
    KeyRing(tmp_path, grace=600).rotate()  # a change the running ring will read
    real_load = keys.load_key
    rotations: list[str] = []

    def load_then_rotate(path: Path) -> object:
        loaded = real_load(path)
        if not rotations:
            rotations.append("")  # before rotating: rotate() loads a key too
            rotations[0] = KeyRing(tmp_path, grace=600).rotate()
        return loaded

    monkeypatch.setattr(keys, "load_key", load_then_rotate)
    running.signing()  # read the files; the second rotation lands meanwhile
    monkeypatch.setattr(keys, "load_key", real_load)
    assert running.signing().kid == rotations[0]


def test_a_rotation_never_leaves_the_current_key_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running mirror that found no current key would write one of its own, which the
    rotation's new key then replaces on disk but not in that mirror's memory."""
    ring = KeyRing(tmp_path, grace=600)
    first = ring.signing().kid
    real_write = files.write_files_atomic
    seen: list[bool] = []

    def checked_write(files: list[tuple[Path, bytes, int]]) -> None:
        seen.append(ring.current_path.exists())
        real_write(files)

    monkeypatch.setattr(keys, "write_files_atomic", checked_write)
    rotated = ring.rotate()
    assert seen and all(seen)
    assert rotated != first
    retired = KeyRing(tmp_path, grace=600).verifying()
    assert set(retired) == {first, rotated}  # the first key honoured for the grace


def test_key_files_are_private(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=1)
    ring.signing()
    assert os.stat(tmp_path / "token-key.pem").st_mode & 0o777 == 0o600


def leaked_copy(ring: KeyRing, where: Path) -> KeyRing:
    """A ring signing with a copy of ``ring``'s current key: what someone who copied
    ``token-key.pem`` signs with after the operator rotated it out."""
    ring.signing()  # made if missing
    where.mkdir()
    (where / keys.CURRENT).write_bytes(ring.current_path.read_bytes())
    return KeyRing(where, grace=1)


def test_a_retired_key_honours_only_tokens_issued_before_the_rotation_within_the_ttl(
    tmp_path: Path,
) -> None:
    """For the whole ``auth.key_grace`` after ``docxy tokens rotate``, any token signed with the
    retired key was honoured: one signed after the rotation, with any lifetime. Now only one
    issued before the rotation (the previous key file's mtime, which survives a restart), and
    living no longer than ``auth.token_ttl`` (each with the clock-skew leeway): the mirror's own
    tokens from before the rotation keep working until they expire."""
    ring = KeyRing(tmp_path / "auth", grace=3600)
    before_start = KeyRing(tmp_path / "auth", grace=3600)  # a mirror running through it
    rotated_at = float(int(time.time()) - 120)  # PyJWT checks nbf and exp on the wall clock
    issued = issue(ring, SPEC, "alice", PULL, rotated_at - 100)
    same_second = issue(ring, SPEC, "alice", PULL, rotated_at + 4)  # within the leeway
    leaked = leaked_copy(ring, tmp_path / "leak")
    assert verify(before_start, SPEC, issued, rotated_at).user == "alice"
    KeyRing(tmp_path / "auth", grace=3600).rotate()
    os.utime(ring.previous_path, (rotated_at, rotated_at))
    after_restart = KeyRing(tmp_path / "auth", grace=3600)
    for running in (before_start, after_restart):
        assert verify(running, SPEC, issued, rotated_at + 150).user == "alice"
        assert verify(running, SPEC, same_second, rotated_at + 150).user == "alice"
        with pytest.raises(TokenInvalid, match="expired"):
            verify(running, SPEC, issued, rotated_at + 206)
        minted = issue(leaked, SPEC, "alice", PULL, rotated_at + 60)
        with pytest.raises(TokenInvalid, match="after its rotation"):
            verify(running, SPEC, minted, rotated_at + 61)
        long_lived = TokenSpec(SPEC.issuer, SPEC.audience, 10 * 365 * 86400)
        backdated = issue(leaked, long_lived, "alice", PULL, rotated_at - 10)
        with pytest.raises(TokenInvalid, match="lifetime"):
            verify(running, SPEC, backdated, rotated_at + 61)
        # the current key is not bound by its rotation time
        fresh = issue(running, SPEC, "alice", PULL, rotated_at + 60)
        assert verify(running, SPEC, fresh, rotated_at + 61).user == "alice"


def test_a_retired_keys_token_with_a_bad_iat_is_refused(tmp_path: Path) -> None:
    import jwt

    ring = KeyRing(tmp_path / "auth", grace=3600)
    leaked = leaked_copy(ring, tmp_path / "leak")
    ring.rotate()
    now = int(time.time())
    for iat in ("0", None, [0], True, float("nan")):  # NaN compares false to everything
        claims: dict[str, object] = {"iss": SPEC.issuer, "aud": SPEC.audience, "sub": "alice"}
        claims["iat"] = iat
        claims |= {"nbf": now - 10, "exp": now + 100}
        signing = leaked.signing()
        token = jwt.encode(claims, signing.key, algorithm="ES256", headers={"kid": signing.kid})
        with pytest.raises(TokenInvalid):
            verify(ring, SPEC, token, now)


def test_a_previous_key_file_holding_the_current_key_does_not_retire_it(tmp_path: Path) -> None:
    """A rotation cut off between its two renames leaves the current key in both files: the
    retired entry replaced the current one (one kid), and every token the mirror then issued
    failed as signed with a retired key after its rotation, for the whole grace."""
    ring = KeyRing(tmp_path / "auth", grace=3600)
    issued = issue(ring, SPEC, "alice", PULL, time.time())
    ring.previous_path.write_bytes(ring.current_path.read_bytes())  # the same key
    then = time.time() - 60  # the cut-off rotation a minute before the token
    os.utime(ring.previous_path, (then, then))
    assert verify(KeyRing(tmp_path / "auth", grace=3600), SPEC, issued).user == "alice"
    assert verify(ring, SPEC, issued).user == "alice"
