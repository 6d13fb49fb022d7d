"""Edges of ``docxy.core.headers`` that mutation testing found untested in the module's own
tests: which forwarded header cannot be sent on (the route tests saw only whether one was), and
a ``Retry-After`` date without a zone on a host that is not on UTC."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from docxy.core.headers import retry_after_seconds, unsendable


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ([], None),
        ([("Accept", "application/json"), ("Authorization", "Bearer t")], None),
        ([("Accept", "application/json"), ("Authorization", "Bearer é")], "Authorization"),
        ([("If-None-Match", '"é"'), ("Range", "bytes=é")], "If-None-Match"),  # the first
        ([("X-Own", "é"), ("User-Agent", "ü")], None),  # not forwarded: nothing to refuse
        ([("X-Own", "é"), ("range", "bytes=0-é")], "range"),
    ],
)
def test_unsendable(headers: list[tuple[str, str]], name: str | None) -> None:
    assert unsendable(headers) == name


@pytest.fixture
def not_on_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is five hours west of UTC for the test (a POSIX zone:
    no time zone database needed)."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


START = 1_790_000_000.0  # 2026-09-21T14:13:20Z


@pytest.mark.usefixtures("not_on_utc")
@pytest.mark.parametrize(
    "value",
    [
        "Mon, 21 Sep 2026 14:13:50 GMT",
        "Mon, 21 Sep 2026 14:13:50 -0000",  # no zone: GMT, as every HTTP-date
        "Mon, 21 Sep 2026 14:13:50",
    ],
)
def test_a_retry_after_date_is_gmt_whatever_the_local_zone(value: str) -> None:
    assert retry_after_seconds(value, START) == 30.0
