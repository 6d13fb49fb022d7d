"""``python -m scheduler``: renew at start, twice a day, and with backoff after a failure."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from docxy.core.errors import ConfigError
from scheduler import settings as settings_mod
from scheduler.runs import Runs, Stopped, backoff, configure_logging
from scheduler.worker import InChild

log = logging.getLogger("scheduler")

RENEW_JOB, RETRY_JOB = "renew", "retry"

#: How often the renewer looks for a run the clock stepped back over (:func:`pull_back`).
CLOCK_CHECK = 600.0


def _next_run(scheduler: BlockingScheduler) -> dt.datetime | None:
    """The scheduler's next run, if any. A job added while the scheduler stops (a run that
    failed as SIGTERM came adds its retry) is pending: it has no ``next_run_time`` at all."""
    times = [getattr(job, "next_run_time", None) for job in scheduler.get_jobs()]
    due = [time for time in times if time is not None]
    return min(due) if due else None


def build(renewer: Runs) -> BlockingScheduler:
    s = renewer.settings
    # A run the renewer wakes up late for (swapped out, a paused container, the clock stepped
    # forward) still runs, once: APScheduler's default drops a run more than 1 s late, and a
    # dropped retry left the next attempt to the daily run, up to 12 h later.
    late_is_fine = {"coalesce": True, "misfire_grace_time": None}
    scheduler = BlockingScheduler(timezone=dt.UTC, job_defaults=late_is_fine)

    said: dict[str, str] = {}  # what skipped_unwritable last logged

    def job() -> None:
        if skipped_unwritable(scheduler, job, s, said):
            return
        renewer.catch_up()  # a --once run since the last: its count, not this one's
        ok = renewer.run()
        if renewer.catch_up():  # a --once begun during this run, ended first: it is newer
            ok = renewer.failures == 0
        if ok:
            if scheduler.get_job(RETRY_JOB) is not None:
                scheduler.remove_job(RETRY_JOB)
        elif scheduler.running and not renewer.cut_short:  # (a run cut short: stopping)
            delay = backoff(renewer.failures, s.retry_base, s.retry_max)
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            scheduler.add_job(
                job, DateTrigger(when), id=RETRY_JOB, replace_existing=True, max_instances=1
            )
            log.info("next attempt in %.0fs at %s", delay, when.isoformat())
        renewer.write_status(_next_run(scheduler))

    if s.interval:
        trigger: IntervalTrigger | CronTrigger = IntervalTrigger(seconds=s.interval)
    else:
        hours = ",".join(str(h) for h in s.hours)
        trigger = CronTrigger(hour=hours, minute=s.minute, timezone=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    first = renewer.first_run(now)  # once at start too, after a failing streak's backoff
    if first > now:
        log.info(
            "%d failed run(s) in a row before this start: first attempt at %s (backoff)",
            renewer.failures,
            first.isoformat(),
        )
    scheduler.add_job(job, trigger, id=RENEW_JOB, max_instances=1, next_run_time=first)
    # Written at start, always: within a backoff /health showed the old next run until the
    # first, and a renewer restarted with its settings mended (hold) left their `refused` in
    # the file (/health degraded) until its first run ended, minutes later with the wait for
    # the mirror and certbot. What the file said of the runs before is restored, so it stays.
    renewer.write_status(first)
    return scheduler


def unwritable(settings: settings_mod.Settings) -> str | None:
    """Why this renewer can neither write ``certs.config_dir`` nor make it (certbot would fail,
    and so would its status), judged as the mirror judges it for /health
    (:func:`docxy.tls.certs.stranded_config_dir`) with this process's ids; None if it can."""
    from docxy.tls.certs import stranded_config_dir

    me = {"uid": os.geteuid(), "gids": list(dict.fromkeys([os.getegid(), *os.getgroups()]))}
    return stranded_config_dir(settings.config_dir, me)


def skipped_unwritable(
    scheduler: BaseScheduler,
    job: Callable[[], None],
    settings: settings_mod.Settings,
    said: dict[str, str],
) -> bool:
    """Whether a run due now is skipped, certs.config_dir having become unwritable since the
    renewer started (a root certbot run by hand): neither run (certbot would fail, each retry
    asking the CA again) nor counted as a failure; looked at again in :data:`HOLD_RECHECK`.
    Logged once while the reason stays the same (`said`, the build's; /health says it
    meanwhile: ``config_dir_unwritable``)."""
    why = unwritable(settings)
    if why is None:
        if said.pop("why", None) is not None:
            log.info("certs.config_dir %s can be written again: runs go on", settings.config_dir)
        return False
    if said.get("why") != why:
        log.error(
            "%s; no certbot run until it can: looked at again every %.0f s", why, HOLD_RECHECK
        )
        said["why"] = why
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=HOLD_RECHECK)
    scheduler.add_job(job, DateTrigger(when), id=RETRY_JOB, replace_existing=True, max_instances=1)
    return True


def horizon(settings: settings_mod.Settings) -> dt.timedelta:
    """The furthest ahead a run of the renewer can be due: its period (12 h, or the interval)
    or the longest backoff, whichever is longer, and a minute's slack."""
    period = settings.interval or 12 * 3600.0
    return dt.timedelta(seconds=max(period, settings.retry_max) + 60)


def pull_back(scheduler: BaseScheduler, furthest: dt.timedelta, now: dt.datetime) -> int:
    """Make each job due further ahead than `furthest` due now; how many were.

    APScheduler keeps its next runs as wall-clock times. After the clock stepped back (a VPS
    that started with its clock ahead, then NTP), a run stays where the old clock put it, ahead
    by the whole step, and nothing ran until then: a step of a month let the certificate expire
    first. No run of the renewer is ever due further ahead than :func:`horizon`; one that is ran
    over a step back, and runs now (certbot decides what is due).
    """
    pulled = 0
    for job in scheduler.get_jobs():
        when = getattr(job, "next_run_time", None)  # none: added while stopping
        if when is not None and when - now > furthest:
            log.warning(
                "the clock went back: the run due at %s (%s ahead) runs now",
                when.isoformat(),
                when - now,
            )
            job.modify(next_run_time=now)
            pulled += 1
    return pulled


def follow_the_clock(scheduler: BaseScheduler, furthest: dt.timedelta) -> threading.Thread:
    """A thread that calls :func:`pull_back` every :data:`CLOCK_CHECK` seconds of the
    monotonic clock (``time.sleep``), which no step of the wall clock stretches."""

    def watch() -> None:
        while True:
            time.sleep(CLOCK_CHECK)
            pull_back(scheduler, furthest, dt.datetime.now(dt.UTC))

    thread = threading.Thread(target=watch, name="clock", daemon=True)
    thread.start()
    return thread


#: How often a stop that came before the scheduler was running looks whether it is now.
STOP_EARLY_POLL = 0.05


class SignalStop:
    """Stop a scheduler once on the first of ``signals``, from a thread of its own.

    A Python handler runs in the main thread between any two of its bytecodes: one that called
    ``scheduler.shutdown`` itself could block for ever on a lock the main thread held at that
    moment (APScheduler's wake-up event), and a second signal, once the scheduler had stopped,
    raised SchedulerNotRunningError in whatever the main thread was doing (waiting for the run
    under way at exit: a traceback in the log). Here the Python handlers do nothing; the
    interpreter's C-level handler writes each signal's number to a socket
    (``signal.set_wakeup_fd``), and :meth:`start`'s thread reads it there. Call from the main
    thread.
    """

    def __init__(self, scheduler: BaseScheduler, signals: Sequence[int]) -> None:
        self._scheduler = scheduler
        self._signals = frozenset(signals)
        # kept here as long as the thread runs: the wake-up fd is only the writing end's number
        self._readable, self._writable = socket.socketpair()
        self._writable.setblocking(False)  # set_wakeup_fd's condition; the reading end blocks

    def start(self) -> threading.Thread:
        for signum in self._signals:
            signal.signal(signum, _noted)
        signal.set_wakeup_fd(self._writable.fileno(), warn_on_full_buffer=False)
        thread = threading.Thread(target=self._watch, name="signals", daemon=True)
        thread.start()
        return thread

    def close(self, thread: threading.Thread) -> None:
        """Stop watching (tests: the renewer watches until it exits). Put the previous wake-up
        fd back first: this closes the one :meth:`start` set."""
        self._writable.close()  # the watching thread reads the end and returns
        thread.join()
        self._readable.close()

    def _watch(self) -> None:
        stopping = False
        while data := self._readable.recv(64):
            for signum in data:
                if signum == signal.SIGHUP:  # main's handler (_noted): said, nothing else
                    log.info(NOTHING_HELD)
                if signum not in self._signals:
                    continue
                if stopping:
                    log.info("signal %d again: already stopping", signum)
                    continue
                log.info("signal %d: stopping", signum)
                stopping = self.stop()

    def stop(self) -> bool:
        """Shut the scheduler down, once it runs; False if that failed (logged: the next
        signal tries again). A signal in the moment before ``start`` marked it running found
        nothing to stop (SchedulerNotRunningError), and this thread ended with it: every later
        signal was lost, and the renewer could only be killed."""
        while True:
            try:
                self._scheduler.shutdown(wait=False)
            except SchedulerNotRunningError:
                time.sleep(STOP_EARLY_POLL)  # started in a moment (or the process ends)
            except Exception:
                log.exception("stopping the scheduler failed")
                return False
            else:
                return True


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """The Python side of a signal :class:`SignalStop` watches: nothing (the wake-up socket
    carries it); without a handler of Python's own the signal would end the process."""


#: What a renewer that holds nothing (:func:`hold`) logs of a SIGHUP, which it otherwise ignores.
NOTHING_HELD = (
    "SIGHUP: nothing held (the schedule is read at start; each run reads the config file)"
)


def idle(settings: settings_mod.Settings) -> int:
    """No domain, no certificate: certbot is never run. Wait for SIGTERM (a supervisor would
    otherwise take a renewer that exits at once for one that cannot start).

    A refusal a held renewer wrote (:func:`hold`, a domain or none) is dropped from the status
    file first: the mirror shows it on /health without a domain too (``degraded``), and it
    stayed there once the settings were mended. Not by ``--once``: the long-running renewer
    beside it may still hold (its environment is its own)."""
    if settings.once:
        log.info("no certs.domain set: no certificate to obtain or renew; certbot is not run")
        return 0
    _drop_refusal(settings)
    return _wait_for_stop(
        "no certs.domain set: no certificate to obtain or renew; certbot is not run"
    )


def _drop_refusal(settings: settings_mod.Settings) -> None:
    """Write the status file anew, without ``refused``, if it says one (else leave it be)."""
    try:
        said = json.loads(settings.status_file.read_bytes())
    except (OSError, ValueError):
        return
    if isinstance(said, dict) and said.get("refused"):
        runs = Runs(settings)
        runs.restore()
        runs.write_status(None)
        log.info("the renewer's settings are no longer refused (status %s)", settings.status_file)


def _wait_for_stop(said: str) -> int:
    """Log ``said``, then wait until SIGTERM or SIGINT; a SIGHUP is logged
    (:data:`NOTHING_HELD`) and waited past. The signals are blocked before ``said`` is logged:
    one sent on seeing that line is waited for, not taken by :func:`_noted` in between."""
    stop = {signal.SIGTERM, signal.SIGINT}
    waited = stop | {signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    log.info("%s", said)
    while (got := signal.sigwait(waited)) not in stop:
        log.info(NOTHING_HELD)
    log.info("signal %d: stopping", got)
    return 0


#: How often a renewer holding on refused settings (:func:`hold`) reads them again.
HOLD_RECHECK = 60.0


def hold(settings: settings_mod.Settings, flags: Sequence[str] = ()) -> settings_mod.Settings | int:
    """The renewer's own settings are refused (:func:`scheduler.settings.held`): say so in the
    log and in the status file (``refused``: /health turns ``degraded``, /status.json says why,
    ``docxy certs status`` says it), schedule no run, and read them again (``flags`` and the
    environment as at start, the config file as it is now) every :data:`HOLD_RECHECK` seconds
    and at once on SIGHUP. The settings mended: returned, and the renewer starts with them
    (its first status drops the refusal); SIGTERM or SIGINT first: 0. Refused another way,
    the mirror's too (what exits 2 at a start): still held, the status saying the new reason.
    Exiting instead made supervisord mark the renewer FATAL, and its listener took the
    container, the mirror serving pulls with it, down at every start; holding until
    restarted left a mended setting unused (and SIGHUP, not handled, ended the renewer)."""
    log.error(
        "the renewer's settings are refused: %s; no renewal is scheduled until they are "
        "mended: read again every %.0f s and on SIGHUP (the mirror goes on serving)",
        settings.halted,
        HOLD_RECHECK,
    )
    _say_refused(settings)
    said = settings.halted
    with _holding() as wake:
        while (hup := wake()) is not None:
            try:
                mended = settings_mod.load(flags)
            except ConfigError as exc:
                # One the mirror refuses too (held: None) exits 2 at a start, but not here: the
                # mirror beside it serves with the settings it started with, and exiting made
                # supervisord give the renewer up after five quick exits (FATAL), its listener
                # stop the container, and the entrypoint's check refuse every restart of it,
                # for a config file edited (perhaps half-way) under a running mirror. It holds,
                # and its status says the reason now (it kept the old one).
                again = settings_mod.held(flags)
                why = again.halted if again is not None else str(exc)
                if why != said:  # another refusal: said (and written) once
                    log.error("the renewer's settings are still refused: %s", why)
                    _say_refused(again or dataclasses.replace(settings, halted=why))
                    said = why
                elif hup:
                    log.info("SIGHUP: the renewer's settings are still refused: %s", why)
                continue
            log.info("the renewer's settings are mended: renewals are scheduled again")
            # A SIGHUP come since is not to end the renewer (its default) once unblocked.
            signal.signal(signal.SIGHUP, _noted)
            return mended
    return 0


def hold_unwritable(settings: settings_mod.Settings) -> int | None:
    """certs.config_dir cannot be written or made by this renewer (:func:`unwritable`): certbot
    would fail at every run, counted, logged, asking the CA again each time. Hold as
    :func:`hold` does: schedule nothing, look again every :data:`HOLD_RECHECK` seconds and at
    once on SIGHUP; None once it can (the renewer then starts as usual), 0 on SIGTERM or
    SIGINT first. No status is written (it cannot be): the mirror and ``docxy certs status``
    say it themselves (``config_dir_unwritable``)."""
    why = unwritable(settings)
    if why is None:
        return None
    log.error(
        "%s; no renewal is scheduled until it can: looked at again every %.0f s and on SIGHUP "
        "(the mirror goes on serving)",
        why,
        HOLD_RECHECK,
    )
    with _holding() as wake:
        while (hup := wake()) is not None:
            if unwritable(settings) is None:
                log.info(
                    "certs.config_dir %s can be written: renewals are scheduled",
                    settings.config_dir,
                )
                return None
            if hup:
                log.info("SIGHUP: certs.config_dir %s still cannot be written", settings.config_dir)
    return 0


@contextlib.contextmanager
def _holding() -> Iterator[Callable[[], bool | None]]:
    """A hold's wait (:func:`hold`, :func:`hold_unwritable`): SIGTERM, SIGINT and SIGHUP
    blocked while it holds, and a call that waits for one up to :data:`HOLD_RECHECK` seconds:
    True for a SIGHUP (look again now), False for the time up (look again), None for SIGTERM
    or SIGINT (logged: the hold ends, the renewer with it)."""
    waited = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, waited)

    def wake() -> bool | None:
        got = signal.sigtimedwait(waited, HOLD_RECHECK)
        if got is None:
            return False
        if got.si_signo != signal.SIGHUP:
            log.info("signal %d: stopping", got.si_signo)
            return None
        return True

    try:
        yield wake
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _say_refused(settings: settings_mod.Settings) -> None:
    """The status file, with the refusal: what it said of the runs before stands."""
    runs = Runs(settings)
    runs.restore()  # the count and the last success stand; only the refusal is added
    runs.write_status(None)


def warn_nowhere_to_install(settings: settings_mod.Settings) -> None:
    """A domain without tls.cert_path/key_path (given together, or neither: docxy.config): the
    mirror serves a self-signed pair of its own, and each run, though it succeeds, installs
    nothing. Said, not refused: a deploy hook may be what takes the certificate elsewhere."""
    log.warning(
        "certs.domain is set but tls.cert_path and tls.key_path are not: certificates for %s "
        "are obtained and renewed in %s and installed nowhere, and the mirror serves a "
        "self-signed one; set both (env DOCXY_TLS_CERT_PATH and DOCXY_TLS_KEY_PATH, or [tls]) "
        "where the mirror serves its certificate",
        settings.domain,
        settings.config_dir / "live" / str(settings.domain),
    )


def still_due(next_run: dt.datetime | None) -> dt.datetime | None:
    """What a one-off run (``--once``) writes as the next run: the one the long-running
    renewer scheduled, read from the status file they share, while it is still ahead; none
    once it has passed (no renewer may be running: a host's cron). A one-off run schedules
    nothing itself, and its ``null`` made the status page say "not scheduled" until the
    renewer's next run, though that run was due as before."""
    if next_run is None or next_run <= dt.datetime.now(dt.UTC):
        return None
    return next_run


@contextlib.contextmanager
def stopped_by(signals: Sequence[int]) -> Iterator[None]:
    """While inside, each of ``signals`` raises :class:`~scheduler.runs.Stopped` in the main
    thread (a one-off run stopped: its status is still written); the handlers before after.
    Before, SIGTERM ended ``--once`` at once and SIGINT in a traceback, with no status written:
    the run left no trace."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    before = {signum: signal.signal(signum, stop) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: the README tells the operator to send SIGHUP once a setting is mended, and
    # a renewer that was not held (hold waits for it itself) died of it, its default action;
    # systemd's Restart=on-failure takes such a death for a clean exit and left it down.
    signal.signal(signal.SIGHUP, _noted)
    configure_logging()
    flags = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_mod.load(flags)
    except ConfigError as exc:
        print(f"scheduler: config error: {exc}", file=sys.stderr)
        held = settings_mod.held(flags)
        if held is None or held.once:  # a one-shot run fails loudly; so does a mirror's error
            return 2
        resumed = hold(held, flags)
        if isinstance(resumed, int):
            return resumed
        settings = resumed
    if settings.domain is None:
        return idle(settings)
    if settings.cert_path is None:
        warn_nowhere_to_install(settings)
    if settings.once:
        return one_off(settings)
    if hold_unwritable(settings) == 0:  # stopped while it held
        return 0
    renewer = InChild(settings, argv=flags)
    renewer.restore()  # failures in a row, their backoff, the last success: as before a restart
    scheduler = build(renewer)

    SignalStop(scheduler, (signal.SIGTERM, signal.SIGINT)).start()
    when = (
        f"every {settings.interval:g}s"
        if settings.interval
        else f"daily at {settings.hours[0]:02d}:{settings.minute:02d} and "
        f"{settings.hours[1]:02d}:{settings.minute:02d} UTC"
    )
    log.info("renewing certificates at start and %s; status in %s", when, settings.status_file)
    follow_the_clock(scheduler, horizon(settings))
    scheduler.start()
    return 0


def one_off(settings: settings_mod.Settings) -> int:
    """``--once``: one run in this process, its status written; the exit says how it went.

    Run as root (``docker compose exec -u 0 docxy python -m scheduler --once``) it acts as the
    owner of certs.config_dir, as ``docxy certs renew`` does (:func:`docxy.tls.certs.
    certbots_owner`), where that owner is the mirror's user (cache.dir's) and the served
    pair's directory is that owner's too (one of root's beside it: all as root, as before):
    certbot, the pair and the status file were root's, and the renewer (the mirror's user)
    failed at its next run.
    """
    from docxy.tls.certs import certbots_owner, pairs_owner

    pair = settings.cert_path.parent if settings.cert_path is not None else None
    mirror = settings.cache_dir  # its owner is the mirror's user: the only one root acts as
    owner = certbots_owner(settings.config_dir, settings.certs.webroot, mirror=mirror, also=pair)
    if owner.switches and settings.cert_path is not None and settings.key_path is not None:
        pairs_owner(settings.cert_path, settings.key_path, mirror=mirror)  # handed over
    try:
        with owner.acting():
            return _once(settings)
    except PermissionError as exc:  # a root that may not change its uid (cap_drop): says how
        if owner.acted:
            raise
        print(f"scheduler: {exc}", file=sys.stderr)
        return 1


def _once(settings: settings_mod.Settings) -> int:
    from scheduler.renewal import Renewer  # the work, in this process: it ends after one run

    once = Renewer(settings)
    once.restore()
    stopped: Stopped | None = None
    try:
        # SIGHUP too: a terminal's hangup (an ssh session dropped) reaches certbot as well,
        # which dies of it; counted as certbot's failure, it started the renewer's backoff.
        with stopped_by((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
            ok = once.run()
    except Stopped as exc:  # its status says so (`interrupted`); the exit, which signal
        stopped, ok = exc, False
    once.catch_up()  # the renewer's run begun during this one and ended first is newer
    once.write_status(still_due(once.restored_next_run))
    if stopped is not None:
        return 128 + stopped.signum
    return 0 if ok else 1
