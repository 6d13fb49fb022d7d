"""Review of the renewer and its reporting (review certs6):

1. a SIGHUP in the renewer's first milliseconds (Python starting, before scheduler/__main__.py
   ignores it) ended it: supervisord now starts it with SIGHUP ignored (SIG_IGN survives exec);
2. the status page's row for an unwritable ``certs.config_dir`` named the setting twice;
3. a renewer that cannot write ``certs.config_dir`` ran certbot (which failed) at every run:
   it now holds, as on refused settings, until it can;
4. a ``certs.config_dir`` missing where the renewer cannot make it was said in the entrypoint's
   log alone: status and health now say it as for one it cannot write.

Nothing here listens on an address (supervisord's control socket is a unix one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apscheduler.triggers.date import DateTrigger

from docxy.cli.owner import Owner
from docxy.observe import status as status_page
from docxy.tls import certs
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.runs import Runs
from tests.unit.test_review_rootcerts import OWNER, Appliance
from tests.unit.test_review_rootcerts import appliance as appliance  # noqa: F401  (fixture)
from tests.unit.test_scheduler import HANG, REPO_ROOT, poll

# --- 1. the renewer started with SIGHUP ignored -------------------------------------------------

#: `python` first on supervisord's PATH: for the renewer's command (`python -m scheduler ...`)
#: and the mirror's (`python -m docxy serve`) it notes the signals it was started with ignored
#: (bash keeps an inherited SIG_IGN and passes it on), then waits. Nothing is run for real.
FAKE_PYTHON = """#!/usr/bin/env bash
note="$SIGIGN_NOTE"
[[ "$1 $2" == "-m docxy" ]] && note="$SIGIGN_NOTE.docxy"
if [[ "$1 $2" == "-m scheduler" || "$1 $2" == "-m docxy" ]]; then
  while read -r key value; do
    if [[ "$key" == SigIgn: ]]; then echo "$value" > "$note.tmp"; fi
  done < /proc/$$/status
  mv "$note.tmp" "$note"
fi
exec sleep 600
"""


@contextlib.contextmanager
def supervised(note: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m scheduler.supervise -c scripts/supervisord.conf`, as the entrypoint execs it,
    in a short temp dir (a unix socket's path is at most 107 bytes)."""
    top = Path(tempfile.mkdtemp(prefix="dxc6-"))
    bin_dir, run_dir = top / "bin", top / "run"
    bin_dir.mkdir()
    run_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "TMPDIR": str(top),
        "DOCXY_RUN_DIR": str(run_dir),
        "DOCXY_SCRIPTS_DIR": str(REPO_ROOT / "scripts"),
        "DOCXY_SUPERVISOR_RENEWER": "true",
        "DOCXY_WATCHDOG_SECONDS": "0",
        "SIGIGN_NOTE": str(note),
    }
    conf = REPO_ROOT / "scripts" / "supervisord.conf"
    with (top / "output.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.supervise", "-c", str(conf)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, nothing else
        proc.wait(timeout=10)
        shutil.rmtree(top, ignore_errors=True)


def test_supervisord_starts_the_renewer_with_sighup_ignored(tmp_path: Path) -> None:
    """scheduler/__main__.py ignores SIGHUP at its first line, but Python takes some 20 ms to
    get there, and a SIGHUP then (`supervisorctl signal HUP scheduler` right after a restart)
    ended the renewer. Ignored by supervisord in the child before its exec, it is ignored
    from the renewer's first instruction on (its own handler replaces SIG_IGN later)."""
    note = tmp_path / "sigign"
    mirror = note.with_name(note.name + ".docxy")
    with supervised(note) as proc:
        poll(lambda: (note.exists() and mirror.exists()) or proc.poll() is not None, timeout=HANG)
        assert note.exists(), f"supervisord ended ({proc.returncode}) before the renewer began"
        assert mirror.exists(), f"supervisord ended ({proc.returncode}) before the mirror began"
        ignored = int(note.read_text().strip(), 16)
        mirrors = int(mirror.read_text().strip(), 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), f"SigIgn {ignored:x}: SIGHUP not ignored"
    # The mirror too: the renewer's reload is a SIGHUP, which in the mirror's start ended it.
    assert mirrors & (1 << (signal.SIGHUP - 1)), f"SigIgn {mirrors:x}: SIGHUP not ignored"


# --- 2. the status page's row for an unwritable config_dir --------------------------------------


def test_the_status_pages_unwritable_config_dir_row_names_the_setting_once(
    appliance: Appliance,  # noqa: F811
) -> None:
    """The row read "cannot write certs.config_dir: certs.config_dir /x is uid 0's ... and the
    renewer, uid N, cannot write it": the setting and the trouble twice over."""
    appliance.config_dir.mkdir()  # as root: root's, in the owner's certs/
    with Owner(OWNER, OWNER, appliance.config_dir).acting():
        renewal = certs.renewal_status(appliance.config_dir)  # as the mirror reads it
    assert renewal.get("config_dir_unwritable"), renewal
    shown = status_page._certificate(None, renewal)
    assert shown.count("certs.config_dir") == 1, shown
    assert shown.count("cannot write") == 1, shown
    assert str(appliance.config_dir) in shown and f"chown -R {OWNER}:{OWNER}" in shown, shown


# --- 3. a renewer that cannot write config_dir holds --------------------------------------------


class Built(Exception):
    """main() went on to schedule its runs (the first one at once: certbot)."""


def _main_until_built(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Stop main() where it would schedule its runs; note whether config_dir could be written
    then (as the renewer's user)."""
    built: list[bool] = []

    def build(renewer: object) -> None:
        config_dir = Path(os.environ["DOCXY_CERTS_CONFIG_DIR"])
        built.append(
            config_dir.is_dir() and os.access(config_dir, os.W_OK | os.X_OK, effective_ids=True)
        )
        raise Built

    monkeypatch.setattr(scheduler_main, "build", build)
    monkeypatch.setattr(scheduler_main, "HOLD_RECHECK", 0.05)
    return built


#: What the renewer logs as it begins to hold (scheduler.main.hold_unwritable).
HOLDING = "no renewal is scheduled until it can"


class Holding(logging.Handler):
    """Notes the renewer's line saying it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if HOLDING in record.getMessage():
            self.seen.set()


def _signal_while_held(
    ident: int, signum: int, holding: Holding, done: threading.Event, before: Callable[[], None]
) -> None:
    """Once the renewer says it holds: `before`, then `signum` to the main thread, again every
    few milliseconds until main() returns (one may come between the line and the wait, or
    between two waits, and go to the handler in place then: the test's, or main()'s)."""
    while not (done.is_set() or holding.seen.wait(0.02)):
        pass
    if done.is_set():
        return
    before()
    while not done.wait(0.02):
        signal.pthread_kill(ident, signum)


@contextlib.contextmanager
def signalled(signum: int, before: Callable[[], None] = lambda: None) -> Iterator[None]:
    """`signum` to this (the main) thread while the renewer holds, from a thread of its own."""
    holding, done = Holding(), threading.Event()
    renewer_log = logging.getLogger("scheduler")
    renewer_log.addHandler(holding)
    args = (threading.get_ident(), signum, holding, done, before)
    sender = threading.Thread(target=_signal_while_held, args=args, daemon=True)
    sender.start()
    try:
        yield
    finally:
        done.set()
        sender.join(timeout=HANG)
        renewer_log.removeHandler(holding)


def _ignore(_signum: int, _frame: object) -> None:
    """SIGTERM in the test process between the renewer's waits: not its default (the end)."""


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """main() installs its own SIGHUP handler, and SIGTERM here must never end pytest: the test
    process's come back after."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _ignore)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_signals")
def test_a_renewer_that_cannot_write_config_dir_holds_until_it_can(
    appliance: Appliance,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """config_dir root's in the owner's certs volume: the renewer ran certbot at start and at
    every retry, each failing (counted, logged, the CA asked again), though nothing could
    change until the directory was handed back. Now it holds, as on refused settings, looking
    again every minute and on SIGHUP, and schedules its runs once it can write there."""
    appliance.config_dir.mkdir()  # as root
    built = _main_until_built(monkeypatch)
    monkeypatch.setattr(scheduler_main, "HOLD_RECHECK", HANG)  # only the SIGHUP ends the wait

    def hand_back() -> None:  # as the renewer's user: its parent is the user's
        appliance.config_dir.rename(appliance.config_dir.with_name("letsencrypt.root"))
        appliance.config_dir.mkdir()

    with Owner(OWNER, OWNER, appliance.config_dir).acting():
        with signalled(signal.SIGHUP, hand_back), pytest.raises(Built):
            scheduler_main.main([])
    assert built == [True], f"runs scheduled while config_dir could not be written: {built}"
    assert "cannot write it" in caplog.text, caplog.text


@pytest.mark.usefixtures("restore_signals")
def test_a_held_renewer_stops_on_sigterm(
    appliance: Appliance,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    appliance.config_dir.mkdir()  # as root
    built = _main_until_built(monkeypatch)
    with Owner(OWNER, OWNER, appliance.config_dir).acting(), signalled(signal.SIGTERM):
        assert scheduler_main.main([]) == 0
    assert built == []


# --- 4. a config_dir missing where the renewer cannot make it -----------------------------------


def test_a_missing_config_dir_in_a_volume_the_renewer_cannot_write_is_said(
    appliance: Appliance,  # noqa: F811
) -> None:
    """The certs volume root's (a bind mount Docker made), certs.config_dir not in it yet: the
    renewer can neither make it nor write its status there. Only the entrypoint's log said so;
    /health said "no renewer status" and nothing of why."""
    volume = appliance.config_dir.parent
    os.chown(volume, 0, 0)
    with Owner(OWNER, OWNER, volume.parent).acting():
        status = certs.renewal_status(appliance.config_dir)  # as the mirror reads it
    said = str(status.get("config_dir_unwritable"))
    assert "does not exist" in said and str(appliance.config_dir) in said, status
    assert str(volume) in said and "uid 0" in said, status
    assert f"chown -R {OWNER}:{OWNER} {volume}" in said, status
    assert certs.public_renewal(status).get("config_dir_unwritable") is True
    assert status_page._certificate(None, status).count("certs.config_dir") == 1


def test_a_missing_config_dir_the_renewer_can_make_is_not_said(
    appliance: Appliance,  # noqa: F811
) -> None:
    """A first start: the renewer makes it (its first status)."""
    with Owner(OWNER, OWNER, appliance.config_dir.parent).acting():
        status = certs.renewal_status(appliance.config_dir)
    assert "config_dir_unwritable" not in status, status


def test_a_missing_config_dir_of_a_root_renewer_is_not_said_to_the_mirrors_user(
    appliance: Appliance,  # noqa: F811
) -> None:
    """A host install: the renewer root's, not started yet (no status), the mirror another
    user's, config_dir under a directory of root's (/etc/letsencrypt, /etc root's in a tree
    of root's). Not the appliance's layout: the mirror's user is not told to chown root's
    future certbot tree (or /etc) to itself, nor /health made degraded."""
    etc = appliance.state / "etc"
    etc.mkdir()
    os.chown(appliance.state, 0, 0)  # the whole tree root's: nothing of the mirror's user
    with Owner(OWNER, OWNER, etc).acting():
        status = certs.renewal_status(etc / "letsencrypt")
    assert "config_dir_unwritable" not in status, status


def test_a_missing_config_dir_is_not_said_to_root(appliance: Appliance) -> None:  # noqa: F811
    os.chown(appliance.config_dir.parent, 0, 0)
    assert "config_dir_unwritable" not in certs.renewal_status(appliance.config_dir)


@pytest.mark.usefixtures("restore_signals")
def test_a_renewer_that_cannot_make_config_dir_holds(
    appliance: Appliance,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    os.chown(appliance.config_dir.parent, 0, 0)
    built = _main_until_built(monkeypatch)
    with Owner(OWNER, OWNER, appliance.state).acting(), signalled(signal.SIGTERM):
        assert scheduler_main.main([]) == 0
    assert built == []
    assert "does not exist" in caplog.text, caplog.text


class Counted(Runs):
    """A run whose work is only counted (certbot, as far as this test goes)."""

    attempts: int = 0

    def attempt(self) -> None:
        self.attempts += 1


def test_a_run_due_while_config_dir_cannot_be_written_is_skipped_not_failed(
    appliance: Appliance,  # noqa: F811
) -> None:
    """config_dir made root's while the renewer runs (a root certbot by hand): each run and
    retry ran certbot, which failed, counted and backed off, the CA asked each time. Now the
    run is skipped, not counted, looked at again in a minute; once it can write, it runs."""
    # APScheduler's triggers look up the local zone once (tzlocal reads /etc/timezone with a
    # codec imported then): done as root, as the test's interpreter is root's alone
    DateTrigger(dt.datetime.now(dt.UTC))
    owner = Owner(OWNER, OWNER, appliance.config_dir.parent)
    with owner.acting():
        renewer = Counted(settings_mod.load([]))
        scheduler = scheduler_main.build(renewer)  # not started: its jobs are called here
        job = scheduler.get_job(scheduler_main.RENEW_JOB).func
        with owner.invoker():  # root, as the operator
            appliance.config_dir.rename(appliance.config_dir.with_name("letsencrypt.old"))
            appliance.config_dir.mkdir()  # root's now
        job()
        assert (renewer.attempts, renewer.failures) == (0, 0)
        retry = scheduler.get_job(scheduler_main.RETRY_JOB)
        assert retry is not None, "not looked at again"
        ahead = retry.trigger.run_date - dt.datetime.now(dt.UTC)
        assert dt.timedelta(0) < ahead <= dt.timedelta(seconds=scheduler_main.HOLD_RECHECK)
        with owner.invoker():  # root, as the operator
            os.chown(appliance.config_dir, OWNER, OWNER)  # handed back
        job()
        assert (renewer.attempts, renewer.failures) == (1, 0)
