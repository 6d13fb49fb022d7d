"""Process plumbing shared by the lab's parts: polling, running, stopping, unmounting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from lab.ports import LOOPBACK

POLL_INTERVAL = 0.1


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    check: bool = False,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a CLI to completion with a bounded wait; output is captured as text."""
    result = subprocess.run(
        list(argv),
        env=dict(env),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def base_env(proxy_url: str) -> dict[str, str]:
    """A clean environment whose only way off the machine is `proxy_url` (a loopback guard).

    Go's proxy support never proxies loopback addresses, so traffic to 127.0.0.1 goes direct
    while any attempt to reach another host ends at the guard.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin:/usr/bin:/sbin:/bin"])
    env = {"PATH": path.strip(os.pathsep), "HOME": os.environ.get("HOME", "/root")}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 20.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Always reaps the child."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


def stop_pid(pid: int, *, marker: str, grace: float = 20.0) -> None:
    """Stop a process we started indirectly (not our child), if it is still ours.

    `marker` must appear in its command line, so a recycled pid is never signalled.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if marker not in cmdline:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_for(lambda: not pid_alive(pid), timeout=grace, what=f"pid {pid} to exit")
            return
        except TimeoutError:
            continue


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (the order to unmount them in)."""
    prefix = str(root.resolve())
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(Path(mount_point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Lazily unmount everything a daemon left mounted below `root`."""
    for mount_point in mounts_under(root):
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


# --- a process tree's CPU and memory, from /proc ----------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def tree(pid: int) -> list[int]:
    """`pid` and its live descendants (by the parent pid in every /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu(pid: int) -> float:
    """utime+stime in seconds of `pid` and its live descendants (nginx's workers, say)."""
    ticks = 0
    for member in tree(pid):
        try:
            fields = _stat_fields(member)
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / CLK_TCK


def _kib_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def status_kib(pid: int, field: str) -> int:
    """A KiB figure of /proc/PID/status (VmRSS, VmHWM, ...); 0 once the process is gone."""
    return _kib_field(f"/proc/{pid}/status", field)


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared by N processes count 1/N in each."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def command_line(pid: int, limit: int = 70) -> str:
    """The process's command line (its first `limit` characters), or "?" once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:limit]


def wait_healthy(
    port: int, *, stopped: Callable[[], str | None], detail: Callable[[], str], timeout: float
) -> None:
    """Poll ``/health`` on loopback ``port`` until it answers 200. ``stopped`` says why the
    process behind it is gone (RuntimeError), or None while it runs; ``detail`` (its log, its
    state) goes into either error, as into the TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        reason = stopped()
        if reason is not None:
            raise RuntimeError(f"{reason}:\n{detail()}")
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no /health on port {port}:\n{detail()}")
        time.sleep(0.5)
