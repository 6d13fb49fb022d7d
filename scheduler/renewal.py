"""A renewal run's work: obtain or renew with certbot, install, tell the mirror.

The scheduler does it in a child process (:mod:`scheduler.worker`); ``--once`` and the tests do
it in process. The bookkeeping (failures, the status file) is :class:`scheduler.runs.Runs`.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from docxy.cli.healthcheck import verdict
from docxy.config import unreadable_ca_bundle
from docxy.core.errors import ConfigError
from docxy.tls import certs
from docxy.tls.context import CertError
from docxy.tls.lineage import Lineage
from scheduler.mirror_pid import StalePidfile, signal_mirror
from scheduler.runs import RunFailed, Runs
from scheduler.settings import Settings

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 30.0


class ReloadError(Exception):
    """The mirror could not be told to reload (it still picks the files up by watching them)."""


#: How long a run waits for the mirror (``--wait-for-mirror``) before it fails (and is retried).
MIRROR_WAIT = 120.0


def wait_for(urls: Sequence[str], timeout: float) -> None:
    """Poll each of ``urls`` (one listener's addresses) until one answers 200 with Docxy's
    health report, as ``docxy health`` asks (:func:`~docxy.cli.healthcheck.verdict`: another
    server's 200 on that port, the mirror never bound, is not the mirror up, and certbot would
    fail its HTTP-01 validation there); ValueError (a failed run, retried) after ``timeout``.
    A line in the log when the first round gets no answer, and one when the answer comes.

    Every address is asked in each round: a mirror on ``[::]`` bound to IPv6 alone answers on
    ::1, not 127.0.0.1, and a run that asked only the first waited out the whole wait and
    failed (at every retry) while the mirror, and the HTTP-01 token it serves, was up."""
    started = time.monotonic()
    waiting = False
    where = " or ".join(urls)
    while True:
        for url in urls:
            try:
                # trust_env=False: a proxy from the environment (certbot's, to reach the CA)
                # cannot reach this host's own listener (docxy.cli.healthcheck.probe too).
                if verdict(url, httpx.get(url, timeout=2.0, trust_env=False))[0]:
                    if waiting:
                        took = time.monotonic() - started
                        log.info("the mirror answered after %.1f s, at %s", took, url)
                    return
            except httpx.HTTPError:
                pass
        if time.monotonic() - started >= timeout:
            raise ValueError(f"the mirror at {where} did not answer within {timeout:.0f} s")
        if not waiting:
            log.info("waiting up to %.0f s for the mirror at %s before certbot", timeout, where)
            waiting = True
        time.sleep(0.5)


def tell_mirror(settings: Settings) -> str:
    """Make the mirror reload its certificate; say how. ReloadError if that failed.

    Both ways when both are set (the pidfile's SIGHUP, then the command): each is something
    the user asked for, and a pidfile set beside a reload command was dropped without a word.
    One failing does not keep the other from being tried; the run fails with each reason."""
    done: list[str] = []
    failed: list[str] = []
    if settings.pidfile:
        try:
            done.append(_signal_pidfile(settings.pidfile))
        except ReloadError as exc:
            failed.append(str(exc))
    if settings.reload_command:
        try:
            done.append(_run_reload_command(settings.reload_command))
        except ReloadError as exc:
            failed.append(str(exc))
    if failed:
        raise ReloadError("; ".join(failed))
    return " and ".join(done) or "file watch"


def _run_reload_command(command: str) -> str:
    argv = shlex.split(command)
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=RELOAD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        # Not the exception's own words: they quote the whole command line, and a password
        # given to it (supervisorctl -p) went to the log, the status file and /health.
        raise ReloadError(
            f"reload command {argv[0]} did not end within {RELOAD_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise ReloadError(f"reload command failed: {exc}") from exc
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip()[:300]
        raise ReloadError(f"reload command exited {proc.returncode}: {said}")
    return "reload command"


def _signal_pidfile(pidfile: Path) -> str:
    try:
        pid = signal_mirror(pidfile)
    except StalePidfile as exc:
        raise ReloadError(str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise ReloadError(f"cannot signal the mirror via {pidfile}: {exc}") from exc
    return f"SIGHUP to pid {pid}"


@dataclass
class Renewer(Runs):
    """Does the work in this process."""

    @property
    def live_dir(self) -> Path | None:
        s = self.settings
        return s.config_dir / "live" / s.domain if s.domain else None

    def attempt(self) -> None:
        if self.settings.refused is not None:  # certbot would be told a wrong certs.email
            raise RunFailed(self.settings.refused)
        if (refusal := unreadable_ca_bundle(self.settings.certs)) is not None:
            raise RunFailed(refusal)  # (each run: a bundle mounted or mended since is taken)
        try:
            self._obtain_or_renew()
        except (certs.CertbotError, CertError, ConfigError, OSError, ValueError) as exc:
            self._deploy_despite(exc)  # ConfigError: no certs.webroot to obtain through
            raise RunFailed(str(exc)) from exc
        try:
            self._deploy()
        except (CertError, ReloadError, OSError, ValueError) as exc:
            raise RunFailed(str(exc)) from exc

    def _deploy_despite(self, failure: Exception) -> None:
        """certbot failed, but a certificate issued earlier may still not be the one served (the
        served files lost or replaced by a bootstrap pair, an install cut short): serve it now,
        not after certbot's next success. The run stays failed for certbot's reason."""
        live = self.live_dir
        if live is None or not (live / "fullchain.pem").exists():
            return  # nothing issued yet
        try:
            self._deploy()
        except ReloadError as exc:  # the files are in place: only telling the mirror failed
            log.warning(
                "after %s: the issued certificate is installed, but the mirror could not be "
                "told to load it (it picks the files up on its own): %s",
                failure,
                exc,
            )
        except (CertError, OSError, ValueError) as exc:
            log.warning("after %s, installing the issued certificate failed too: %s", failure, exc)

    def certificate(self) -> dict[str, object] | None:
        s = self.settings
        if s.cert_path is None or s.key_path is None:
            return None
        return certs.describe_files(s.cert_path, s.key_path, s.domain)

    def _obtain_or_renew(self) -> None:
        """Renew the lineage, or obtain one: first, or in place of one certbot cannot renew
        (:mod:`docxy.tls.lineage`; what it set aside goes to the status file).

        With ``--wait-for-mirror``, not before the mirror answers: certbot's HTTP-01 challenge
        is answered from the webroot the mirror serves, for a renewal as for a first issuance.
        The appliance starts both together, and a renewal already due at start (a container
        down for weeks) asked the CA at once, failed its validation on a mirror not yet
        listening and waited out the backoff (and counted towards the CA's failed-validation
        limit). One ask when the mirror is up; a run whose mirror does not answer within
        :data:`MIRROR_WAIT` fails without asking the CA, and is retried."""
        s = self.settings
        if s.domain is None:
            return
        if s.wait_for_mirror:
            self._install_issued()
            wait_for(s.wait_for_mirror, MIRROR_WAIT)
        lineage = Lineage.of(s.certs, timeout=s.certbot_timeout)
        try:
            lineage.ensure(deploy_hook=s.deploy_hook)
        finally:
            if lineage.set_aside is not None:
                self.set_aside = lineage.set_aside.as_dict()

    def _install_issued(self) -> None:
        """Before waiting for the mirror: install the certificate issued earlier where it is
        not the one at the served paths (lost, replaced, a broken pair with no install to
        finish). A mirror that cannot start with what is there exits at each start, and the
        supervisor gives it up well before :data:`MIRROR_WAIT`: installing needs no mirror.
        It loads the pair when it starts; the reload stays owed for after the run."""
        live = self.live_dir
        if live is None or not (live / "fullchain.pem").exists():
            return  # nothing issued yet
        try:
            installed = self._install()
        except (CertError, OSError, ValueError) as exc:
            log.warning(
                "installing the issued certificate before the mirror answers failed: %s", exc
            )
            return
        if installed:
            log.info("the issued certificate installed where the mirror serves it")

    def _install(self) -> bool:
        """Install the lineage at the served paths if it is not what they hold; True if it was
        (the mirror is then owed a reload, however many runs it takes)."""
        s, live = self.settings, self.live_dir
        if live is None or s.cert_path is None or s.key_path is None:
            return False
        installed = certs.install(live, s.cert_path, s.key_path)
        if installed:
            self.reload_pending = True
        return installed

    def _deploy(self) -> None:
        """Install the lineage where the mirror serves it (if it changed) and tell the mirror.

        Done after every run, not only from a certbot deploy hook, so an install or a reload
        that failed last time is caught up on the next run (a failed reload stays pending even
        though the files are already in place).
        """
        installed = self._install()
        if self.reload_pending:
            how = tell_mirror(self.settings)
            self.reload_pending = False
            if installed:
                log.info("new certificate installed; mirror told by %s", how)
            else:
                log.info("mirror told by %s of a certificate installed earlier", how)
