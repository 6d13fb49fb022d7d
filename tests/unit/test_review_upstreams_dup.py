"""Review r1 (session 44): two ``[[upstreams]]`` entries of one name in one layer (a copied
table not renamed, ``DOCXY_UPSTREAMS="b.test=URL1,b.test=URL2"``, ``B.test`` beside
``b.test``) were merged silently: one upstream, the second's registry with the first's login,
so the mirror sent the first registry's password to the second's (seen live, with a recording
proxy). A start-up refusal naming the name and where, as for a host claimed twice."""

from __future__ import annotations

import pytest

from docxy.core.errors import ConfigError
from docxy.upstream.settings import load_upstreams

FIRST = "http://127.0.0.1:13652"
SECOND = "http://127.0.0.1:13660"


def test_two_tables_of_one_name_are_refused() -> None:
    tables = [
        {"name": "b.test", "registry": FIRST, "username": "robot", "password": "pw-13652"},
        {"name": "b.test", "registry": SECOND},
    ]
    with pytest.raises(ConfigError) as info:
        load_upstreams(tables, "file m.toml", {}, {})
    said = str(info.value)
    assert "'b.test'" in said and "twice" in said and "file m.toml" in said
    assert "pw-13652" not in said


@pytest.mark.parametrize(
    ("env", "flags", "where"),
    [
        ({"DOCXY_UPSTREAMS": f"b.test={FIRST},b.test={SECOND}"}, {}, "env DOCXY_UPSTREAMS"),
        ({}, {"upstreams": f"b.test={FIRST},B.test={SECOND}"}, "flag"),
    ],
)
def test_a_list_naming_one_upstream_twice_is_refused(
    env: dict[str, str], flags: dict[str, object], where: str
) -> None:
    with pytest.raises(ConfigError, match="twice") as info:
        load_upstreams(None, "", env, flags)
    assert where in str(info.value)


def test_a_name_in_two_layers_still_merges() -> None:
    """A guard: a higher layer naming an upstream of the file again is how its keys are
    overridden (the env's registry wins, the file's login stays)."""
    tables = [{"name": "b.test", "registry": FIRST, "username": "robot", "password": "pw"}]
    env = {"DOCXY_UPSTREAMS": f"b.test={SECOND}"}
    (only,), _ = load_upstreams(tables, "file m.toml", env, {})
    assert only.username == "robot" and str(only.registry).startswith(SECOND)
