"""``docxy users``, ``docxy clients`` and ``docxy tokens`` through ``main(argv)``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from docxy.access.clientca import ClientCA
from docxy.access.users import UsersFile
from docxy.cli.main import main


@pytest.fixture
def auth_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_AUTH_DIR", str(tmp_path / "access"))
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "access"


def test_users_add_list_rm(
    auth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["users", "add", "alice", "--password-stdin"]) == 0
    assert UsersFile(auth_dir / "users").check("alice", "s3cret")
    assert "s3cret" not in capsys.readouterr().out
    assert main(["users", "list"]) == 0
    assert capsys.readouterr().out == "alice\n"
    assert main(["users", "rm", "alice"]) == 0
    assert main(["users", "rm", "alice"]) == 1
    assert "no user alice" in capsys.readouterr().err


def test_users_add_refuses_bad_names_and_empty_passwords(
    auth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["users", "add", "Bad:Name", "--password-stdin"]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["users", "add", "bob", "--password-stdin"]) == 1
    assert "empty password" in capsys.readouterr().err
    assert not (auth_dir / "users").exists()


def test_users_add_prompts_twice(auth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["users", "add", "carol"]) == 1  # the passwords differ
    answers = iter(["same", "same"])
    assert main(["users", "add", "carol"]) == 0
    assert UsersFile(auth_dir / "users").check("carol", "same")


def test_clients_add_list_rm(
    auth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["clients", "add", "ci", "--out", str(tmp_path / "kit")]) == 0
    assert sorted(p.name for p in (tmp_path / "kit").iterdir()) == [
        "ca.crt",
        "client.cert",
        "client.key",
    ]
    capsys.readouterr()
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.startswith("ci\tserial ")
    assert main(["clients", "rm", "ci"]) == 0
    assert ClientCA(auth_dir).entries() == {}
    assert main(["clients", "rm", "ci"]) == 1


def test_clients_rm_removes_the_kit_it_left_beside_the_ca(
    auth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``clients add NAME`` without ``--out`` leaves the kit, its private key included, in
    ``auth.dir/kits/NAME`` (the certs volume, in the image); ``clients rm`` revoked the
    certificate and left that key there. It removes the kit's three files and its directory;
    a file the user put beside them is kept, and the directory with it."""
    assert main(["clients", "add", "ci"]) == 0
    assert main(["clients", "add", "keep"]) == 0
    kit, kept = auth_dir / "kits" / "ci", auth_dir / "kits" / "keep"
    assert (kit / "client.key").exists()
    (kept / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["clients", "rm", "ci"]) == 0
    assert not kit.exists()
    assert str(kit) in capsys.readouterr().out
    assert main(["clients", "rm", "keep"]) == 0
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    assert (auth_dir / "kits").is_dir()  # the other kits' place stays
    assert main(["clients", "add", "ci"]) == 0  # the name can be issued again
    assert (kit / "client.key").exists()


def test_clients_rm_that_cannot_delete_the_kit_still_revokes_and_says_so(
    auth_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kit it may not delete (left root's by an older root run): the revoke stands, so
    ``rm`` says which file is left and exits 0; it failed with the bare EACCES (exit 1) after
    revoking, and a rerun then said ``no client``."""
    assert main(["clients", "add", "ci"]) == 0
    key = auth_dir / "kits" / "ci" / "client.key"
    real_unlink = Path.unlink

    def refused(path: Path, missing_ok: bool = False) -> None:
        if path == key:
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    capsys.readouterr()
    assert main(["clients", "rm", "ci"]) == 0
    said = capsys.readouterr()
    assert "revoked ci" in said.out
    assert str(key) in said.err and "Permission denied" in said.err
    assert ClientCA(auth_dir).entries() == {}


def test_tokens_rotate(auth_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "rotate"]) == 0
    assert (auth_dir / "token-key.pem").exists() and (auth_dir / "token-key.previous.pem").exists()
    # the previous key honours only the tokens it signed, for their lifetime (auth.token_ttl)
    assert "count for 300s at most" in capsys.readouterr().out


def test_tokens_rotate_over_an_unreadable_key_is_one_line_and_changes_nothing(
    auth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It retired the garbage (then verified by the mirror for the grace, failing its token
    checks) and ended in a traceback."""
    auth_dir.mkdir(parents=True, exist_ok=True)
    (auth_dir / "token-key.pem").write_text("not a key\n")
    assert main(["tokens", "rotate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token-key.pem" in err and "Traceback" not in err
    assert (auth_dir / "token-key.pem").read_text() == "not a key\n"
    assert not (auth_dir / "token-key.previous.pem").exists()


def test_bad_config_is_exit_2(auth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCXY_AUTH_MODE", "nobody")
    assert main(["users", "list"]) == 2


def test_settings_go_before_and_after_the_action(
    auth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docxy users list --set auth.dir=...`` was "unrecognized arguments" (exit 2), where
    ``docxy cache du --set ...`` takes it there; given on both sides, the later one wins."""
    first, second = tmp_path / "first", tmp_path / "second"
    UsersFile(second / "users").add("bob", "s3cret")
    assert main(["users", "list", "--set", f"auth.dir={second}"]) == 0
    assert capsys.readouterr().out == "bob\n"
    before, after = ["--set", f"auth.dir={first}"], ["--set", f"auth.dir={second}"]
    assert main(["users", *before, "list", *after]) == 0
    assert capsys.readouterr().out == "bob\n"
    assert main(["users", *after, "list", *before]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("after", [False, True])
def test_the_config_file_goes_before_or_after_the_action(
    auth_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    after: bool,
) -> None:
    """``docxy users add alice --config m.toml`` was "unrecognized arguments" (exit 2), where
    ``docxy cache ls --config m.toml`` takes it there."""
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "m.toml"
    config.write_text(f'[auth]\ndir = "{elsewhere}"\n')
    monkeypatch.delenv("DOCXY_AUTH_DIR")
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    given = ["--config", str(config)]
    add = ["add", "alice", "--password-stdin"]
    assert main(["users", *add, *given] if after else ["users", *given, *add]) == 0
    assert UsersFile(elsewhere / "users").check("alice", "s3cret")
    capsys.readouterr()
    assert main(["users", "list", *given] if after else ["users", *given, "list"]) == 0
    assert capsys.readouterr().out == "alice\n"
