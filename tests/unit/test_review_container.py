"""The container appliance's start and restart: scripts/entrypoint.sh before supervisord, and
the cache lock (docxy.cache.lock) across a restart of the mirror. Nothing here listens or
connects: the addresses in the settings (127.0.0.210, ports 9550-9599) are values only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scriptbox import REPO

ENTRYPOINT = REPO / "scripts" / "entrypoint.sh"

#: `python`, first on PATH: `python -m scheduler.supervise ...` (supervisord, what the
#: entrypoint execs last) only says it was started; anything else is the real interpreter.
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1 $2" == "-m scheduler.supervise" ]]; then
  echo "supervisord started"
  exit 0
fi
exec {python} "$@"
"""


def start_appliance(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """scripts/entrypoint.sh without arguments (the container's start), plain HTTP, up to the
    point where it execs supervisord."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "PYTHONPATH": str(REPO),
        "DOCXY_STATE_DIR": str(tmp_path / "state"),
        "DOCXY_RUN_DIR": str(tmp_path / "run"),
        "DOCXY_IF_INET6": str(tmp_path / "none"),
        "DOCXY_SERVER_PUBLIC_URL": "http://mirror.test",
        "DOCXY_SERVER_LISTEN": "127.0.0.210:9550",
        "DOCXY_SERVER_ADMIN_LISTEN": "",
        "DOCXY_UPSTREAM_REGISTRY": "http://127.0.0.210:9551",
        **settings,
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_setting_the_mirror_refuses_stops_the_container_at_once(tmp_path: Path) -> None:
    """`DOCXY_CACHE_MAX_SIZE=lots` in .env: supervisord started the mirror, which exited 2 over
    it, six times over some 25 s (each start within startsecs, with backoff), the error lost
    among supervisord's lines each time, then FATAL, exit 1, and compose's restart started it
    all again: a restart loop that ran long enough each time (over 10 s) for Docker never to
    slow it down. The entrypoint now reads the settings as the mirror does before supervisord:
    one line, exit 2, nothing started."""
    ran = start_appliance(tmp_path, DOCXY_CACHE_MAX_SIZE="lots")
    assert "supervisord started" not in ran.stdout, ran.stderr
    assert ran.returncode == 2, ran.stdout + ran.stderr
    errors = [line for line in ran.stderr.splitlines() if "config error" in line]
    assert errors == [
        "docxy: config error: cache.max_size: expected a size such as 20G or 512M, got 'lots' "
        "(env DOCXY_CACHE_MAX_SIZE)"
    ], ran.stderr


def test_a_renewer_only_refusal_still_starts_the_appliance(tmp_path: Path) -> None:
    """A bad [scheduler] setting leaves the mirror serving and the renewer up, holding (it says
    why on /health): the entrypoint's check must not turn it into a container that stops. Its
    warning is the renewer's and the mirror's to give, not repeated here."""
    ran = start_appliance(tmp_path, DOCXY_SCHEDULER_RETRY_MAX="zz")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "supervisord started\n"
    assert "scheduler.retry_max" not in ran.stderr


def test_good_settings_start_supervisord_quietly(tmp_path: Path) -> None:
    ran = start_appliance(tmp_path)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "supervisord started\n", "")


HOLDER = """
import os, signal, subprocess, sys, time
from pathlib import Path
from docxy.cache.lock import hold
hold(Path(sys.argv[1]))
# a child that outlives this process (as a certbot or openssl run could): it must not keep
# the lock held for the next mirror
child = subprocess.Popen(["sleep", "30"], close_fds=False, start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_mirrors_lock_is_free_for_the_next_one(tmp_path: Path) -> None:
    """supervisord's restart of a mirror that did not end on SIGTERM (SIGKILL, stopwaitsecs
    later, killasgroup) starts the next one once the old one is reaped: the kernel dropped the
    flock at its exit, and a child it left running (another process group, not killed with
    it) did not inherit the descriptor (O_CLOEXEC), so the new mirror is not refused with
    CacheInUse (exit 2, counted by supervisord towards FATAL)."""
    cache = tmp_path / "cache"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    old = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache)], env=env, stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        assert old.stdout is not None
        child = int(old.stdout.readline())
        taken = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from docxy.cache.lock import hold; hold(Path(sys.argv[1]))", str(cache)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "CacheInUse" in taken.stderr  # held while the old one lives
        old.kill()
        old.wait(timeout=10)
        time.sleep(0.2)
        os.kill(child, 0)  # the child still runs
        again = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from docxy.cache.lock import hold; hold(Path(sys.argv[1])); print('held')",
             str(cache)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.stdout == "held\n", again.stderr
    finally:
        if old.poll() is None:
            old.kill()
            old.wait(timeout=10)
        if old.stdout is not None:
            old.stdout.close()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("args", [["true"]])
def test_a_command_through_the_entrypoint_is_not_checked(tmp_path: Path, args: list[str]) -> None:
    """`docker exec <ctr> docxy ...` and the HEALTHCHECK come through the entrypoint with
    arguments: they run as before (the CLI reports a bad setting itself), unchecked and
    without a python start more each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"DOCXY_STATE_DIR": str(tmp_path), "DOCXY_CACHE_MAX_SIZE": "lots"}
    ran = subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (ran.returncode, ran.stderr) == (0, "")
