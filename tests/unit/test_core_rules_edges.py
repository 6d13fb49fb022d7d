"""Edges of ``docxy.core.rules`` that mutation testing found untested: the separators a
repository name may hold (``_``, ``__``, a run of ``-``, ``.``) in every component of a pattern,
a separator that no name can hold where it stands (ending a component, two in a row) refused in
every component, not in the first one only, and a refused pattern refused at once, however many
``*`` it holds."""

from __future__ import annotations

import time

import pytest

from docxy.core.rules import parse_pattern


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
