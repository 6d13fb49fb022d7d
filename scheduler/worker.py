"""A renewal run in a child process: ``python -m scheduler.worker [the renewer's flags]``.

The renewer waits between runs with little loaded (APScheduler and the settings table); each
run's work (certbot, the certificate checks with cryptography, waiting for the mirror with httpx:
:mod:`scheduler.renewal`) is done by a short-lived child of the same interpreter, which reads what
it must carry over on stdin and answers on stdout with one JSON line. Its log goes to stderr, as
the renewer's does. The waiting renewer: 49.8 → 25.8 MiB RSS in the container (README).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from docxy.core.errors import ConfigError
from scheduler import settings as settings_mod
from scheduler.runs import RunCutShort, RunFailed, Runs, configure_logging, unexpected

log = logging.getLogger("scheduler.worker")

#: Signals that end a run from outside: a stop (SIGTERM from supervisord to the renewer's
#: process group, Ctrl-C). The kernel's OOM killer and the time limit below send SIGKILL: those
#: runs failed.
STOPPED_BY = frozenset({signal.SIGTERM, signal.SIGINT})

#: A run's time limit beyond certbot's own: waiting for the mirror (2 min), the reload command
#: (30 s), the child's start. Only bounds a run that hangs.
SLACK = 300.0


@dataclass
class InChild(Runs):
    """Does each run's work in a child process (the flags it was started with are passed on)."""

    argv: Sequence[str] = ()
    described: dict[str, object] | None = field(default=None, repr=False)

    def attempt(self) -> None:
        request = json.dumps({"reload_pending": self.reload_pending})
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "scheduler.worker", *self.argv],
                input=request,
                stdout=subprocess.PIPE,
                text=True,
                timeout=self.settings.certbot_timeout + SLACK,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(f"the renewal run did not end within {exc.timeout:.0f} s") from exc
        except OSError as exc:
            raise RunFailed(f"cannot start the renewal run: {exc}") from exc
        try:
            result = json.loads(proc.stdout.splitlines()[-1])
            error, pending = result["error"], bool(result["reload_pending"])
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            if -proc.returncode in STOPPED_BY:  # the renewer's stop reached the child too
                name = signal.Signals(-proc.returncode).name
                raise RunCutShort(f"the renewal run was stopped by {name}") from exc
            raise RunFailed(f"the renewal run exited {proc.returncode} without a result") from exc
        self.reload_pending = pending
        if "certificate" in result:  # absent: the run could not look (a config error)
            self.described = result["certificate"]
        set_aside = result.get("set_aside")
        if isinstance(set_aside, dict):  # this run's (None: the last one's stays)
            self.set_aside = set_aside
        if error is not None:
            raise RunFailed(str(error))

    def certificate(self) -> dict[str, object] | None:
        return self.described


def main(argv: Sequence[str] | None = None) -> int:
    """The child: one run, its result on stdout. Exit 0 whether the run succeeded or not."""
    configure_logging()
    from scheduler.renewal import Renewer  # only here: the renewer itself never loads it

    request = json.loads(sys.stdin.read() or "{}")
    pending = bool(request.get("reload_pending"))
    try:
        settings = settings_mod.load(argv)
    except ConfigError as exc:
        # Read again for each run: a config file edited wrong since the renewer started. Its
        # reason is the run's (else: "exited 1 without a result", the key only in a traceback).
        said = f"config error: {exc} (the renewer's settings, read again for this run)"
        print(json.dumps({"error": said, "reload_pending": pending}), flush=True)
        return 0
    renewer = Renewer(settings, reload_pending=pending)
    try:
        renewer.attempt()
        error = None
    except RunFailed as exc:
        error = str(exc)
    except Exception as exc:  # its reason in the status file, not "exited 1 without a result"
        log.exception("the renewal run ended in an unexpected error")
        error = unexpected(exc)
    result = {
        "error": error,
        "reload_pending": renewer.reload_pending,
        "certificate": renewer.certificate(),
        "set_aside": renewer.set_aside,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
