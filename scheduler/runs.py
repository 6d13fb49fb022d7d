"""What the renewer remembers of its runs, and the status file it leaves: stdlib only.

The long-lived renewer imports this, not :mod:`scheduler.renewal`: a run's work (certbot, the
certificate checks with cryptography, httpx) happens in a child process (:mod:`scheduler.worker`),
so the process that waits between runs stays small.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from dataclasses import dataclass, field

from docxy.tls.files import write_files_atomic
from scheduler.settings import Settings

log = logging.getLogger("scheduler.renewal")


def configure_logging() -> None:
    """The renewer's log lines (and its runs'), on stderr for supervisord."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


class RunFailed(Exception):
    """One run failed; the message says why (certbot's reason, a bad certificate, a lost reload)."""


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before retry number `failures` (1, 2, ...): base, 2*base, 4*base, ... up to cap."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


@dataclass
class Runs:
    """Runs renewals one at a time and remembers how the last ones went; ``attempt`` is the work."""

    settings: Settings
    failures: int = 0
    last_run: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt(self) -> None:
        """One obtain-or-renew, install and reload; RunFailed saying why."""
        raise NotImplementedError

    def certificate(self) -> dict[str, object] | None:
        """What the served certificate is, for the status file (None: nothing to say)."""
        return None

    def run(self) -> bool:
        """One run; True on success. Never raises for certbot, certificate or reload trouble."""
        if not self._lock.acquire(blocking=False):
            log.info("renewal already running; skipped")
            return True
        try:
            self.last_run = dt.datetime.now(dt.UTC)
            self.attempt()
        except RunFailed as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.error("certificate renewal failed (%d in a row): %s", self.failures, exc)
            return False
        else:
            self.failures = 0
            self.last_error = None
            self.last_success = self.last_run
            return True
        finally:
            self._lock.release()

    def write_status(self, next_run: dt.datetime | None) -> None:
        """The status file the mirror reads (``docxy.tls.certs.renewal_status``), atomically."""
        status: dict[str, object] = {
            "last_run": _iso(self.last_run),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_run": _iso(next_run),
        }
        certificate = self.certificate()
        if certificate is not None:
            status["certificate"] = certificate
        data = json.dumps(status, indent=2).encode() + b"\n"
        write_files_atomic([(self.settings.status_file, data, 0o644)])
