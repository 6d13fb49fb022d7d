"""Bounded tallies behind the status page: most pulled images, recent errors."""

from __future__ import annotations

import pytest

from docxy.observe.recent import MAX_KEY, RecentErrors, TopCounts


def test_top_counts_orders_by_count_then_name() -> None:
    top = TopCounts()
    for key in ["b", "a", "c", "a", "c", "a"]:
        top.add(key)
    assert top.top(2) == [("a", 3), ("c", 2)]
    assert top.top(10) == [("a", 3), ("c", 2), ("b", 1)]


def test_top_counts_never_holds_more_than_its_cap() -> None:
    top = TopCounts(max_keys=3)
    for n in range(1000):
        top.add(f"one-off-{n}")
    assert len(top) == 3


def test_a_frequent_key_still_climbs_into_a_full_table() -> None:
    top = TopCounts(max_keys=3)
    for key in ["x", "x", "y", "y", "z", "z"]:
        top.add(key)
    for _ in range(5):
        top.add("popular")
    assert top.top(1)[0][0] == "popular"
    assert len(top) == 3


def test_long_keys_are_cut() -> None:
    top = TopCounts()
    top.add("a" * (MAX_KEY + 50))
    assert len(top.top(1)[0][0]) == MAX_KEY


def test_top_counts_refuses_a_zero_cap() -> None:
    with pytest.raises(ValueError):
        TopCounts(max_keys=0)


def test_recent_errors_keeps_the_newest_first_and_drops_the_oldest() -> None:
    errors = RecentErrors(size=3)
    for n in range(5):
        errors.add("timeout", f"error {n}", at=1_000_000 + n)
    assert [e.message for e in errors.latest()] == ["error 4", "error 3", "error 2"]
    assert errors.latest()[0].as_dict() == {
        "at": "1970-01-12T13:46:44Z",
        "kind": "timeout",
        "message": "error 4",
    }
