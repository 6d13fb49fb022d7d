"""One renewal run: obtain or renew with certbot, install, tell the mirror; backoff; status."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from docxy.tls import certs
from docxy.tls.context import CertError, write_files_atomic
from scheduler.settings import Settings

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 30.0


class ReloadError(Exception):
    """The mirror could not be told to reload (it still picks the files up by watching them)."""


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before retry number `failures` (1, 2, ...): base, 2*base, 4*base, ... up to cap."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


MIRROR_WAIT = 120.0


def wait_for(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; ValueError (a failed run, retried) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise ValueError(f"the mirror at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def tell_mirror(settings: Settings) -> str:
    """Make the mirror reload its certificate; say how. ReloadError if that failed."""
    if settings.reload_command:
        try:
            proc = subprocess.run(
                shlex.split(settings.reload_command),
                capture_output=True,
                text=True,
                timeout=RELOAD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReloadError(f"reload command failed: {exc}") from exc
        if proc.returncode != 0:
            said = (proc.stdout + proc.stderr).strip()[:300]
            raise ReloadError(f"reload command exited {proc.returncode}: {said}")
        return "reload command"
    if settings.pidfile:
        try:
            pid = int(settings.pidfile.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise ReloadError(f"cannot signal the mirror via {settings.pidfile}: {exc}") from exc
        return f"SIGHUP to pid {pid}"
    return "file watch"


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


@dataclass
class Renewer:
    """Runs renewals one at a time and remembers how the last ones went."""

    settings: Settings
    failures: int = 0
    last_run: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reload_pending: bool = field(default=False, repr=False)

    @property
    def live_dir(self) -> Path | None:
        s = self.settings
        return s.config_dir / "live" / s.domain if s.domain else None

    def run(self) -> bool:
        """One run; True on success. Never raises for certbot, certificate or reload trouble."""
        if not self._lock.acquire(blocking=False):
            log.info("renewal already running; skipped")
            return True
        try:
            self.last_run = dt.datetime.now(dt.UTC)
            self._obtain_or_renew()
            self._deploy()
        except (certs.CertbotError, CertError, ReloadError, OSError, ValueError) as exc:
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

    def _obtain_or_renew(self) -> None:
        s, live = self.settings, self.live_dir
        if live is not None and not (live / "fullchain.pem").exists():
            if not s.email or not s.webroot:
                raise ValueError("certs.email and certs.webroot are needed to obtain a certificate")
            if s.wait_for_mirror:
                wait_for(s.wait_for_mirror, MIRROR_WAIT)
            certs.obtain(
                s.domain or "",
                s.email,
                webroot=s.webroot,
                config_dir=s.config_dir,
                acme_server=s.acme_server,
                ca_bundle=s.ca_bundle,
                staging=False,
                timeout=s.certbot_timeout,
            )
            return
        certs.renew(
            config_dir=s.config_dir,
            ca_bundle=s.ca_bundle,
            deploy_hook=s.deploy_hook,
            timeout=s.certbot_timeout,
        )

    def _deploy(self) -> None:
        """Install the lineage where the mirror serves it (if it changed) and tell the mirror.

        Done after every run, not only from a certbot deploy hook, so an install or a reload
        that failed last time is caught up on the next run (a failed reload stays pending even
        though the files are already in place).
        """
        s, live = self.settings, self.live_dir
        if live is None or s.cert_path is None or s.key_path is None:
            return
        installed = certs.install(live, s.cert_path, s.key_path)
        if installed:
            self._reload_pending = True  # until the mirror has been told, however many runs
        if self._reload_pending:
            how = tell_mirror(s)
            self._reload_pending = False
            if installed:
                log.info("new certificate installed; mirror told by %s", how)
            else:
                log.info("mirror told by %s of a certificate installed earlier", how)

    def write_status(self, next_run: dt.datetime | None) -> None:
        s = self.settings
        status: dict[str, object] = {
            "last_run": _iso(self.last_run),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_run": _iso(next_run),
        }
        if s.cert_path is not None and s.key_path is not None:
            status["certificate"] = certs.describe_files(s.cert_path, s.key_path)
        data = json.dumps(status, indent=2).encode() + b"\n"
        write_files_atomic([(s.status_file, data, 0o644)])
