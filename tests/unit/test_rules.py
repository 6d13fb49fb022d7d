"""Repository rules: allow and deny patterns over upstream repository names."""

from __future__ import annotations

import pytest

from docxy.core.rules import RepositoryRules, parse_pattern, parse_patterns


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("library/*", "library/redis", True),
        ("library/*", "library/a/b", False),
        ("library/*", "libraryx/redis", False),
        ("myorg/**", "myorg/a/b/c", True),
        ("myorg/**", "other/myorg/a", False),
        ("*", "library/redis", False),
        ("**", "any/thing", True),
        ("library/redis", "library/redis", True),
        ("library/redis", "library/redis2", False),
        ("library/re*s", "library/redis", True),
        ("a.b/*", "axb/c", False),  # the dot is literal
    ],
)
def test_patterns_match(pattern: str, name: str, matches: bool) -> None:
    assert parse_pattern(pattern).matches(name) is matches


@pytest.mark.parametrize(
    "text", ["", "Library/*", "lib//x", "/x", "x/", "a b", "a/***", "a?b", "[ab]/c", "x" * 300]
)
def test_bad_patterns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(text)


def test_deny_wins_and_allow_narrows() -> None:
    rules = RepositoryRules(parse_patterns("library/*"), parse_patterns(["library/evil"]))
    assert rules.refusal("library/redis") is None
    denied = rules.refusal("library/evil")
    assert denied is not None and "library/evil" in denied
    other = rules.refusal("someone/tool")
    assert other is not None and "library/*" in other  # says what it does serve


def test_no_rules_serve_everything() -> None:
    rules = RepositoryRules()
    assert not rules
    assert rules.refusal("any/thing") is None
