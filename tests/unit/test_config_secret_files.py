"""A secret setting read from a file (compose ``secrets:``, mounted at ``/run/secrets/NAME``), so
that its value is not in the container's environment for ``docker inspect`` to show.

Every secret setting (``SECRET_KEYS``: ``upstream.password``, ``shared.secret_key``) has a
companion ``<key>_file`` in every layer: ``DOCXY_UPSTREAM_PASSWORD_FILE``, ``[upstream]
password_file``, ``--set upstream.password_file=``. The file's text, trailing newlines stripped,
is the value; the value and its file in one layer are refused; a file that cannot be read stops
start-up naming its path, never its contents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docxy.cli.main import main
from docxy.config import Config, describe, load_config
from tests.unavailable import need_binary
from tests.unit.test_config import config_error as one_line_error
from tests.unit.test_config import write_toml

SECRET = "s3cr3t Pa55#word"  # a space and a '#' inside, as a generated password may hold
SHARED = {
    "DOCXY_SHARED_ENDPOINT": "http://127.0.0.1:9",
    "DOCXY_SHARED_BUCKET": "docxy-blobs",
    "DOCXY_SHARED_ACCESS_KEY": "AKIAEXAMPLE",
}


def secret_file(tmp_path: Path, text: str = SECRET + "\n", name: str = "secret") -> Path:
    return write_toml(tmp_path, text, name)  # any text: the secret's


def config_error(
    overrides: dict[str, object] | None = None,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """The one-line ConfigError (test_config's), which never holds the secret."""
    message = one_line_error(overrides, config_file, environ)
    assert SECRET not in message
    return message


def sources(config: Config) -> dict[str, tuple[str, str]]:
    return {key: (value, source) for key, value, source in describe(config)}


# --- the environment ---------------------------------------------------------------------------


def test_upstream_password_from_a_file_named_by_the_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    environ = {"DOCXY_UPSTREAM_USERNAME": "bob", "DOCXY_UPSTREAM_PASSWORD_FILE": str(path)}
    config = load_config(environ=environ)
    assert config.upstream.password == SECRET  # the trailing newline is not part of it
    shown = sources(config)["upstream.password"]
    assert shown == ("(set)", "env DOCXY_UPSTREAM_PASSWORD_FILE")
    assert SECRET not in repr(describe(config)) and SECRET not in repr(config)


def test_shared_secret_key_from_a_file_named_by_the_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET + "\r\n")  # written on Windows
    config = load_config(environ=SHARED | {"DOCXY_SHARED_SECRET_KEY_FILE": str(path)})
    assert config.shared.secret_key == SECRET
    shown = sources(config)["shared.secret_key"]
    assert shown == ("(set)", "env DOCXY_SHARED_SECRET_KEY_FILE")


def test_a_file_without_a_trailing_newline_is_read_whole(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET)
    environ = {"DOCXY_UPSTREAM_USERNAME": "bob", "DOCXY_UPSTREAM_PASSWORD_FILE": str(path)}
    assert load_config(environ=environ).upstream.password == SECRET


@pytest.mark.parametrize(
    "name", ["DOCXY_UPSTREAM_PASSWORD", "DOCXY_SHARED_SECRET_KEY"], ids=["password", "secret_key"]
)
def test_a_value_and_its_file_together_are_refused_naming_both(tmp_path: Path, name: str) -> None:
    path = secret_file(tmp_path)
    environ = SHARED | {"DOCXY_UPSTREAM_USERNAME": "bob", name: SECRET, f"{name}_FILE": str(path)}
    message = config_error(environ=environ)
    assert f"env {name} " in message and f"env {name}_FILE" in message
    assert "not both" in message


def test_an_empty_variable_beside_its_file_stands_aside(tmp_path: Path) -> None:
    """As the official images' ``file_env`` does: only two non-empty ones conflict (an .env
    keeps ``DOCXY_UPSTREAM_PASSWORD=`` as a placeholder)."""
    path = secret_file(tmp_path)
    environ = {
        "DOCXY_UPSTREAM_USERNAME": "bob",
        "DOCXY_UPSTREAM_PASSWORD": "",
        "DOCXY_UPSTREAM_PASSWORD_FILE": str(path),
    }
    assert load_config(environ=environ).upstream.password == SECRET
    environ |= {"DOCXY_UPSTREAM_PASSWORD": SECRET, "DOCXY_UPSTREAM_PASSWORD_FILE": ""}
    assert load_config(environ=environ).upstream.password == SECRET


def test_a_missing_file_names_its_path_and_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "secrets" / "upstream_password"
    environ = {"DOCXY_UPSTREAM_USERNAME": "bob", "DOCXY_UPSTREAM_PASSWORD_FILE": str(missing)}
    assert config_error(environ=environ) == (
        f"upstream.password: cannot read {missing}: No such file or directory "
        "(env DOCXY_UPSTREAM_PASSWORD_FILE)"
    )


#: Loads the settings from this environment; prints the error and exits 3 if they fail.
LOAD = (
    "import os, sys\n"
    "from docxy.config import load_config\n"
    "from docxy.core.errors import ConfigError\n"
    "try:\n"
    "    load_config(environ=os.environ)\n"
    "except ConfigError as exc:\n"
    "    print(exc)\n"
    "    sys.exit(3)\n"
)


def test_an_unreadable_file_names_its_path_and_who_could_not_read_it(tmp_path: Path) -> None:
    """As a secret file owned by another user, mode 0400, reads in the container."""
    path = secret_file(tmp_path)
    path.chmod(0)
    environ = SHARED | {"DOCXY_SHARED_SECRET_KEY_FILE": str(path)}
    argv = [sys.executable, "-c", LOAD]
    if os.access(path, os.R_OK):  # root: without the capabilities that read any file
        setpriv = need_binary("setpriv")  # root reads a file of mode 000 unless it stops that
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *argv]
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    result = subprocess.run(
        argv, env=base | environ, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert message == (
        f"shared.secret_key: cannot read {path}: Permission denied (this process runs as uid "
        f"{os.getuid()}) (env DOCXY_SHARED_SECRET_KEY_FILE)"
    )


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    environ = {"DOCXY_UPSTREAM_USERNAME": "bob", "DOCXY_UPSTREAM_PASSWORD_FILE": str(tmp_path)}
    message = config_error(environ=environ)
    assert message.startswith(f"upstream.password: cannot read {tmp_path}: ")


#: Files that hold no secret, and what the error says of each (the named upstreams' tests too).
NO_SECRET = {
    "empty": (b"\n", "is empty"),
    "binary": (SECRET.encode() + b"\xff\xfe", "is not UTF-8 text"),
    "huge": (SECRET.encode() * 8192, "is over 64 KiB"),
}


@pytest.mark.parametrize(("content", "said"), NO_SECRET.values(), ids=NO_SECRET.keys())
def test_a_file_that_holds_no_secret_is_refused_without_showing_it(
    tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    environ = {"DOCXY_UPSTREAM_USERNAME": "bob", "DOCXY_UPSTREAM_PASSWORD_FILE": str(path)}
    message = config_error(environ=environ)
    assert message.startswith(f"upstream.password: {path} {said}")
    assert message.endswith("(env DOCXY_UPSTREAM_PASSWORD_FILE)")


def test_a_secret_from_a_file_is_checked_like_any_other_and_not_shown(tmp_path: Path) -> None:
    """A secret from a file is checked like any other value of it, and as hidden."""
    path = secret_file(tmp_path)
    message = config_error(environ={"DOCXY_UPSTREAM_PASSWORD_FILE": str(path)})
    assert message.startswith("upstream.username: ")  # the password goes with a username


# --- the TOML file and flags -------------------------------------------------------------------


def test_password_file_in_the_toml_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    toml = tmp_path / "docxy.toml"
    toml.write_text(f'[upstream]\nusername = "bob"\npassword_file = "{path}"\n')
    config = load_config(config_file=toml, environ={})
    assert config.upstream.password == SECRET
    assert sources(config)["upstream.password"] == ("(set)", f"file {toml}")


def test_secret_key_file_in_the_toml_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    toml = tmp_path / "docxy.toml"
    toml.write_text(f'[shared]\nsecret_key_file = "{path}"\n')
    assert load_config(config_file=toml, environ=SHARED).shared.secret_key == SECRET


def test_password_and_password_file_in_one_toml_table_are_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    toml = tmp_path / "docxy.toml"
    toml.write_text(
        f'[upstream]\nusername = "bob"\npassword = "{SECRET}"\npassword_file = "{path}"\n'
    )
    message = config_error(config_file=toml)
    assert message.startswith("upstream.password: ")
    assert "password_file" in message and f"file {toml}" in message


def test_a_higher_layer_wins_and_the_lower_ones_file_is_not_read(tmp_path: Path) -> None:
    toml = tmp_path / "docxy.toml"
    toml.write_text(f'[upstream]\nusername = "bob"\npassword_file = "{tmp_path / "gone"}"\n')
    environ = {"DOCXY_UPSTREAM_PASSWORD": SECRET}
    config = load_config(config_file=toml, environ=environ)
    assert config.upstream.password == SECRET
    assert sources(config)["upstream.password"] == ("(set)", "env DOCXY_UPSTREAM_PASSWORD")
    # and the other way round: the environment's file over the TOML file's value
    path = secret_file(tmp_path, "from-the-file\n")
    toml.write_text(f'[upstream]\nusername = "bob"\npassword = "{SECRET}"\n')
    config = load_config(config_file=toml, environ={"DOCXY_UPSTREAM_PASSWORD_FILE": str(path)})
    assert config.upstream.password == "from-the-file"


def test_password_file_as_a_flag(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    flags = {"upstream.username": "bob", "upstream.password_file": str(path)}
    config = load_config(flags, environ={"DOCXY_UPSTREAM_PASSWORD": "overridden"})
    assert config.upstream.password == SECRET
    assert sources(config)["upstream.password"] == ("(set)", "flag")


def test_show_config_names_the_variable_not_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("DOCXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_UPSTREAM_USERNAME", "bob")
    monkeypatch.setenv("DOCXY_UPSTREAM_PASSWORD_FILE", str(secret_file(tmp_path)))
    assert main(["serve", "--show-config"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "upstream.password = (set)  (env DOCXY_UPSTREAM_PASSWORD_FILE)" in out.splitlines()


# --- only the secrets take a file --------------------------------------------------------------


def test_a_setting_that_is_not_secret_takes_no_file(tmp_path: Path) -> None:
    """A ``_FILE`` for every setting would read ``DOCXY_AUTH_USERS_FILE`` (the setting
    ``auth.users_file``) two ways; values that are not secret belong in the TOML file."""
    message = config_error(environ={"DOCXY_SERVER_LISTEN_FILE": str(secret_file(tmp_path))})
    assert message.startswith("server.listen_file: unknown key (env DOCXY_SERVER_LISTEN_FILE)")
    assert "upstream.password_file" in message and "shared.secret_key_file" in message
    users = tmp_path / "users"
    config = load_config(environ={"DOCXY_AUTH_USERS_FILE": str(users)})
    assert config.auth.users_file == users
