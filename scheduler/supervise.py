"""``python -m scheduler.supervise -c CONF``: supervisord, exiting 1 when a program gave up.

supervisord exits 0 however it was stopped, so a mirror that cannot start would leave the
container looking cleanly stopped (or, before, running without its mirror). The appliance's
event listener (scripts/supervisor-fatal.sh) leaves a note in ``$DOCXY_RUN_DIR`` and stops
supervisord when a program goes FATAL; this wrapper then exits 1, so ``docker ps`` and a restart
policy see a failure. It *is* supervisord (the same process): the entrypoint still execs it and
the container's signals still reach supervisord directly.

It also starts the renewer with SIGHUP ignored (:func:`start_with_sighup_ignored`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from supervisor import supervisord  # type: ignore[import-untyped]
from supervisor.options import ServerOptions  # type: ignore[import-untyped]

FATAL_NOTE = "fatal"  # written by scripts/supervisor-fatal.sh: what went FATAL
EXIT_FATAL = 1

#: The programs (scripts/supervisord.conf) started with SIGHUP ignored: the renewer and the
#: mirror, which ignore it themselves only once Python has started (the first line of
#: scheduler/__main__.py and docxy/__main__.py, some 20 ms on), and then put their own
#: handlers in place. SIGHUP's default in between ended them (the renewer's reload of a new
#: certificate is a SIGHUP to the mirror, which may be starting: a restart after a crash).
SIGHUP_IGNORED_AT_START = frozenset({"scheduler", "docxy"})

Execve = Callable[[object, str, Sequence[str], Mapping[str, str]], None]


def start_with_sighup_ignored(execve: Execve) -> Execve:
    """supervisord's ``options.execve``, ignoring SIGHUP first for the programs named in
    :data:`SIGHUP_IGNORED_AT_START`. Called in the forked child just before its exec, where
    SIG_IGN is the one disposition that survives the exec (a handler is reset to the default):
    no moment of the program's start is left with the default. Until then the child has
    supervisord's own handler, which only notes the signal in the child's copy."""

    def execve_ignoring_sighup(
        options: object, filename: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> None:
        if env.get("SUPERVISOR_PROCESS_NAME") in SIGHUP_IGNORED_AT_START:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        execve(options, filename, argv, env)

    return execve_ignoring_sighup


def main(argv: Sequence[str] | None = None) -> int:
    if ServerOptions.execve.__name__ != "execve_ignoring_sighup":  # once (tests call main)
        ServerOptions.execve = start_with_sighup_ignored(ServerOptions.execve)
    note = Path(os.environ["DOCXY_RUN_DIR"]) / FATAL_NOTE
    note.unlink(missing_ok=True)  # from a run before `docker restart`
    supervisord.main(list(sys.argv[1:] if argv is None else argv))
    if note.exists():
        print(
            f"supervisord stopped: a program gave up ({note.read_text().strip()})", file=sys.stderr
        )
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
