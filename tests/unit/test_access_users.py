"""The users file: parsing, argon2 and bcrypt hashes, adding and removing, re-reading."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest

from docxy.access.gate import AccessControl
from docxy.access.users import UsersFile, UsersFileError, hash_password, parse_users, verify_hash
from docxy.config import load_config


def test_argon2_and_bcrypt_hashes_verify() -> None:
    argon = hash_password("s3cret")
    assert argon.startswith("$argon2id$")
    assert verify_hash(argon, "s3cret") and not verify_hash(argon, "s3creT")
    bc = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    assert verify_hash(bc, "s3cret") and not verify_hash(bc, "wrong")
    assert not verify_hash("plain", "plain")
    assert not verify_hash("$argon2id$garbage", "x")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("alice", "expected NAME:HASH"),
        ("Alice:$argon2id$x", "expected NAME:HASH"),
        ("alice:plaintext", "not an argon2 or bcrypt hash"),
        ("alice:$2b$x\nalice:$2b$y", "listed twice"),
    ],
)
def test_bad_lines_name_the_file_and_line(text: str, words: str) -> None:
    with pytest.raises(UsersFileError, match=words) as caught:
        parse_users(text, Path("/etc/users"))
    assert "/etc/users:" in str(caught.value)


def test_comments_and_blank_lines_are_skipped() -> None:
    users = parse_users("# users\n\nbob:$2b$04$abc\n", Path("u"))
    assert users == {"bob": "$2b$04$abc"}


def test_add_check_remove(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users")
    assert users.names() == [] and not users.check("alice", "pw")
    assert users.add("alice", "pw")
    assert not users.add("alice", "pw2")  # a password change
    assert users.check("alice", "pw2") and not users.check("alice", "pw")
    assert not users.check("bob", "pw2")
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o600
    assert "pw2" not in (tmp_path / "users").read_text()
    assert users.remove("alice") and not users.remove("alice")
    assert not users.check("alice", "pw2")


def test_users_added_at_once_are_all_kept(tmp_path: Path) -> None:
    """`docxy users add` run four times at once (a provisioning loop with `&`): each read the
    file, hashed its password, then wrote back the users it had read; one or two were left,
    while every run said "added"."""
    names = ["alice", "bob", "carol", "dave"]
    start = threading.Barrier(len(names))

    def add(name: str) -> bool:
        users = UsersFile(tmp_path / "users")  # one command's own
        start.wait()
        return users.add(name, f"pw-{name}")

    with ThreadPoolExecutor(len(names)) as pool:
        assert list(pool.map(add, names)) == [True] * 4
    assert UsersFile(tmp_path / "users").names() == names


def test_a_linked_users_file_stays_a_link_and_keeps_its_comments(tmp_path: Path) -> None:
    """`auth.users_file` linked into a config repository: the link was replaced by a file
    (the repository's never got the user), and the operator's comments were dropped."""
    real = tmp_path / "config-repo" / "users"
    real.parent.mkdir()
    real.write_text(f"# the ops team\nalice:{hash_password('a')}\n\n# robots\n")
    link = tmp_path / "users"
    link.symlink_to(real)

    users = UsersFile(link)
    assert users.add("ci-bot", "b") and users.remove("alice")

    assert link.is_symlink()
    text = real.read_text()
    assert text.startswith("# the ops team\n") and "\n# robots\nci-bot:$argon2" in text
    assert UsersFile(link).names() == ["ci-bot"]


@pytest.mark.parametrize("name", ["", "Alice", "a:b", "-x", "a" * 65, "a b"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        UsersFile(tmp_path / "users").add(name, "pw")


def test_another_process_changing_the_file_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "users"
    running = UsersFile(path)
    UsersFile(path).add("alice", "pw")
    assert running.exists("alice")
    UsersFile(path).remove("alice")
    assert not running.exists("alice")


def _cost(stored: str) -> str:
    """A hash's scheme and cost: ``$2b$05`` or ``$argon2id$v=19$m=65536,t=3,p=4``."""
    return stored.rsplit("$", 2)[0] if stored.startswith("$argon2") else stored[:6]


@pytest.mark.parametrize(
    "stored",
    [
        bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5)).decode(),  # `htpasswd -B`'s default cost
        bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=6, prefix=b"2a")).decode(),
        "$argon2id$v=19$m=8192,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "1ZbSq0sBkzD0tqQXH8BOqvd8sPjb5jQGwnsZdTx+aQs",
    ],
)
def test_an_unknown_name_costs_what_the_files_users_cost(
    tmp_path: Path, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name was checked against an argon2id dummy whatever the file held: with the
    bcrypt hashes ``htpasswd -B`` writes (cost 5), a known name answered in ~4 ms and an
    unknown one in ~400 ms (measured in the commit), which told every name apart. Now the
    dummy has the scheme and cost of the file's hashes."""
    (tmp_path / "users").write_text(f"alice:{stored}\nbob:{stored}\n")
    users = UsersFile(tmp_path / "users")
    import docxy.access.users as module

    checked: list[str] = []
    real = module.verify_hash

    def recording(hashed: str, password: str) -> bool:
        checked.append(hashed)
        return real(hashed, password)

    monkeypatch.setattr(module, "verify_hash", recording)
    assert not users.check("nobody", "pw")
    assert [_cost(h) for h in checked] == [_cost(stored)]
    assert checked[0] != stored  # a dummy, not one of the users' hashes


def mixed_costs(path: Path) -> list[str]:
    """Two users of bcrypt cost 4 (the usual), one of cost 5: what ``htpasswd -B`` and
    ``htpasswd -B -C 5`` write into one file."""
    stored = [bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=r)).decode() for r in (4, 4, 5)]
    names = ("al9", "bo9", "cy9")
    path.write_text("".join(f"{name}:{h}\n" for name, h in zip(names, stored, strict=True)))
    return stored


def test_a_file_that_mixes_costs_is_warned_of_at_each_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown name is checked at the usual cost, so a user of a rarer one answers in
    another time: the operator is told how many and how to even them out (it was silent)."""
    stored = mixed_costs(tmp_path / "users")
    users = UsersFile(tmp_path / "users")
    with caplog.at_level(logging.WARNING, logger="docxy.access.users"):
        for _ in range(3):
            assert not users.check("nobody", "pw")
            assert users.check("cy9", "pw")
    (warning,) = [r.getMessage() for r in caplog.records]  # once, not at every check
    assert "1 of 3 users" in warning and "bcrypt cost 4" in warning
    assert f"htpasswd -B -C 4 {tmp_path / 'users'} NAME" in warning
    assert not any(h in warning or h[7:] in warning for h in stored)  # no hash, no salt
    assert not any(name in warning for name in ("al9", "bo9", "cy9"))
    UsersFile(tmp_path / "users").remove("al9")  # `docxy users rm`: the mirror reloads...
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="docxy.access.users"):
        users.check("nobody", "pw")
    assert ["1 of 2 users" in r.getMessage() for r in caplog.records] == [True]  # ...says again


def test_a_file_of_one_cost_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "users").write_text(f"al:{hash_password('pw')}\nbo:{hash_password('pw')}\n")
    with caplog.at_level(logging.WARNING, logger="docxy.access.users"):
        assert UsersFile(tmp_path / "users").check("al", "pw")
    assert caplog.records == []


def test_the_mirror_warns_of_mixed_costs_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not at the first login, which may come much later."""
    mixed_costs(tmp_path / "users")
    config = load_config({"auth.mode": "users", "auth.dir": str(tmp_path)}, environ={})
    with caplog.at_level(logging.WARNING, logger="docxy.access.users"):
        AccessControl(config).prepare()
    assert ["1 of 3 users" in r.getMessage() for r in caplog.records] == [True]
