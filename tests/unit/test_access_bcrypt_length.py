"""bcrypt reads 72 bytes of a password: a longer one must never log in by its first 72.

A bcrypt hash in the users file comes from ``htpasswd -B`` (``docxy users add`` writes
argon2id, which has no such bound), which hashes the first 72 bytes of what it is given.
bcrypt 4.1-4.3 (``bcrypt>=4.1`` allows them) checks a longer password by its first 72 bytes
too, so anyone who knows those logs in with any ending; bcrypt 5 raises ``ValueError``
instead. Either way the mirror answers such a login as a wrong password: ``401``, never a
token and never a ``500``. The tests run each behaviour of the library, whichever is installed.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from docxy.access.users import UsersFile, verify_hash
from tests.unit.test_routes import hub, mirror

#: 72 bytes: all bcrypt reads (a passphrase of 12 six-letter words and spaces, less one)
PREFIX = ("correct horse battery staple " * 3)[:72].encode()
REAL_CHECKPW = bcrypt.checkpw


def truncating(password: bytes, hashed: bytes) -> bool:
    """bcrypt 4.1-4.3: a password is checked by its first 72 bytes."""
    return REAL_CHECKPW(password[:72], hashed)


def raising(password: bytes, hashed: bytes) -> bool:
    """bcrypt 5: a password over 72 bytes is an error."""
    if len(password) > 72:
        raise ValueError("password cannot be longer than 72 bytes")
    return REAL_CHECKPW(password, hashed)


@pytest.fixture(params=[truncating, raising], ids=["bcrypt-4.x", "bcrypt-5"])
def library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    behaviour: Callable[[bytes, bytes], bool] = request.param
    monkeypatch.setattr(bcrypt, "checkpw", behaviour)  # as docxy.access.users calls it
    yield


@pytest.fixture
def stored() -> str:
    """What ``htpasswd -B`` stores for a password beginning with ``PREFIX``."""
    return bcrypt.hashpw(PREFIX, bcrypt.gensalt(rounds=4)).decode()


@pytest.mark.usefixtures("library")
@pytest.mark.parametrize("tail", [b"!", b"anything at all", "é".encode()])
def test_a_password_past_72_bytes_does_not_match_by_its_prefix(stored: str, tail: bytes) -> None:
    assert verify_hash(stored, PREFIX.decode())
    assert not verify_hash(stored, (PREFIX + tail).decode())
    assert not verify_hash(stored, PREFIX[:71].decode())


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.usefixtures("library")
async def test_the_token_endpoint_answers_a_long_password_as_a_wrong_one(
    tmp_path: Path, stored: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "users").write_text(f"alice:{stored}\n")
    settings: dict[str, object] = {"auth.mode": "users", "auth.dir": str(tmp_path)}
    async with mirror(hub, settings) as m:
        with caplog.at_level(logging.WARNING, logger="docxy.access.users"):
            long = await m.client.get("/auth/token", headers=basic("alice", PREFIX.decode() + "x"))
        assert long.status_code == 401, await long.get_data()
        body = await long.get_json()
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
        assert "token" not in body
        stranger = await m.client.get("/auth/token", headers=basic("bob", "y" * 100))
        assert stranger.status_code == 401
        right = await m.client.get("/auth/token", headers=basic("alice", PREFIX.decode()))
        assert right.status_code == 200
    # The operator learns why alice's long password fails, without the password.
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("alice" in w and "72 bytes" in w and "docxy users add" in w for w in warning)
    assert not any(PREFIX.decode()[:20] in w for w in warning)


def test_docxy_users_add_writes_argon2_which_checks_every_byte(tmp_path: Path) -> None:
    file = UsersFile(tmp_path / "users")
    file.add("carol", PREFIX.decode() + "tail")
    assert file.users()["carol"].startswith("$argon2id$")
    assert file.check("carol", PREFIX.decode() + "tail")
    assert not file.check("carol", PREFIX.decode() + "tall")
