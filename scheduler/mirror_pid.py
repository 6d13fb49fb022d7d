"""The mirror's pid from a pidfile, checked before it is signalled.

A pidfile outlives its process (a crash, a ``kill -9``, a container restarted on the same
volume), and pids are reused, soon in a container where they are small: the pid in a stale file
may now be certbot, a shell, anything, and SIGHUP's default action ends a process. So the pid is
signalled only if its command line is the mirror's (``docxy serve``, ``python -m docxy serve``),
and through a pidfd opened before that check where the kernel has them: the process checked is
then the process signalled, even if it exits and its pid is taken in between.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

#: Linux's largest pid (``PID_MAX_LIMIT``, the most ``/proc/sys/kernel/pid_max`` can be set to).
PID_MAX = 4 * 1024 * 1024


class StalePidfile(Exception):
    """The pidfile names no process, or a process that is not the mirror."""


def is_mirror(argv: list[str]) -> bool:
    """Whether a command line (``/proc/<pid>/cmdline`` split) runs ``docxy serve``."""
    return any(
        os.path.basename(arg) == "docxy" and following == "serve"
        for arg, following in zip(argv, argv[1:], strict=False)
    )


def command_line(pid: int) -> list[str]:
    """The arguments of `pid` (empty for a process that has exited but is not yet reaped)."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


#: Bytes of a pidfile read: a pid and its newline, with room for spaces around it.
PIDFILE_READ = 64


def read_pid(pidfile: Path) -> int:
    """The number in `pidfile` (spaces and a newline around it taken). ValueError naming
    nothing of what the file holds if it holds no number: `scheduler.pidfile` set to another
    file (a secret's, the .env) had up to 200 characters of it quoted by int(), and a byte
    that is not UTF-8 by the decoder, in the log, the status file and /health."""
    with pidfile.open("rb") as handle:
        held = handle.read(PIDFILE_READ + 1)
    text = held.strip()
    if len(held) > PIDFILE_READ or not text.isdigit() or not text.isascii():
        raise ValueError("not a process id (the file holds no number, and is not shown)")
    return int(text)


def signal_mirror(pidfile: Path, sig: signal.Signals = signal.SIGHUP) -> int:
    """Send `sig` to the mirror whose pid is in `pidfile`; its pid. StalePidfile if that pid is
    not the mirror (nothing is signalled); OSError or ValueError for an unreadable pidfile."""
    pid = read_pid(pidfile)
    if pid <= 0:
        raise ValueError(f"not a process id: {pid}")  # kill(0 or -n) signals process groups
    if pid > PID_MAX:
        # Two pids run together (a wrapper appending without a newline): os.pidfd_open and
        # os.kill raised OverflowError, which ended the run in a traceback, its reason lost.
        raise ValueError(f"not a process id: {pid} (pids go up to {PID_MAX})")
    handle = _pidfd(pid, pidfile)
    try:
        try:
            argv = command_line(pid)
        except (FileNotFoundError, ProcessLookupError):
            raise StalePidfile(f"stale pidfile {pidfile}: no process {pid}") from None
        if not is_mirror(argv):
            # Its program's name only: the rest of another process's command line (any user's)
            # may hold its secrets (mysql -pSECRET), and this message reaches /health.
            seen = os.path.basename(argv[0]) if argv else "a process that has exited"
            raise StalePidfile(
                f"stale pidfile {pidfile}: pid {pid} is not the mirror ({seen}); not signalled"
            )
        try:
            if handle is None:
                os.kill(pid, sig)
            else:
                signal.pidfd_send_signal(handle, sig)
        except ProcessLookupError:
            raise StalePidfile(f"stale pidfile {pidfile}: no process {pid}") from None
    finally:
        if handle is not None:
            os.close(handle)
    return pid


def _pidfd(pid: int, pidfile: Path) -> int | None:
    """A pidfd for `pid`; None where the kernel (or a seccomp filter) has none."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise StalePidfile(f"stale pidfile {pidfile}: no process {pid}") from None
    except (AttributeError, OSError):
        return None
