"""Review of the settings and how they are shown (review-settings).

1. Durations: every setting that is a number of seconds also takes a unit (``30s``, ``5m``,
   ``2h``, ``7d``) in TOML, env and flags, through one parser in ``docxy.core.durations``; a
   refusal names the setting, the value and the forms taken.
2. ``--show-config`` hides the arguments of the renewer's commands (``scheduler.reload_command``,
   ``scheduler.deploy_hook``): they may carry a token or a password.
3. ``--show-config`` says where a derived ``server.public_url`` came from, not ``(default)``.
4. Refusals that told a user nothing: a path with ``~user`` of no such user (a traceback), a NUL
   byte in a path (a traceback), a secret of the wrong TOML type (``(hidden)`` alone).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from docxy.cli.options import seconds
from docxy.config import SETTINGS, describe, load_config
from docxy.core.errors import ConfigError
from scheduler import settings as scheduler_settings
from tests.unit.test_cli import show
from tests.unit.test_config import config_error, write_toml
from tests.unit.test_readme_settings import README, meanings

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

#: Every setting whose value is a number of seconds.
DURATIONS = (
    "upstream.connect_timeout",
    "upstream.read_timeout",
    "cache.tag_ttl",
    "cache.room_wait",
    "limits.idle_timeout",
    "limits.send_timeout",
    "auth.token_ttl",
    "auth.key_grace",
    "scheduler.interval",
    "scheduler.retry_base",
    "scheduler.retry_max",
    "scheduler.certbot_timeout",
)
FORMS = "30s, 5m, 2h, 7d"

FAULT1 = pytest.mark.xfail(strict=True, reason="durations take a bare number only")
FAULT2 = pytest.mark.xfail(strict=True, reason="--show-config prints a command in full")
FAULT3 = pytest.mark.xfail(strict=True, reason="a derived public_url shows as (default)")
FAULT4 = pytest.mark.xfail(strict=True, reason="a refusal that tells nothing, or a traceback")


def parse_duration(value: object, **limits: object) -> float:
    from docxy.core.durations import parse_duration as parse

    return parse(value, **limits)  # type: ignore[arg-type]


# --- 1. durations ------------------------------------------------------------------------------


def test_the_duration_list_is_every_setting_the_readme_gives_in_seconds() -> None:
    """A setting the table's meaning column counts in seconds is one of DURATIONS, and back."""
    in_seconds = {
        key
        for key, text in meanings().items()
        if text.startswith("seconds") or "every N seconds" in text
    }
    in_seconds |= {"scheduler.retry_base", "scheduler.retry_max"}  # one row of two keys
    assert sorted(in_seconds) == sorted(DURATIONS)
    assert all(key.partition(".")[2] in SETTINGS[key.partition(".")[0]] for key in DURATIONS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", 90.0),
        (" 2.5 ", 2.5),
        ("1e3", 1000.0),
        ("+5", 5.0),
        (90, 90.0),
        (2.5, 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        (" 10 s ", 10.0),
        (".5m", 30.0),
    ],
)
def test_a_duration_is_seconds_or_a_number_with_a_unit(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        "5x",
        "5ms",
        "m",
        "",
        "  ",
        "5m5",
        "h1",
        "-5m",
        "1h-30m",
        "5 minutes",
        "1m1m",
        True,
        [5],
        "nan",
    ],
)
def test_what_is_no_duration_is_refused_saying_the_forms(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    message = str(info.value)
    assert repr(value) in message and "(seconds)" in message and FORMS in message, message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "positive"),
        ("0s", "positive"),
        ("-1", "positive"),
        ("inf", "finite"),
        ("1e999", "finite"),
    ],
)
def test_no_length_of_time_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_duration(value)
    assert FORMS in str(info.value)


def test_the_limits_a_duration_takes() -> None:
    assert parse_duration("0", zero=True) == 0
    with pytest.raises(ValueError, match=r">= 0"):
        parse_duration("-1", zero=True)
    assert parse_duration("30d", most=30 * 86400.0, why="30 days") == 30 * 86400.0
    with pytest.raises(ValueError, match=r"at most 2592000 seconds \(30 days\), got '31d'"):
        parse_duration("31d", most=30 * 86400.0, why="30 days")


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize("layer", ["toml", "env", "flag"])
def test_every_duration_setting_takes_a_unit_in_every_layer(
    key: str, layer: str, tmp_path: Path
) -> None:
    section, _, name = key.partition(".")
    value, seconds = ("7h", 25200) if key == "scheduler.retry_max" else ("2m", 120)  # >= base
    if layer == "toml":
        config = load_config(config_file=write_toml(tmp_path, f'[{section}]\n{name} = "{value}"\n'))
        source = "file"
    elif layer == "env":
        variable = f"DOCXY_{section.upper()}_{name.upper()}"
        config = load_config(environ={variable: value}, renewer=True)
        source = f"env {variable}"
    else:
        config = load_config({key: value}, environ={}, renewer=True)
        source = "flag"
    assert getattr(getattr(config, section), name) == seconds
    assert config.sources[key].startswith(source)
    assert dict((k, v) for k, v, _ in describe(config))[key] == str(seconds)  # loads back


@pytest.mark.parametrize("key", DURATIONS)
def test_a_bad_duration_names_the_setting_the_value_and_the_forms(key: str) -> None:
    for value in ("5 mins", "soon"):
        message = config_error({key: value}, renewer=True)
        assert message.startswith(f"{key}: ") and message.endswith("(flag)"), message
        assert repr(value) in message and "(seconds)" in message and FORMS in message, message


def test_the_ranges_hold_with_units() -> None:
    assert load_config({"scheduler.interval": "30d"}, environ={}).scheduler.interval == 2592000
    assert "at most 2592000 seconds" in config_error({"scheduler.interval": "31d"}, renewer=True)
    assert load_config({"scheduler.interval": "0s"}, environ={}).scheduler.interval is None
    assert load_config({"auth.token_ttl": "1m"}, environ={}).auth.token_ttl == 60
    assert load_config({"auth.token_ttl": "1d"}, environ={}).auth.token_ttl == 86400
    for value in ("59s", "25h"):
        message = config_error({"auth.token_ttl": value})
        assert "expected seconds between 60 and 86400" in message and repr(value) in message
    base_over_max: dict[str, object] = {"scheduler.retry_base": "2h", "scheduler.retry_max": "1h"}
    assert "above scheduler.retry_max" in config_error(base_over_max, renewer=True)
    certbot = config_error({"scheduler.certbot_timeout": "2d"}, renewer=True)
    assert "at most 86400 seconds (a day)" in certbot


def test_the_renewers_flags_take_units(tmp_path: Path) -> None:
    environ = {"DOCXY_CERTS_CONFIG_DIR": str(tmp_path / "le")}
    argv = [
        "--interval",
        "1h",
        "--retry-base",
        "5m",
        "--retry-max",
        "6h",
        "--certbot-timeout",
        "10m",
    ]
    loaded = scheduler_settings.load(argv, environ)
    assert (loaded.interval, loaded.retry_base, loaded.retry_max) == (3600, 300, 21600)
    assert loaded.certbot_timeout == 600


def test_a_commands_seconds_option_takes_a_unit_too() -> None:
    """``docxy warm --timeout``, ``docxy health --timeout``: the same parser."""
    assert seconds("2m") == 120 and seconds("45") == 45
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(FORMS)):
        seconds("2 fortnights")


def test_the_settings_section_says_durations_take_units_once() -> None:
    section = README.read_text().split("\n## Settings\n")[1].split("\n## ")[0]
    prose, _, table = section.partition("\n| key |")
    said = re.findall(r"`(\d+[smhd])`", prose.split("duration")[1].split("\n\n")[0])
    assert said and all(parse_duration(text) > 0 for text in said)
    assert "`30s`" in prose and "`7d`" in prose
    assert "`5m`" not in table  # said once, above the table


# --- 2. the renewer's commands in --show-config ------------------------------------------------

TOKEN = "tok-3f9a1c"
PASSWORD = "pw-77e2"


@pytest.mark.parametrize("key", ["scheduler.reload_command", "scheduler.deploy_hook"])
def test_show_config_hides_what_a_command_may_carry(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = (
        f"curl -fsS -H 'Authorization: Bearer {TOKEN}' "
        f"https://ops:{PASSWORD}@127.0.0.174:9101/reload?key={TOKEN} --password {PASSWORD}"
    )
    rows = show(capsys, "--set", f"{key}={command}")
    value, source = rows[key]
    assert TOKEN not in value and PASSWORD not in value
    assert source == "flag"
    assert value.startswith("(set: curl") and "hidden" in value, value
    # The command itself is still the one run.
    config = load_config({key: command}, environ={})
    assert getattr(config.scheduler, key.partition(".")[2]) == command


def test_show_config_says_a_command_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    rows = show(capsys, "--set", "scheduler.reload_command=/usr/local/bin/reload-docxy")
    assert rows["scheduler.reload_command"] == ("(set: /usr/local/bin/reload-docxy)", "flag")
    assert show(capsys)["scheduler.reload_command"] == ("(none)", "default")


# --- 3. a derived public_url -------------------------------------------------------------------


def test_show_config_says_a_public_url_from_the_listener_is_derived(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = show(capsys, "--listen", "127.0.0.175:9102")
    assert rows["server.public_url"] == ("http://127.0.0.175:9102", "derived from server.listen")
    assert show(capsys)["server.public_url"][1] == "derived from server.listen"


def test_show_config_says_a_public_url_from_the_tls_listener_and_domain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--tls-listen", "127.0.0.175:9103", "--set", "certs.domain=mirror.test"]
    args += ["--cert", str(tmp_path / "none.pem"), "--key", str(tmp_path / "none.key")]
    rows = show(capsys, *args)
    assert rows["server.public_url"] == (
        "https://mirror.test:9103",
        "derived from server.tls_listen and certs.domain",
    )
    rows = show(capsys, *args, "--public-url", "https://given.test")
    assert rows["server.public_url"] == ("https://given.test", "flag")


# --- 4. refusals that told nothing ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["cache.dir", "certs.webroot", "tls.cert_path"])
def test_a_path_of_an_unknown_users_home_is_a_config_error(key: str) -> None:
    """``~nosuchuser/...`` raised RuntimeError ("Could not determine home directory."): a
    traceback, not a line naming the setting."""
    overrides: dict[str, object] = {key: "~docxy-no-such-user-9/x"}
    if key == "tls.cert_path":
        overrides["tls.key_path"] = "/nonexistent/key.pem"
    message = config_error(overrides)
    assert message.startswith(f"{key}: ") and "docxy-no-such-user-9" in message, message
    assert "full path" in message


def test_a_nul_byte_in_a_path_is_a_config_error() -> None:
    """Taken, it raised ValueError ("embedded null byte") from os.access: a traceback."""
    message = config_error({"tls.cert_path": "/etc/a\x00b", "tls.key_path": "/etc/k"})
    assert message.startswith("tls.cert_path: ") and "NUL" in message, message


@pytest.mark.parametrize(
    ("section", "line", "kind"),
    [
        ("upstream", 'username = "u"\npassword = 12345\n', "integer"),
        ("upstream", 'username = "u"\npassword = true\n', "boolean"),
        ("shared", 'secret_key = ["abc123"]\n', "array"),
    ],
)
def test_a_secret_of_the_wrong_type_says_what_to_write_and_not_the_value(
    section: str, line: str, kind: str, tmp_path: Path
) -> None:
    """It said ``(hidden)`` alone: nothing of what to write."""
    path = write_toml(tmp_path, f"[{section}]\n{line}")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ={})
    message = str(info.value)
    assert "expected a string" in message and kind in message, message
    assert "12345" not in message and "abc123" not in message


def test_a_named_upstreams_password_of_the_wrong_type_says_what_to_write(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        '[[upstreams]]\nname = "lab.example"\nregistry = "http://127.0.0.176:9105"\n'
        'username = "bob"\npassword = 987654\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ={})
    message = str(info.value)
    assert message.startswith("upstreams.lab.example.password: ") and "integer" in message
    assert "expected a string" in message and "987654" not in message
