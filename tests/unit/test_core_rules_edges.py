"""Edges of ``docxy.core.rules`` that mutation testing found untested: a refused pattern refused
at once, however many ``*`` it holds."""

from __future__ import annotations

import time

import pytest

from docxy.core.rules import parse_pattern


@pytest.mark.parametrize("text", ["a" + "*" * 26 + "A", "x/a" + "*" * 26 + "-"])
def test_a_refused_pattern_with_a_run_of_stars_is_refused_at_once(text: str) -> None:
    """26 stars took the pattern grammar 20 s to refuse (each one more doubled it, 255 would
    never end): a run of ``*`` could be split between two ways of matching it."""
    started = time.monotonic()
    with pytest.raises(ValueError, match="not a repository pattern"):
        parse_pattern(text)
    assert time.monotonic() - started < 1.0
