"""Edges of ``docxy.core.rules`` that mutation testing found untested: the pattern's length limit
as a number (not as the module's own constant, which a change would move along); the
separators a repository name may hold (``_``, ``__``, a run of ``-``, ``.``) in every component
of a pattern, a separator that no name can hold where it stands (ending a component, two in a
row) refused in every component, not in the first one only, and a refused pattern refused at
once, however many ``*`` it holds; ``*`` and ``**`` standing for nothing too; blank items of a
list skipped, an item that is no string a ValueError; patterns and rules as frozen values; the
refusal's words."""

from __future__ import annotations

import dataclasses
import time

import pytest

from docxy.core.rules import RepositoryRules, parse_pattern, parse_patterns


def test_a_pattern_of_255_characters_is_valid() -> None:
    text = "/".join(["a" * 63] * 4)  # 4 * 63 + 3 slashes = 255
    assert len(text) == 255
    assert parse_pattern(text).matches(text)
    assert parse_pattern("a" * 254 + "*").matches("a" * 255)


@pytest.mark.parametrize("text", ["a" * 256, "/".join(["a" * 63] * 4) + "*"])
def test_a_pattern_of_256_characters_is_not(text: str) -> None:
    assert len(text) == 256
    with pytest.raises(ValueError, match="not a repository pattern"):
        parse_pattern(text)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("my_org/*", "my_org/app"),
        ("a__b/*", "a__b/c"),
        ("a--b/*", "a--b/c"),
        ("team-*/**", "team-a/x/y"),
        ("team_*/*", "team_a/x"),
        ("team.*/*", "team.a/x"),
        ("myorg/my.app", "myorg/my.app"),
        ("myorg/my_app", "myorg/my_app"),
        ("myorg/my__app", "myorg/my__app"),
        ("myorg/my---app", "myorg/my---app"),
        ("myorg/app-*", "myorg/app-x"),
        ("ghcr.io/my-org/**", "ghcr.io/my-org/a/b"),
    ],
)
def test_every_separator_a_name_may_hold_is_taken_in_every_component(
    pattern: str, name: str
) -> None:
    assert parse_pattern(pattern).matches(name)


@pytest.mark.parametrize(
    "text",
    [
        "redis-",
        "redis.",
        "_redis",
        "a___b/*",
        "a_-b/*",
        "library/redis-",
        "library/.redis",
        "library/re..dis",
        "library/re_-dis",
        "library/a___b",
        "myorg/-",
        "myorg/_",
        "myorg/**/x.",
    ],
)
def test_a_separator_no_name_holds_there_is_refused_in_every_component(text: str) -> None:
    """Such a pattern can match no repository name: a typo, to stop start-up (the module's
    promise), not a rule that silently serves or denies nothing."""
    with pytest.raises(ValueError, match="not a repository pattern"):
        parse_pattern(text)


@pytest.mark.parametrize("text", ["a" + "*" * 26 + "A", "x/a" + "*" * 26 + "-"])
def test_a_refused_pattern_with_a_run_of_stars_is_refused_at_once(text: str) -> None:
    """26 stars took the pattern grammar 20 s to refuse (each one more doubled it, 255 would
    never end): a run of ``*`` could be split between two ways of matching it."""
    started = time.monotonic()
    with pytest.raises(ValueError, match="not a repository pattern"):
        parse_pattern(text)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "name"),
    [("library/redis*", "library/redis"), ("myorg/app**", "myorg/app"), ("*redis", "redis")],
)
def test_a_star_may_stand_for_nothing(pattern: str, name: str) -> None:
    assert parse_pattern(pattern).matches(name)


@pytest.mark.parametrize("value", ["library/*, ,myorg/**,", ["library/*", " ", "", "myorg/**"]])
def test_blank_items_of_a_list_are_skipped(value: str | list[str]) -> None:
    patterns = parse_patterns(value)
    assert str(patterns) == "library/*, myorg/**"
    assert patterns.match("myorg/a/b") is not None


@pytest.mark.parametrize("item", [5, None, ["library/*"]])
def test_an_item_that_is_no_string_is_refused(item: object) -> None:
    with pytest.raises(ValueError, match="expected pattern strings"):
        parse_patterns(["library/*", item])  # type: ignore[list-item]


def test_patterns_and_rules_are_frozen_values() -> None:
    rules = RepositoryRules(parse_patterns("library/*"), parse_patterns(["library/evil"]))
    again = RepositoryRules(parse_patterns(["library/*"]), parse_patterns("library/evil"))
    assert rules == again
    assert len({rules, again}) == 1  # hashable, equal ones alike
    assert len({parse_pattern("a/*"), parse_pattern("a/*")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.deny = parse_patterns("")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.allow.patterns = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_pattern("a/*").text = "b/*"  # type: ignore[misc]


def test_the_refusal_names_the_repository_and_the_rule_in_so_many_words() -> None:
    rules = RepositoryRules(parse_patterns("library/*, myorg/**"), parse_patterns("library/e*"))
    assert rules.refusal("library/evil") == (
        "repository library/evil is not served by this mirror (denied by library/e*)"
    )
    assert rules.refusal("other/tool") == (
        "repository other/tool is not served by this mirror (it serves library/*, myorg/**)"
    )
