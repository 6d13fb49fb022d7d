"""The container appliance's start and restart: scripts/entrypoint.sh before supervisord, and
the cache lock (docxy.cache.lock) across a restart of the mirror. Nothing here listens or
connects: the addresses in the settings (127.0.0.210, ports 9550-9599) are values only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def entrypoint_env(
    root: Path, bin_dir: Path, listen: str, upstream: str, **settings: str
) -> dict[str, str]:
    """The environment scripts/entrypoint.sh runs in here: this one's without its DOCXY_
    variables, ``bin_dir`` first on PATH, this checkout's code, the state and run directories
    under ``root`` (no IPv6: ``root/none`` for if_inet6), plain HTTP for mirror.test on
    ``listen`` (no admin listener) and ``upstream`` as the registry; then ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    return env | {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "PYTHONPATH": str(REPO),
        "DOCXY_STATE_DIR": str(root / "state"),
        "DOCXY_RUN_DIR": str(root / "run"),
        "DOCXY_IF_INET6": str(root / "none"),
        "DOCXY_SERVER_PUBLIC_URL": "http://mirror.test",
        "DOCXY_SERVER_LISTEN": listen,
        "DOCXY_SERVER_ADMIN_LISTEN": "",
        "DOCXY_UPSTREAM_REGISTRY": upstream,
        **settings,
    }


def start_appliance(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """scripts/entrypoint.sh without arguments (the container's start), plain HTTP, up to the
    point where it execs supervisord."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    env = entrypoint_env(
        tmp_path, bin_dir, "127.0.0.210:9550", "http://127.0.0.210:9551", **settings
    )
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


@pytest.mark.parametrize(
    "domain",
    ["https://mirror.example.org", "mirror.example.org/", "mirror.example.org:8443",
     "mirror example.org", "-mirror.example.org"],
)  # fmt: skip
def test_a_domain_that_is_no_dns_name_is_named_as_given(tmp_path: Path, domain: str) -> None:
    """`DOCXY_DOMAIN=https://mirror.example.org` (the URL, not the name): the entrypoint built
    DOCXY_SERVER_PUBLIC_URL=https://https://... and DOCXY_CERTS_DOMAIN from it, and the mirror
    refused those, settings the operator never wrote (`server.public_url: expected the
    mirror's root ... 'https://https//mirror.example.org' (env DOCXY_SERVER_PUBLIC_URL)`).
    The line names DOCXY_DOMAIN and what it should be, and nothing is started."""
    ran = start_appliance(tmp_path, DOCXY_DOMAIN=domain, DOCXY_SERVER_PUBLIC_URL="")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "supervisord started" not in ran.stdout
    assert ran.stderr.splitlines() == [
        f"docxy: DOCXY_DOMAIN={domain}: expected the mirror's DNS name, such as "
        "mirror.example.com (no scheme, port or path)"
    ]


@pytest.mark.parametrize("domain", ["mirror.example.org", "Mirror.Example.ORG", "a-b.c0"])
def test_a_dns_name_is_a_domain(tmp_path: Path, domain: str) -> None:
    ran = start_appliance(tmp_path, DOCXY_DOMAIN=f" {domain} ", DOCXY_SERVER_PUBLIC_URL="")
    assert (ran.returncode, ran.stdout) == (0, "supervisord started\n"), ran.stderr


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


#: `python -m docxy serve`: a mirror that takes the cache's lock as the real one does, notes
#: its pid, and ignores SIGTERM (hung, or draining past stopwaitsecs); it exits 2 if refused.
LOCKING_PYTHON = """#!/usr/bin/env bash
if [[ "$*" == "-m docxy serve" ]]; then
  exec {python} -c '
import os, signal, sys, time
from pathlib import Path
from docxy.cache.lock import CacheInUse, hold
try:
    hold(Path(os.environ["DOCXY_CACHE_DIR"]))
except CacheInUse as exc:
    print("refused:", exc, file=sys.stderr, flush=True)
    sys.exit(2)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.environ["LOCK_LOG"], "a") as log:
    log.write(f"{{os.getpid()}}\\n")
time.sleep(300)
'
fi
exec {python} "$@"
"""


def test_a_restart_of_a_mirror_that_ignores_sigterm_is_not_refused(tmp_path: Path) -> None:
    """The watchdog's `supervisorctl restart docxy` (and supervisord's own restart) of a mirror
    still holding cache.dir/docxy.lock and not ending on SIGTERM: supervisord kills its group
    stopwaitsecs (13 s) later and starts the next one only once the old one is reaped, so the
    next one gets the lock, not CacheInUse (exit 2, a step towards FATAL). Real supervisord,
    scripts/supervisord.conf and the entrypoint; nothing listens."""
    short = Path(tempfile.mkdtemp(prefix="dxc-"))  # a unix socket's path is at most 107 bytes
    bin_dir, run_dir, state = short / "bin", short / "run", short / "state"
    for directory in (bin_dir, run_dir, state):
        directory.mkdir()
    python = bin_dir / "python"
    python.write_text(LOCKING_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    for tool in ("supervisorctl", "supervisord"):
        found = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    lock_log = short / "pids"
    env = entrypoint_env(
        short, bin_dir, "127.0.0.210:9552", "http://127.0.0.210:9553",
        TMPDIR=str(short), LOCK_LOG=str(lock_log),
    )  # fmt: skip
    output = short / "output.log"

    def pids() -> list[str]:
        return lock_log.read_text().split() if lock_log.exists() else []

    def wait_for(what: str, seconds: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, f"{what}: {output.read_text()}"
            time.sleep(0.2)

    def ctl(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["supervisorctl", "-s", f"unix://{run_dir}/supervisor.sock", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    with output.open("ab") as out:
        proc = subprocess.Popen(
            ["bash", str(ENTRYPOINT)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    restart = None
    try:
        wait_for("the first mirror holds the lock", 30, lambda: len(pids()) == 1)
        restart = ctl("restart", "docxy")
        wait_for("the next mirror holds the lock", 40, lambda: len(pids()) == 2)
        time.sleep(2)  # a refused one would have exited by now
        text = output.read_text()
        assert "refused" not in text and "exit status 2" not in text, text
        assert pids()[0] != pids()[1]
    finally:
        if restart is not None:
            restart.kill()
            restart.communicate(timeout=10)
        # supervisord puts each program in a process group of its own: every process of the
        # session this test started, nothing else
        for pid in in_session(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for("the session's processes gone", 10, lambda: not in_session(proc.pid))
        shutil.rmtree(short, ignore_errors=True)


def in_session(sid: int) -> list[int]:
    """The processes of session `sid` (field 6 of /proc/PID/stat, after the command's ')')."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 4 and int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found
