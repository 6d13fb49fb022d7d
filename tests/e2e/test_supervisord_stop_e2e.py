"""The appliance's worst stop, timed with the real supervisord and scripts/supervisord.conf.

tests/unit/test_supervisord_stop.py adds the conf's stopwaitsecs up the way supervisord stops
(one program at a time, the highest priority first). Here the real supervisord runs the real
conf with each program and listener replaced by one that ignores SIGTERM, so every one of them
waits out its stopwaitsecs and is killed: the order of the kills and the time to exit are what
a `docker stop` of a stuck appliance would see, and must fit in the grace period.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.waiting import poll
from tests.unit.test_supervisord_stop import (
    CONF,
    MARGIN,
    grace_periods,
    stop_order,
    worst_stop,
)

STUBBORN = "bash -c " + shlex.quote('trap "" TERM; while :; do sleep 1; done')
#: An event listener that ignores SIGTERM (supervisord's protocol, as scripts/supervisor-*.sh).
STUBBORN_LISTENER = """#!/usr/bin/env bash
trap "" TERM
export LC_ALL=C
while :; do
  printf 'READY\\n'
  IFS= read -r header || exit 0
  IFS= read -r -N "${header##*len:}" _
  printf 'RESULT 2\\nOK'
done
"""


def stubborn_conf(tmp_path: Path) -> Path:
    listener = tmp_path / "listener.sh"
    listener.write_text(STUBBORN_LISTENER)
    listener.chmod(0o755)
    text = CONF.read_text()
    text, programs = re.subn(
        r"^command=python -m (docxy|scheduler)\b.*$", "command=" + STUBBORN, text, flags=re.M
    )
    text, listeners = re.subn(
        r'^command="?%\(ENV_DOCXY_SCRIPTS_DIR\)s/supervisor-\w+\.sh"?$',  # quoted: 2cf6c97
        f"command={listener}",
        text,
        flags=re.M,
    )
    assert (programs, listeners) == (2, 2)
    text = text.replace("startsecs=30", "startsecs=1")  # RUNNING sooner; stopping is unchanged
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    return conf


def test_a_stuck_appliance_stops_within_the_grace_period(tmp_path: Path) -> None:
    conf = stubborn_conf(tmp_path)
    env = os.environ | {
        "DOCXY_RUN_DIR": str(tmp_path),
        "DOCXY_SCRIPTS_DIR": str(tmp_path),
        "DOCXY_SUPERVISOR_RENEWER": "true",
    }
    log_path = tmp_path / "supervisord.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        poll(
            lambda: log_path.read_text().count("entered RUNNING state") == 4,
            60,
            "all four started",
        )
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    killed = re.findall(r"killing '(\w+)' \(\d+\) with SIGKILL", output)
    stops = stop_order()
    assert killed == [stop.name for stop in stops], output
    (grace,) = grace_periods()["compose.yaml"]
    assert sum(stop.wait for stop in stops) <= took <= worst_stop(stops), (took, output)
    assert took + MARGIN <= grace, took
