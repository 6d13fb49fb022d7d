"""Review of commits 9e3c523 (a held renewer takes its mended settings up; a refusal without
``certs.domain`` on /health) and abe211b (root's leftovers named with the fix): a refusal left
in the status file by a renewer with a domain, shown for ever by a mirror without one; the
words ``docxy serve`` logs of a refused renewer setting; a renewer never held that SIGHUP
ended; a held renewer that kept an old reason when its settings went bad another way; a
``chown -R`` of certs.config_dir for a path elsewhere.

Nothing here listens: no address, no port (this review's range was 127.0.52.1-9:10750-10799).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from docxy.cli.owner import Owner
from docxy.config import load_config, renewer_refuses
from docxy.http.health import health_report
from docxy.tls.files import write_pair
from scheduler import main as scheduler_main
from scheduler import settings as settings_mod
from scheduler.runs import Runs, owners_hint
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_review_renewer import DOMAIN
from tests.unit.test_review_renewer5 import _config, _refused
from tests.unit.test_review_renewer5 import terminate_after as terminate_after  # noqa: F401
from tests.unit.test_review_rootcerts import OWNER, Appliance
from tests.unit.test_review_rootcerts import appliance as appliance  # noqa: F401  (fixture)
from tests.unit.test_scheduler import HANG, fake_certbot_on_path, issued_lineage, poll
from tests.unit.test_scheduler import env as env  # noqa: F401  (fixture)

# --- 1. a refusal written with a domain, read by a mirror without one ---------------------------


def _held_status(config: Path, environ: dict[str, str]) -> settings_mod.Settings:
    """The status a renewer held on a bad ``scheduler.interval`` writes (as ``hold`` does)."""
    held = settings_mod.held(["--config", str(config)], environ)
    assert held is not None and held.halted is not None
    runs = Runs(held)
    runs.restore()
    runs.write_status(None)
    assert _refused(held.status_file)
    return held


def _mirrors_health(tmp_path: Path, config_dir: Path) -> dict[str, object]:
    """/health of a mirror with certs.config_dir and no certs.domain (plain HTTP)."""
    from docxy.http.server import renewal_provider

    config = load_config({"certs.config_dir": str(config_dir)}, environ={})
    assert config.certs.domain is None
    provider = renewal_provider(config)
    assert provider is not None
    state = make_state(tmp_path / "cache")
    state.extras["health"] = {"renewal": provider}
    return health_report(state)


def test_a_refusal_written_with_a_domain_is_not_shown_by_a_mirror_without_one(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """The appliance with DOCXY_DOMAIN and a bad [scheduler] setting: the held renewer wrote
    ``refused``. DOCXY_DOMAIN removed (plain HTTP behind a CDN), the entrypoint starts no
    renewer at all, nothing drops the refusal, and the mirror without a domain showed /health
    degraded with it for ever. The file now says which domain it was written for: one written
    with a domain is not shown without one; one written without a domain still is."""
    config_dir = Path(env["DOCXY_CERTS_CONFIG_DIR"])
    config = _config(tmp_path / "docxy.toml", "soon")
    _held_status(config, dict(env))
    assert json.loads((config_dir / "status.json").read_text()).get("domain") == DOMAIN
    report = _mirrors_health(tmp_path / "one", config_dir)
    assert "renewal" not in report, report
    assert report["status"] == "ok", report

    without = {key: value for key, value in env.items() if key != "DOCXY_CERTS_DOMAIN"}
    _held_status(config, without)
    report = _mirrors_health(tmp_path / "two", config_dir)
    assert report["status"] == "degraded", report
    assert "scheduler.interval" in str(report["renewal"]), report


# --- 2. what docxy serve says of a refused renewer setting --------------------------------------


def test_what_serve_says_of_a_refused_renewer_setting_is_true() -> None:
    """Logged at every ``docxy serve`` start and printed by --show-config: "until it is mended
    and the renewer restarted (shown on /health)". No restart is needed (read again every
    minute and on SIGHUP), and the public /health shows only ``refused: true``; the reason
    is on the admin /status.json."""
    held = renewer_refuses("scheduler.interval")
    assert "restarted" not in held, held
    assert "SIGHUP" in held and "minute" in held, held
    assert "/status.json" in held, held
    email = renewer_refuses("certs.email")
    assert "/status.json" in email, email
    assert "shown on /health" not in email + held


# --- 3. SIGHUP to a renewer never held ----------------------------------------------------------


def _started(proc_env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scheduler", *args],
            env=proc_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _sighup_then_sigterm(proc: subprocess.Popen[bytes], log: Path, ready: str) -> None:
    try:
        poll(lambda: proc.poll() is not None or ready in log.read_text())
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGHUP)
        poll(lambda: proc.poll() is not None or "SIGHUP" in log.read_text(), timeout=30)
        assert proc.poll() is None, f"SIGHUP ended the renewer: {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_sighup_does_not_end_a_renewer_that_is_not_held(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """The README tells the operator to send SIGHUP after mending a setting; a renewer that
    was never held died of it (the default action), and under systemd's Restart=on-failure
    a SIGHUP death counts as clean: the renewer stayed down. Now it logs it and goes on."""
    issued_lineage(Path(env["DOCXY_CERTS_CONFIG_DIR"]) / "live" / DOMAIN)
    calls = tmp_path / "calls"
    proc_env = fake_certbot_on_path(tmp_path, f'echo "$1" >> {calls}\n')
    config = _config(tmp_path / "docxy.toml", "1h")
    log = tmp_path / "scheduler.log"
    proc = _started(proc_env, log, "--config", str(config))
    _sighup_then_sigterm(proc, log, "renewing certificates at start")
    assert "nothing held" in log.read_text(), log.read_text()


def test_sighup_does_not_end_an_idle_renewer(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    """The same without certs.domain (the renewer idles, waiting for SIGTERM)."""
    proc_env = fake_certbot_on_path(tmp_path, "exit 1\n")
    del proc_env["DOCXY_CERTS_DOMAIN"]
    log = tmp_path / "scheduler.log"
    proc = _started(proc_env, log)
    _sighup_then_sigterm(proc, log, "certbot is not run")
    assert "nothing held" in log.read_text(), log.read_text()


# --- 4. a held renewer whose settings go bad another way ----------------------------------------


@pytest.mark.usefixtures("terminate_after")
def test_a_held_renewer_says_the_new_reason_when_the_mirror_refuses_it_too(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held on a bad ``scheduler.interval``, the config file then edited into one the mirror
    refuses too (a mistyped section): the held renewer went on holding with the old reason in
    its status file (/status.json, ``docxy certs status``), where a start with the same file
    exits 2. It still holds (exiting, supervisord would give it up after five quick exits and
    take the appliance, the serving mirror too, down, then the entrypoint's check would stop
    every restart of the container), but says the new reason."""
    monkeypatch.setattr(scheduler_main, "HOLD_RECHECK", 0.1)
    config = _config(tmp_path / "docxy.toml", "soon")
    flags = ["--config", str(config)]
    held = settings_mod.held(flags)
    assert held is not None and held.halted is not None
    status_file = held.status_file
    seen: list[object] = []

    def edit() -> None:
        poll(lambda: _refused(status_file))
        config.write_text('[schedulr]\ninterval = "1h"\n')
        assert settings_mod.held(flags) is None  # the mirror refuses it too
        try:
            poll(lambda: "schedulr" in str(_refused(status_file)), timeout=10)
        except AssertionError:
            pass
        seen.append(_refused(status_file))
        _config(config, "2h")

    editor = threading.Thread(target=edit, daemon=True)
    editor.start()
    resumed = scheduler_main.hold(held, flags)
    editor.join(timeout=HANG)
    assert isinstance(resumed, settings_mod.Settings), resumed  # still held, then mended
    assert resumed.interval == 7200
    assert seen and "schedulr" in str(seen[0]), seen


# --- 5. the chown named for a path not the renewer's --------------------------------------------


def test_a_served_pair_of_roots_is_named_in_the_chown_not_the_config_dir(
    appliance: Appliance,  # noqa: F811
) -> None:
    """The served pair root's (an older root run), certbot's directory the renewer's own: the
    hint said `chown -R UID:GID <certs.config_dir>`, which mends nothing. Now it names the
    served pair's files."""
    app = appliance
    for directory in (app.config_dir, app.cert.parent):
        directory.mkdir(parents=True)
        os.chown(directory, OWNER, OWNER)
    write_pair(app.cert, app.key, b"cert\n", b"key\n")  # as root: root's files
    settings = settings_mod.load([])
    with Owner(OWNER, OWNER, app.config_dir).acting():
        hint = owners_hint(settings, "cannot write: Permission denied")
    assert str(app.cert) in hint, hint
    chown = hint.split("chown", 1)[1]
    assert str(app.config_dir) not in chown, hint
    assert str(app.cert) in chown and str(app.key) in chown, hint
