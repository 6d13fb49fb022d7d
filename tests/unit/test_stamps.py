"""One spelling of a time for /health, /status.json, the status page and the log:
``2026-12-01T10:14:00Z``, whether it was kept as seconds or as a datetime."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from docxy.core.stamps import aware, restamped, utc_stamp
from docxy.tls.certs import renewal_status

PARIS = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("when", "told"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_764_584_040.999, "2025-12-01T10:14:00Z"),  # the fraction dropped, never rounded up
        (dt.datetime(2026, 12, 1, 10, 14, 0, 999_999, tzinfo=dt.UTC), "2026-12-01T10:14:00Z"),
        (dt.datetime(2026, 12, 1, 11, 14, tzinfo=PARIS), "2026-12-01T10:14:00Z"),  # to UTC
        (dt.datetime(2027, 1, 1, 0, 30, tzinfo=PARIS), "2026-12-31T23:30:00Z"),  # a year back
        (None, None),
    ],
)
def test_utc_stamp(when: float | dt.datetime | None, told: str | None) -> None:
    assert utc_stamp(when) == told


@pytest.mark.parametrize(
    ("text", "told"),
    [
        ("2026-12-01T10:14:00.123456+00:00", "2026-12-01T10:14:00Z"),  # isoformat(), as written
        ("2026-12-01T11:14:00+01:00", "2026-12-01T10:14:00Z"),
        ("2026-12-01T10:14:00Z", "2026-12-01T10:14:00Z"),  # already so
        ("2026-12-01T10:14:00", "2026-12-01T10:14:00"),  # no zone: not guessed
        ("soon", "soon"),
        (None, None),
        (7, 7),
    ],
)
def test_restamped(text: object, told: object) -> None:
    assert restamped(text) == told


def test_health_shows_the_renewers_times_as_its_others(tmp_path: Path) -> None:
    """The renewer's status file keeps ``isoformat()``'s times (every version wrote them so):
    /health showed ``2026-12-01T10:14:00.123456+00:00`` beside ``tls.not_after``'s
    ``2027-02-28T10:00:00Z``. They are read as they are and shown as the rest."""
    written = {
        "last_run": "2026-12-01T10:14:00.123456+00:00",
        "last_success": None,
        "failing_since": "2026-11-28T22:00:00.5+00:00",
        "next_run": "2026-12-01T10:30:00.000001+00:00",
        "last_error": "certbot renew failed: the CA is down",
        "failures": 3,
        "set_aside": {"at": "2026-11-28T21:59:00+00:00", "reason": "r", "moved_to": "/x"},
        "certificate": {"not_after": "2027-02-28T10:00:00+00:00", "serial": "ab"},
    }
    (tmp_path / "status.json").write_text(json.dumps(written))
    shown = renewal_status(tmp_path)
    assert shown == {
        **written,
        "last_run": "2026-12-01T10:14:00Z",
        "failing_since": "2026-11-28T22:00:00Z",
        "next_run": "2026-12-01T10:30:00Z",
        "set_aside": {"at": "2026-11-28T21:59:00Z", "reason": "r", "moved_to": "/x"},
        "certificate": {"not_after": "2027-02-28T10:00:00Z", "serial": "ab"},
    }


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"])
def test_a_renewer_time_utc_cannot_hold_is_shown_as_written(tmp_path: Path, text: str) -> None:
    """A status file time whose offset puts it before year 1 or after 9999 in UTC raised
    OverflowError where /health, /metrics and the status page read the renewer's status: all
    four answered 500. It is no time to tell in UTC: shown as written, as other text is."""
    assert aware(text) is None
    (tmp_path / "status.json").write_text(json.dumps({"last_run": text, "failures": 1}))
    assert renewal_status(tmp_path) == {"last_run": text, "failures": 1}
