"""A named upstream's password read from a file (compose ``secrets:``), as ``[upstream]``'s may
be (``tests/unit/test_config_secret_files.py``): ``DOCXY_UPSTREAMS_<ID>_PASSWORD_FILE``,
``password_file`` in an ``[[upstreams]]`` table, ``--set upstreams.<name>.password_file=``.

The same rules: the file's text, trailing newlines stripped, is the password; the password and
its file in one layer are refused naming both, an empty one stands aside; a file is read only if
its layer wins; a file that cannot be read stops start-up naming the key, the path and the
source, never the contents; ``--show-config`` shows ``(set)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from docxy.cli.main import main
from docxy.config import Config, NamedUpstreamConfig, describe, load_config
from docxy.core.errors import ConfigError
from tests.unit.test_config_secret_files import NO_SECRET, SECRET

BASE = {"server.listen": "127.0.0.1:8080"}
LAB = {
    "DOCXY_UPSTREAMS": "lab.example=http://127.0.0.1:5000",
    "DOCXY_UPSTREAMS_LAB_EXAMPLE_USERNAME": "bob",
}
VAR = "DOCXY_UPSTREAMS_LAB_EXAMPLE_PASSWORD"
FILE_VAR = VAR + "_FILE"
KEY = "upstreams.lab.example.password"


def secret_file(tmp_path: Path, text: str = SECRET + "\n", name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(
    environ: dict[str, str],
    flags: Mapping[str, object] | None = None,
    config_file: Path | None = None,
) -> Config:
    return load_config({**BASE, **(flags or {})}, config_file, environ=environ)


def config_error(
    environ: dict[str, str],
    flags: Mapping[str, object] | None = None,
    config_file: Path | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        load(environ, flags, config_file)
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message
    return message


def lab(config: Config) -> NamedUpstreamConfig:
    (upstream,) = [u for u in config.upstreams if u.name == "lab.example"]
    return upstream


def shown(config: Config) -> tuple[str, str]:
    return {key: (value, source) for key, value, source in describe(config)}[KEY]


def write_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "docxy.toml"
    path.write_text(
        '[[upstreams]]\nname = "lab.example"\nregistry = "http://127.0.0.1:5000"\n'
        'username = "bob"\n' + body
    )
    return path


# --- the environment ---------------------------------------------------------------------------


def test_password_from_a_file_named_by_the_environment(tmp_path: Path) -> None:
    config = load(LAB | {FILE_VAR: str(secret_file(tmp_path))})
    assert lab(config).password == SECRET  # the trailing newline is not part of it
    assert lab(config).username == "bob"
    assert shown(config) == ("(set)", f"env {FILE_VAR}")
    assert SECRET not in repr(describe(config)) and SECRET not in repr(config)


def test_a_presets_password_from_a_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET + "\r\n")  # written on Windows
    environ = {
        "DOCXY_UPSTREAMS": "ghcr.io",
        "DOCXY_UPSTREAMS_GHCR_IO_USERNAME": "bob",
        "DOCXY_UPSTREAMS_GHCR_IO_PASSWORD_FILE": str(path),
    }
    (upstream,) = load(environ).upstreams
    assert (upstream.name, upstream.password) == ("ghcr.io", SECRET)


def test_a_value_and_its_file_in_the_environment_are_refused_naming_both(tmp_path: Path) -> None:
    message = config_error(LAB | {VAR: SECRET, FILE_VAR: str(secret_file(tmp_path))})
    assert message == (
        f"{KEY}: set twice (env {VAR} and env {FILE_VAR}): keep the value or its file, not both"
    )


def test_an_empty_variable_beside_its_file_stands_aside(tmp_path: Path) -> None:
    """An .env keeps ``..._PASSWORD=`` as a placeholder beside the ``_FILE``."""
    path = secret_file(tmp_path)
    assert lab(load(LAB | {VAR: "", FILE_VAR: str(path)})).password == SECRET
    config = load(LAB | {VAR: SECRET, FILE_VAR: ""})
    assert lab(config).password == SECRET
    assert shown(config) == ("(set)", f"env {VAR}")


def test_a_missing_file_names_the_key_its_path_and_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "secrets" / "lab_password"
    assert config_error(LAB | {FILE_VAR: str(missing)}) == (
        f"{KEY}: cannot read {missing}: No such file or directory (env {FILE_VAR})"
    )


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    message = config_error(LAB | {FILE_VAR: str(tmp_path)})
    assert message.startswith(f"{KEY}: cannot read {tmp_path}: ")
    assert message.endswith(f"(env {FILE_VAR})")


@pytest.mark.parametrize(("content", "said"), NO_SECRET.values(), ids=NO_SECRET.keys())
def test_a_file_that_holds_no_secret_is_refused_without_showing_it(
    tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    message = config_error(LAB | {FILE_VAR: str(path)})
    assert message.startswith(f"{KEY}: {path} {said}")
    assert message.endswith(f"(env {FILE_VAR})")


def test_a_password_from_a_file_still_needs_its_username(tmp_path: Path) -> None:
    environ = {"DOCXY_UPSTREAMS": "lab.example=http://127.0.0.1:5000"}
    message = config_error(environ | {FILE_VAR: str(secret_file(tmp_path))})
    assert message.startswith("upstreams.lab.example.username: username and password go together")


def test_a_mistyped_file_variable_is_unknown_and_the_right_one_is_named(tmp_path: Path) -> None:
    message = config_error(LAB | {VAR + "_FIEL": str(secret_file(tmp_path))})
    assert message.startswith(f"{VAR}_FIEL: unknown variable (env {VAR}_FIEL)")
    assert "PASSWORD_FILE" in message


# --- the TOML file and flags -------------------------------------------------------------------


def test_password_file_in_an_upstreams_table(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    toml = write_toml(tmp_path, f'password_file = "{path}"\n')
    config = load({}, config_file=toml)
    assert lab(config).password == SECRET
    assert shown(config) == ("(set)", f"file {toml}")


def test_password_and_password_file_in_one_table_are_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    toml = write_toml(tmp_path, f'password = "{SECRET}"\npassword_file = "{path}"\n')
    assert config_error({}, config_file=toml) == (
        f"{KEY}: set twice (password and password_file in [[upstreams]] lab.example of file "
        f"{toml}): keep the value or its file, not both"
    )


def test_a_file_name_that_is_not_a_string_is_refused_naming_the_key(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "password_file = 5\n")
    message = config_error({}, config_file=toml)
    assert message.startswith(f"{KEY}: ") and message.endswith(f"(file {toml})")


def test_a_higher_layer_wins_and_the_lower_ones_file_is_not_read(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, f'password_file = "{tmp_path / "gone"}"\n')
    config = load({VAR: SECRET}, config_file=toml)
    assert lab(config).password == SECRET
    assert shown(config) == ("(set)", f"env {VAR}")
    # and the other way round: the environment's file over the TOML file's value
    path = secret_file(tmp_path, "from-the-file\n")
    toml = write_toml(tmp_path, f'password = "{SECRET}"\n')
    config = load({FILE_VAR: str(path)}, config_file=toml)
    assert lab(config).password == "from-the-file"
    assert shown(config) == ("(set)", f"env {FILE_VAR}")


def test_an_upstream_that_is_not_on_reads_no_file(tmp_path: Path) -> None:
    """The file configures lab.example; the environment's list leaves it out."""
    toml = write_toml(tmp_path, f'password_file = "{tmp_path / "gone"}"\n')
    environ = {"DOCXY_UPSTREAMS": "ghcr.io", FILE_VAR: str(tmp_path / "gone too")}
    assert [u.name for u in load(environ, config_file=toml).upstreams] == ["ghcr.io"]


def test_password_file_as_a_flag(tmp_path: Path) -> None:
    flags = {"upstreams.lab.example.password_file": str(secret_file(tmp_path))}
    config = load(LAB | {VAR: "overridden"}, flags)
    assert lab(config).password == SECRET
    assert shown(config) == ("(set)", "flag")


def test_a_password_and_its_file_as_flags_are_refused(tmp_path: Path) -> None:
    flags = {
        "upstreams.lab.example.password": SECRET,
        "upstreams.lab.example.password_file": str(secret_file(tmp_path)),
    }
    assert config_error(LAB, flags) == (
        f"{KEY}: set twice (flags {KEY} and {KEY}_file): keep the value or its file, not both"
    )


def test_show_config_names_the_variable_not_the_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_docxy_env: None,
) -> None:
    for name, value in (LAB | {FILE_VAR: str(secret_file(tmp_path))}).items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--listen", "127.0.0.1:8080", "--show-config"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert f"{KEY} = (set)  (env {FILE_VAR})" in out.splitlines()
