"""Edges of ``docxy.core.bounded`` that mutation testing found untested: setting a key again
marks it just used, as getting it does; membership; the smallest capacity."""

from __future__ import annotations

import pytest

from docxy.core.bounded import LruDict


def test_setting_a_key_again_marks_it_just_used() -> None:
    lru: LruDict[str, int] = LruDict(2)
    lru.set("a", 1)
    lru.set("b", 2)
    lru.set("a", 3)  # a is now the latest used: b is the one to go
    lru.set("c", 4)
    assert "b" not in lru
    assert (lru.get("a"), lru.get("c"), len(lru)) == (3, 4, 2)
    assert "a" in lru and "c" in lru


def test_a_capacity_of_one_keeps_the_latest() -> None:
    lru: LruDict[str, int] = LruDict(1)
    lru.set("a", 1)
    lru.set("b", 2)
    assert ("a" in lru, lru.get("b"), len(lru)) == (False, 2, 1)
    with pytest.raises(ValueError):
        LruDict(0)
