"""Log lines' times (docxy.logs): UTC, ISO 8601 with ``Z``, as /health tells times, in the
mirror's lines and the renewer's, whatever the process's time zone."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys

import pytest

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO docxy\.test: hello$")
#: Nine hours east of UTC, a POSIX TZ string (no tz database needed): a local time shows.
EAST = "DXY-9"


@pytest.mark.parametrize(
    "setup",
    [
        "from docxy.cli.main import setup_logging; setup_logging('INFO')",
        "from scheduler.runs import configure_logging; configure_logging()",
    ],
    ids=["mirror", "renewer"],
)
def test_a_log_line_tells_its_time_in_utc_with_z(setup: str) -> None:
    code = f"import logging; {setup}; logging.getLogger('docxy.test').info('hello')"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TZ": EAST},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    match = LINE.match(done.stderr.strip())
    assert match, done.stderr
    logged = dt.datetime.fromisoformat(match.group(1))
    assert before <= logged <= after, (before, logged, after)
