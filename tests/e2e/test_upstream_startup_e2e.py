"""``docxy serve`` as a user starts it says at start-up what an upstream's ``hosts`` take over.

No daemons: the upstreams are loopback ports nothing listens on (never contacted here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.mirror import launch_mirror, stop_mirror
from lab.ports import LOOPBACK, free_port

pytestmark = pytest.mark.e2e


def test_hosts_taking_the_public_url_are_warned_in_the_log(tmp_path: Path) -> None:
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    args = [
        "--upstreams",
        f"lab.test=http://{LOOPBACK}:{free_port()}",
        "--set",
        f"upstreams.lab.test.hosts={LOOPBACK}",
    ]
    mirror = launch_mirror(nowhere, tmp_path, args)
    try:
        log = mirror.log_text()
    finally:
        stop_mirror(mirror)
    (line,) = [line for line in log.splitlines() if "upstreams.lab.test.hosts:" in line]
    assert "WARNING" in line
    assert f"takes the host {LOOPBACK}:{mirror.port} of server.public_url" in line
    assert "goes to lab.test" in line
