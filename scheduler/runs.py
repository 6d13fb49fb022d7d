"""What the renewer remembers of its runs, and the status file it leaves: stdlib only.

The status file is also the renewer's memory across restarts (supervisord's, the appliance's):
it lives next to the certificates on their volume, is replaced atomically after every run, and a
starting renewer takes the count of failures in a row, when they began, the last success and a
pending reload up from it (:meth:`Runs.restore`). Without that, a renewal failing for days looked
new after each restart, and its backoff started again at ``retry_base``.

The long-lived renewer imports this, not :mod:`scheduler.renewal`: a run's work (certbot, the
certificate checks with cryptography, httpx) happens in a child process (:mod:`scheduler.worker`),
so the process that waits between runs stays small.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from docxy.core.stamps import aware, utc_stamp
from docxy.logs import log_to_stderr
from docxy.tls.files import write_files_atomic
from scheduler.settings import Settings

log = logging.getLogger("scheduler.renewal")


def configure_logging() -> None:
    """The renewer's log lines (and its runs'), on stderr for supervisord."""
    log_to_stderr(logging.INFO)  # as the mirror's, times in UTC: one container log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


class RunFailed(Exception):
    """One run failed; the message says why (certbot's reason, a bad certificate, a lost reload)."""


class RunCutShort(RunFailed):
    """The run was stopped from outside before it could end (``docker stop``: supervisord's
    SIGTERM reaches the renewer's whole process group, its run and certbot too). Not a failure
    of the renewal: neither counted nor put off by a backoff at the next start."""


class Stopped(BaseException):  # noqa: N818 (not an error: a stop from outside)
    """A signal stopped a one-off run (``--once``): raised in its main thread by the handler
    :func:`scheduler.main.stopped_by` sets, wherever the run was (certbot's child is killed
    by ``subprocess.run`` on the way out). A BaseException, so no ``except Exception`` of the
    run's swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")


def unexpected(exc: Exception) -> str:
    """A run's reason for an exception it does not list: its kind and its words."""
    return f"unexpected error: {type(exc).__name__}: {exc}"


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before retry number `failures` (1, 2, ...): base, 2*base, 4*base, ... up to cap.

    The doubling stops at 2**64: an exact ``2 ** 1024`` no longer fits a float, and the retry
    after 1,025 failures in a row (three days of a 5-minute ``retry_max``) raised instead of
    being scheduled, which stopped the retries and the status file."""
    return float(min(cap, base * 2.0 ** min(max(0, failures - 1), 64)))


def _iso(when: dt.datetime | None) -> str | None:
    """A time as the status file keeps it: ``isoformat()``, to the microsecond. The file is
    the renewer's memory (the backoff counts from ``last_run``, the schedule's ``next_run`` is
    written as APScheduler set it) and every version wrote it so; ``/health`` shows these times
    as its others (``docxy.tls.certs.renewal_status``), and so does the log."""
    return when.isoformat() if when is not None else None


def _when(value: object) -> dt.datetime | None:
    """An aware time written by :func:`_iso`, in UTC; ValueError for anything else, a time UTC
    cannot hold too (:func:`~docxy.core.stamps.aware`: one such in the status file crashed the
    renewer at each start, in the log line of restore)."""
    if value is None:
        return None
    when = aware(value)
    if when is None:
        raise ValueError(f"not a time: {value!r}")
    return when.astimezone(dt.UTC)


#: How many paths :func:`not_owned` looks at before it gives up (a bound, not a limit met).
OWNERS_LOOKED_AT = 20000

DENIED = ("Permission denied", "Operation not permitted")


def _pair(settings: Settings) -> list[Path]:
    """The served pair's files (those set)."""
    return [path for path in (settings.cert_path, settings.key_path) if path is not None]


def not_owned(settings: Settings) -> tuple[Path, int, Path] | None:
    """The first path this process may be denied because another user owns it, with that
    owner and the top it was found under: ``certs.config_dir`` (certbot's whole tree, the
    status file), the webroot's ``.well-known/`` or a file of the served pair (its own top).
    None as root, or when all are this user's."""
    uid = os.geteuid()
    if uid == 0:
        return None
    tops = [settings.config_dir]
    if settings.certs.webroot is not None:
        tops.append(settings.certs.webroot / ".well-known")
    tops += _pair(settings)
    looked = 0
    for top in tops:
        try:
            if top.lstat().st_uid != uid:
                return top, top.lstat().st_uid, top
        except OSError:
            continue
        for where, dirs, files in os.walk(top, onerror=lambda _exc: None):
            for name in sorted(dirs + files):
                path = Path(where) / name
                looked += 1
                if looked > OWNERS_LOOKED_AT:
                    return None
                try:
                    owner = path.lstat().st_uid
                except OSError:
                    continue
                if owner != uid:
                    return path, owner, top
    return None


def _chown(settings: Settings, top: Path, uid: int, gid: int) -> str:
    """The chown that hands `top` back: the whole tree of certs.config_dir or of the webroot's
    ``.well-known/``; for the served pair, its files that are another's, by name (their
    directory may be one of the system's, /etc/ssl: no ``-R`` there)."""
    pair = _pair(settings)
    if top not in pair:  # quoted: a path with a space is pasted as one
        return f"chown -R {uid}:{gid} {shlex.quote(str(top))}"
    others = []
    for path in pair:
        with contextlib.suppress(OSError):
            if path.lstat().st_uid != uid and path not in others:
                others.append(path)
    return f"chown {uid}:{gid} {shlex.join(str(path) for path in others or [top])}"


def owners_hint(settings: Settings, reason: str) -> str:
    """``reason`` (a run's failure, a status file not written) and, if it is a refusal
    (EACCES, EPERM) and a path of another user's is where the renewer works: that path and
    the fix. What an older run as root left there (certbot's logs, live/, the status file)
    made every run fail saying "Permission denied" alone."""
    if not any(said in reason for said in DENIED):
        return reason
    found = not_owned(settings)
    if found is None:
        return reason
    path, owner, top = found
    uid, gid = os.geteuid(), os.getegid()
    return (
        f"{reason}; {path} is uid {owner}'s, not the renewer's (uid {uid}): left by a run as "
        "root? Run `docxy certs renew` as root once (the container: `docker compose exec -u 0 "
        "docxy docxy certs renew`), which hands what it finds in certs.config_dir, the "
        "webroot's .well-known/ and the served pair back to their owner, or "
        f"`{_chown(settings, top, uid, gid)}`"
    )


#: How far ahead of now a status file's last run may be and still be taken up by
#: :meth:`Runs.catch_up` (both writers share this host's clock: only a moment's rounding).
CATCH_UP_SLACK = dt.timedelta(seconds=5)


@dataclass
class Runs:
    """Runs renewals one at a time and remembers how the last ones went; ``attempt`` is the work."""

    settings: Settings
    failures: int = 0
    last_run: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_error: str | None = None
    failing_since: dt.datetime | None = None  # the first failure of those in a row
    reload_pending: bool = False  # installed, the mirror not yet told (carried between runs)
    #: The served certificate as the status file last described it: shown until a run says anew.
    restored_certificate: dict[str, object] | None = None
    #: The last lineage certbot could not renew, set aside and obtained anew
    #: (``docxy.tls.lineage.SetAside.as_dict``): kept in the status file until the next one.
    set_aside: dict[str, object] | None = None
    #: The next run the status file said was scheduled (by the long-running renewer): what a
    #: one-off run (``--once``), which schedules nothing, leaves in the file.
    restored_next_run: dt.datetime | None = None
    #: The last run was stopped from outside (:class:`RunCutShort`): the renewer is stopping,
    #: so no retry is due, even before its own SIGTERM has stopped the scheduler.
    cut_short: bool = False
    #: The one-off run was stopped by a signal (:class:`Stopped`): when, and by which signal.
    #: Written to the status file (a trace of the run) until the next run's status replaces it.
    interrupted: dict[str, object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt(self) -> None:
        """One obtain-or-renew, install and reload; RunFailed saying why."""
        raise NotImplementedError

    def certificate(self) -> dict[str, object] | None:
        """What the served certificate is, for the status file (None: nothing to say)."""
        return None

    def run(self) -> bool:
        """One run; True on success. Never raises (but for BaseException: an exit, Ctrl-C)."""
        if not self._lock.acquire(blocking=False):
            log.info("renewal already running; skipped")
            return True
        before = self.last_run
        self.cut_short = False
        self.interrupted = None  # a one-off run stopped earlier: this run's status replaces it
        try:
            self.last_run = dt.datetime.now(dt.UTC)
            self.attempt()
        except RunCutShort as exc:
            self.last_run = before  # as if it never began: the status and the backoff stand
            self.cut_short = True
            log.warning("certificate renewal cut short, not counted as a failure: %s", exc)
            return False
        except Stopped as exc:  # --once: as a run cut short, but said in the status file
            self.last_run = before
            self.cut_short = True
            now = dt.datetime.now(dt.UTC)
            self.interrupted = {"at": _iso(now), "signal": exc.name}
            log.warning("certificate renewal %s, not counted as a failure", exc)
            raise
        except RunFailed as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:
            # A kind of trouble the run does not list (a bug, a library's own exception): a
            # failed run all the same. It ended `--once` in a traceback with no status written
            # (/health kept the run before), and a scheduled run with no retry.
            log.exception("certificate renewal ended in an unexpected error")
            self._failed(unexpected(exc))
            return False
        else:
            self.failures = 0
            self.last_error = None
            self.failing_since = None
            self.last_success = self.last_run
            return True
        finally:
            self._lock.release()

    def _failed(self, reason: str) -> None:
        reason = owners_hint(self.settings, reason)
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self.last_run
        self.last_error = reason
        log.error("certificate renewal failed (%d in a row): %s", self.failures, reason)

    def first_run(self, now: dt.datetime) -> dt.datetime:
        """When a starting renewer runs first: at once, unless it restored failures in a row
        whose backoff has not run out since the last of them.

        A renewer restarted in a loop (the appliance's container, supervisord) otherwise asked
        the CA at every start, and a failing validation every minute runs into the CA's limit
        (Let's Encrypt: 5 failed validations an hour). Never later than a full backoff from
        ``now``: a last run in the future (the clock stepped back) cannot put the run off longer.
        """
        if not self.failures or self.last_run is None or self._install_owed():
            return now
        s = self.settings
        delay = dt.timedelta(seconds=backoff(self.failures, s.retry_base, s.retry_max))
        # min() first: a last_run near the end of time (a status file written under a clock
        # far ahead, or edited) overflowed `last_run + delay` and the renewer died at each start
        return max(now, min(self.last_run, now) + delay)

    def _install_owed(self) -> bool:
        """Whether the pair issued last is not the one served (the served files lost, a
        bootstrap pair in their place, a key lost or replaced beside the right certificate):
        the first run installs it, so it is not put off. Compared as ``certs.install`` does,
        file by file."""
        s = self.settings
        if s.domain is None or s.cert_path is None or s.key_path is None:
            return False
        live = s.config_dir / "live" / s.domain
        try:
            issued = (live / "fullchain.pem").read_bytes(), (live / "privkey.pem").read_bytes()
        except OSError:
            return False  # nothing issued yet
        try:
            return (s.cert_path.read_bytes(), s.key_path.read_bytes()) != issued
        except OSError:
            return True

    def restore(self) -> None:
        """Take up where the renewer was before it (re)started, from the status file it left.

        A missing file is a first start; one that cannot be read or makes no sense (cut short,
        hand-edited, another version's) is logged and ignored: the count starts afresh, and the
        renewal runs as usual.
        """
        path = self.settings.status_file
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            failures, error = data.get("failures", 0), data.get("last_error")
            if type(failures) is not int or failures < 0:
                raise ValueError(f"failures: {failures!r}")
            if error is not None and not isinstance(error, str):
                raise ValueError(f"last_error: {error!r}")
            last_run, last_success = _when(data.get("last_run")), _when(data.get("last_success"))
            failing_since = _when(data.get("failing_since"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            log.warning("renewer status %s unreadable, counting afresh: %s", path, exc)
            return
        self.failures, self.last_error = failures, error if failures else None
        self.last_run, self.last_success = last_run, last_success
        # a file from before failing_since was kept: the trouble began at the latest last_run
        self.failing_since = (failing_since or last_run) if failures else None
        try:  # only shown again (by --once): one that makes no sense is not worth the rest
            self.restored_next_run = _when(data.get("next_run"))
        except ValueError:
            self.restored_next_run = None
        self.reload_pending = data.get("reload_pending") is True
        certificate = data.get("certificate")
        self.restored_certificate = certificate if isinstance(certificate, dict) else None
        set_aside = data.get("set_aside")
        self.set_aside = set_aside if isinstance(set_aside, dict) else None
        # kept until the next run's status (a renewer's status at start keeps it too)
        interrupted = data.get("interrupted")
        self.interrupted = interrupted if isinstance(interrupted, dict) else None
        if failures:
            log.info(
                "renewal has failed %d time(s) in a row since %s; last success %s",
                failures,
                utc_stamp(self.failing_since),
                utc_stamp(last_success) or "never",
            )

    def catch_up(self) -> bool:
        """Take up a run this renewer did not make, made since its last one: a one-off
        ``python -m scheduler --once`` beside it writes the status file they share. Whether
        one was taken up.

        Also called after a run, before its status is written: a run of the other process
        begun during this one and ended first is the newer outcome (the later start wins).
        The renewer's run that ended after a ``--once`` begun later (certbot failing on the
        lock the other certbot held) wrote its failure over that run's success, and a
        ``--once`` wrote over a newer run of the renewer the same way.

        The long-running renewer kept its own count: a ``--once`` that succeeded after three
        failures was undone by the renewer's next run, which, failing, wrote 4 in a row since
        the first of the three, no success since, and backed off as for the fourth. Taken up
        only from a file whose last run is later than this renewer's: one it could not write
        since (the volume full) holds an older state, never taken.

        Nor from one whose last run is in the future (beyond :data:`CATCH_UP_SLACK`): no run
        beside this one, on this host's clock, began after now. After the clock stepped back
        (a VPS started with its clock ahead, then NTP) the file this process wrote itself
        before the step is ahead of every run's start, and each run's catch-up restored it: a
        success reported as the old failures and backed off, a failure as the old success
        with no retry, until real time passed it."""
        try:
            data = json.loads(self.settings.status_file.read_bytes())
            seen = _when(data.get("last_run")) if isinstance(data, dict) else None
        except (OSError, ValueError):
            return False  # none, or unreadable: this renewer's own count stands
        if seen is None or (self.last_run is not None and seen <= self.last_run):
            return False
        if seen > dt.datetime.now(dt.UTC) + CATCH_UP_SLACK:
            log.warning(
                "the renewer status says a run at %s, ahead of this host's clock (it went "
                "back?): not taken up, this run's outcome stands",
                utc_stamp(seen),
            )
            return False
        log.info("taking up a run made beside this one at %s", utc_stamp(seen))
        stopped = self.interrupted  # this (one-off) run's own stop, if it was: still said
        self.restore()
        self.interrupted = stopped or self.interrupted
        return True

    def write_status(self, next_run: dt.datetime | None) -> None:
        """The status file the mirror reads (``docxy.tls.certs.renewal_status``), atomically.

        A file that cannot be written (the certificate volume full or read-only) is logged,
        not raised: the renewer goes on renewing. Raised, it stopped a renewer starting within
        its backoff, so supervisord gave up on it and took the container, mirror and all, down
        at every start; in a run it was a traceback from APScheduler's thread.
        """
        status: dict[str, object] = {
            "last_run": _iso(self.last_run),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "failures": self.failures,
            "failing_since": _iso(self.failing_since),
            "next_run": _iso(next_run),
            "reload_pending": self.reload_pending,
            # Which domain it was written for: a mirror without certs.domain shows a refusal
            # only from a renewer without one too (docxy.http.server.renewal_provider).
            "domain": self.settings.domain,
            # Who wrote it, the renewer (or a root run acting as the owner): whether it can
            # write certs.config_dir is judged by these (docxy.tls.certs.stranded_config_dir).
            "uid": os.geteuid(),
            "gids": list(dict.fromkeys([os.getegid(), *os.getgroups()])),
        }
        certificate = self.certificate() or self.restored_certificate
        if certificate is not None:
            status["certificate"] = certificate
        if self.set_aside is not None:
            status["set_aside"] = self.set_aside
        if self.interrupted is not None:
            status["interrupted"] = self.interrupted
        if self.settings.halted is not None:  # no run is scheduled: /health is degraded
            status["refused"] = self.settings.halted
        data = json.dumps(status, indent=2).encode() + b"\n"
        try:
            write_files_atomic([(self.settings.status_file, data, 0o644)])
        except OSError as exc:
            log.warning(
                "cannot write the renewer status %s (/health shows the last one written): %s",
                self.settings.status_file,
                owners_hint(self.settings, str(exc.strerror or exc)),
            )
