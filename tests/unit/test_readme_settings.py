"""The README's settings table against docxy.config: every key it names exists, with the
environment variable, the flag and the default the table gives; every setting is in the table;
and every ``docxy.toml`` example in the README loads.

(test_config.py checks the other way for DOCXY_* names: each one the README or the container
files use is a setting or a documented extra.)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from docxy.cli.main import build_parser, config_from_args
from docxy.config import ENV_ALIASES, OTHER_ENV, SETTINGS, Config, env_name, load_config, shown
from docxy.core.errors import ConfigError
from docxy.tls.context import self_signed
from docxy.upstream.presets import PRESETS
from docxy.upstream.settings import ENV_LIST, ENV_PREFIX, KEYS, SECTION, env_id
from scheduler import settings as scheduler_settings

README = Path(__file__).resolve().parents[2] / "README.md"

# Words the table uses for "nothing set": the config default is then empty (None, "", 0, ()).
NOTHING = {"off", "none", "random", "discovered", "everyone", "all", "from the listener"}


@dataclass(frozen=True)
class Row:
    keys: list[str]
    env: str
    flag: str
    default: str


def table_rows() -> list[Row]:
    section = README.read_text().split("\n## Settings\n")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        key_cell, env, flag, default = cells[:4]
        if key_cell.startswith("`upstreams"):  # the upstreams list: docxy.upstream.settings
            continue
        rows.append(Row(expand_keys(key_cell), env, flag, default))
    return rows


def expand_keys(cell: str) -> list[str]:
    """`a.b` / `c` and `a.b`, `a.c`: full keys (a bare name is in the section before it)."""
    keys: list[str] = []
    for name in re.findall(r"`([a-z0-9_.]+)`", cell):
        if "." not in name:
            name = f"{keys[-1].split('.')[0]}.{name}"
        keys.append(name)
    return keys


ROWS = table_rows()
ROW_KEYS = [key for row in ROWS for key in row.keys]


def default_of(key: str, environ: dict[str, str] | None = None) -> object:
    section, name = key.split(".")
    config: Config = load_config(environ={} if environ is None else environ)
    return getattr(getattr(config, section), name)


def is_empty(value: object) -> bool:
    if value is None or value in ("", 0, False):
        return True
    if dataclasses.is_dataclass(value):  # Networks, Patterns: empty tuples inside
        return all(is_empty(v) for v in dataclasses.astuple(value))  # type: ignore[arg-type]
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def test_the_table_was_read() -> None:
    assert len(ROWS) > 40 and "server.listen" in ROW_KEYS and "scheduler.retry_max" in ROW_KEYS


def test_every_setting_is_in_the_table_once() -> None:
    settings = {f"{section}.{key}" for section, keys in SETTINGS.items() for key in keys}
    assert sorted(settings - set(ROW_KEYS)) == [], "settings the README's table does not name"
    assert sorted(set(ROW_KEYS) - settings) == [], "keys in the README's table that do not exist"
    assert len(ROW_KEYS) == len(set(ROW_KEYS))


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.keys[0])
def test_the_environment_column_names_each_keys_variable(row: Row) -> None:
    names = re.findall(r"`(DOCXY_[A-Z0-9_]+\*?|_[A-Z0-9_]+)`", row.env)
    assert names, row.env
    if names[0].endswith("*"):  # DOCXY_CERTS_*: a whole section
        assert all(env_name(key).startswith(names[0][:-1]) for key in row.keys), row
        return
    main = [n for n in names if f"(or `{n}`)" not in row.env]
    # `DOCXY_LIMITS_FILLS_PER_CLIENT` / `_FILLS_TOTAL`: the second in the same section
    sections = [f"DOCXY_{key.split('.')[0].upper()}" for key in row.keys]
    full = [n if n.startswith("DOCXY_") else s + n for n, s in zip(main, sections, strict=True)]
    assert full == [env_name(key) for key in row.keys], row.env
    for alias in set(names) - set(main):
        assert ENV_ALIASES[alias] == row.keys[0]


@pytest.mark.parametrize("row", [r for r in ROWS if r.flag], ids=lambda row: row.keys[0])
def test_the_flag_column_sets_that_key(row: Row, tmp_path: Path) -> None:
    flags = re.findall(r"`(--[a-z0-9-]+)`", row.flag)
    assert len(flags) == len(row.keys), row
    for flag, key in zip(flags, row.keys, strict=True):
        section, name = key.split(".")
        if row.flag.endswith("¹"):  # the renewer's flags
            option = scheduler_settings.build_parser()._option_string_actions[flag]
            assert option.dest == name and name in scheduler_settings.FLAG_KEYS, (flag, key)
            continue
        cert, key_file = self_signed(tmp_path, "flag.example")
        value = {
            "server.listen": "127.0.0.1:5000",
            "server.tls_listen": "127.0.0.1:5443",
            "server.public_url": "https://flag.example",
            "upstream.registry": "https://registry.flag.example",
            "upstream.auth_realm": "https://auth.flag.example/token",
            "tls.cert_path": str(cert),
            "tls.key_path": str(key_file),
            "cache.dir": str(tmp_path / "cache"),
            "log.level": "DEBUG",
        }.get(key)
        argv = ["serve", flag] if value is None else ["serve", flag, value]
        if section == "tls":  # the certificate and its key are given together
            argv += ["--key", str(key_file)] if name == "cert_path" else ["--cert", str(cert)]
        config = config_from_args(build_parser().parse_args(argv))
        got = getattr(getattr(config, section), name)
        if value is None:  # --no-cache, --no-library-prefix: a true default turned off
            assert default_of(key) is True and got is False, (flag, key)
        else:
            assert str(got) == value, (flag, key, got)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.keys[0])
def test_the_default_column_is_the_default(row: Row) -> None:
    texts = [t.strip() for t in row.default.split(" / ")]
    if len(texts) == 1:
        texts *= len(row.keys)
    assert len(texts) == len(row.keys), row
    for key, text in zip(row.keys, texts, strict=True):
        section, name = key.split(".")
        actual = default_of(key)
        if key == "cache.dir":
            assert text == "`$XDG_CACHE_HOME/docxy`"
            assert default_of(key, {"XDG_CACHE_HOME": "/x"}) == Path("/x/docxy")
        elif key == "auth.dir":
            assert text == "`docxy-access` beside `cache.dir`"
            assert actual == default_of("cache.dir").parent / "docxy-access"  # type: ignore[attr-defined]
        elif key == "auth.users_file":
            assert text == "`users` in `auth.dir`"
            assert actual == default_of("auth.dir") / "users"  # type: ignore[operator]
        elif key == "server.public_url":
            assert text == "from the listener"
            assert actual == f"http://{default_of('server.listen')}"
        elif text in NOTHING:
            assert is_empty(actual), (key, text, actual)
        else:
            literal = re.fullmatch(r"`([^`]+)`", text)
            assert literal, (key, text)
            parser = SETTINGS[section][name][0]
            assert actual == parser(literal.group(1)), (key, text, actual)


def test_every_docxy_toml_example_loads(tmp_path: Path) -> None:
    """Each ```toml block of the README that is a docxy.toml (not a containerd hosts.toml)."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    checked = 0
    for number, block in enumerate(blocks):
        text = re.sub(r"^\s+", "", block, flags=re.M)
        if '[host."' in text:  # containerd's hosts.toml
            continue
        path = tmp_path / f"example{number}.toml"
        path.write_text(text)
        try:
            # The [shared] example leaves its secret to the environment, as it advises.
            secret = {"DOCXY_SHARED_SECRET_KEY": "from-env"} if "[shared]" in text else {}
            load_config(config_file=path, environ=secret)
        except ConfigError as exc:  # the example's certificate (or CA) is not on this machine
            said = r"(tls\.(cert|key)_path|upstreams?\.([a-z0-9.-]+\.)?ca_file): cannot read "
            if not re.match(said, str(exc)):
                raise
        checked += 1
    assert checked >= 5


def test_the_settings_section_names_every_docxy_variable_that_is_not_a_setting() -> None:
    """It says every DOCXY_* variable must be a setting, an alias, or one of those it lists:
    a name it leaves out reads as one that stops start-up."""
    section = README.read_text().split("\n## Settings\n")[1].split("\n| key |")[0]
    named = set(re.findall(r"`(DOCXY_[A-Z0-9_]+)`", section))
    assert sorted(OTHER_ENV - named) == []


def upstreams_rows() -> list[list[str]]:
    section = README.read_text().split("\n## Settings\n")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| `upstreams")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def test_the_upstreams_rows_give_its_keys_variables_and_flags() -> None:
    """The two ``upstreams`` rows (docxy.upstream.settings, not the settings table)."""
    listing, keys = upstreams_rows()
    assert listing[:3] == [f"`{SECTION}`", f"`{ENV_LIST}`", "`--upstreams`"]
    argv = ["serve", "--upstreams", "ghcr.io", "--set", "upstreams.ghcr.io.hosts=ghcr.example"]
    config = config_from_args(build_parser().parse_args(argv))
    assert [(u.name, u.hosts) for u in config.upstreams] == [("ghcr.io", ("ghcr.example",))]
    named = re.findall(r"`(?:upstreams\.<name>\.)?([a-z_]+)`", keys[0])
    assert sorted(named) == sorted(KEYS)
    assert keys[1].startswith(f"`{ENV_PREFIX}<ID>_<KEY>`") and "`GHCR_IO`" in keys[1]
    assert env_id("ghcr.io") == "GHCR_IO"


def test_the_presets_the_readme_lists_are_the_presets() -> None:
    section = README.read_text().split("\n## Several upstreams\n")[1].split("```")[0]
    listed = re.findall(r"`([a-z0-9.-]+\.[a-z]+)`", section.split("single line enables")[1])
    assert sorted(listed) == sorted(PRESETS)


def meanings() -> dict[str, str]:
    """Each single-key row's key → its meaning column."""
    section = README.read_text().split("\n## Settings\n")[1].split("\n## ")[0]
    found = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and not cells[0].startswith("`upstreams"):
            keys = expand_keys(cells[0])
            if len(keys) == 1:
                found[keys[0]] = cells[4]
    return found


RANGES = {
    key: (int(low), int(high))
    for key, text in meanings().items()
    for low, high in re.findall(r"(?<![\w/.-])(\d+)-(\d+)(?![\w/.-])", text)
}


def test_the_ranges_the_meanings_give_were_found() -> None:
    assert {"shared.uploads", "auth.token_ttl", "scheduler.hour"} <= set(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_a_range_the_meaning_column_gives_is_the_one_the_setting_takes(key: str) -> None:
    """``(1-64)``, ``hour 0-11``: both ends load, one past the top does not, nor one below the
    bottom unless the row names that value apart (``0`` refuses h2c)."""
    low, high = RANGES[key]
    section, name = key.split(".")
    parser = SETTINGS[section][name][0]
    assert parser(str(low)) == low and parser(str(high)) == high
    with pytest.raises(ValueError):
        parser(str(high + 1))
    if low > 0 and f"`{low - 1}`" not in meanings()[key]:
        with pytest.raises(ValueError):
            parser(str(low - 1))


def nothing_defaults() -> list[tuple[str, str]]:
    """(key, word) for each key whose default column says nothing is set (``off``, ...)."""
    pairs = []
    for row in ROWS:
        texts = [t.strip() for t in row.default.split(" / ")]
        texts *= len(row.keys) if len(texts) == 1 else 1
        pairs += [(key, text) for key, text in zip(row.keys, texts, strict=True) if text in NOTHING]
    return [(key, text) for key, text in pairs if text != "from the listener"]


@pytest.mark.parametrize(("key", "text"), nothing_defaults())
def test_show_config_says_a_default_of_nothing_as_the_table_does(key: str, text: str) -> None:
    """``--show-config`` prints ``(off)`` where the default column says off, and so on: a
    limit that is off by default showed ``0``, which reads as no requests at all."""
    assert shown(key, default_of(key)) == f"({text})"
