"""Review of what the public ``/health`` tells a stranger: in ``open`` mode with no
``access.allow`` (a public mirror's default) it is served to anyone, and it showed
``tls.cert_path``, the reload error (which names the files) and, under ``renewal``, certbot's
error, the refused settings, the set-aside lineage's new place and the renewer status file's
path. The public view keeps the status, the certificate's validity and why the mirror is
``degraded`` (booleans, times, counts); the admin listener's ``/status.json`` keeps the rest.

No listener here: the app is driven in process (``tests.unit.test_observe_routes.stack``), its
upstream a mock transport.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import pytest

from docxy.http.health import health_report
from docxy.http.server import register_health
from docxy.http.state import MirrorState, mirror_state
from docxy.tls import context
from docxy.tls.context import CertError, ReloadableTLS
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_observe_routes import stack
from tests.unit.test_tls_expiry import served_pair

DOMAIN = "mirror.test"


def broken_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReloadableTLS:
    """A served pair five days from its end (``expires_soon``) whose files now hold a key
    that does not load, refused for longer than the grace: its error names the key file."""
    tls = served_pair(tmp_path, issued_days_ago=85, days_left=5)
    tls.key_path.write_text("not a key\n")
    with pytest.raises(CertError):
        tls.reload()
    monkeypatch.setattr(context, "RELOAD_GRACE", dt.timedelta(0))
    assert str(tmp_path) in str(tls.status()["last_error"])  # the error names the file
    return tls


def renewer_status(config_dir: Path) -> Path:
    """A renewer's status file whose texts name the server's files, as they do: certbot's
    error, a refused setting, a lineage set aside, the certificate described."""
    config_dir.mkdir(parents=True, exist_ok=True)
    cert = config_dir / "live" / DOMAIN / "fullchain.pem"
    status = {
        "last_run": "2026-12-01T10:00:00.123456+00:00",
        "last_success": None,
        "last_error": f"certbot failed: cannot open {config_dir}/renewal/{DOMAIN}.conf",
        "failures": 3,
        "failing_since": "2026-11-30T10:00:00+00:00",
        "next_run": "2026-12-01T12:00:00+00:00",
        "reload_pending": False,
        "certificate": {"cert_path": str(cert), "error": f"cannot read {cert}: ENOENT"},
        "set_aside": {
            "at": "2026-11-29T10:00:00+00:00",
            "reason": f"1 parse failure in {config_dir}/renewal/{DOMAIN}.conf",
            "moved_to": str(config_dir / "orphaned" / DOMAIN),
        },
        "interrupted": {"at": "2026-11-28T10:00:00+00:00", "signal": "SIGTERM"},
        "refused": f"scheduler.hour: bad value in {config_dir}/docxy.toml",
    }
    (config_dir / "status.json").write_text(json.dumps(status))
    return config_dir


def with_parts(state: MirrorState, tmp_path: Path, tls: ReloadableTLS) -> Path:
    """``state`` with its ``tls`` and ``renewal`` parts registered as ``docxy serve`` does."""
    config_dir = renewer_status(tmp_path / "letsencrypt")
    certs = replace(state.config.certs, domain=DOMAIN, config_dir=config_dir)
    config = replace(state.config, certs=certs)
    register_health(state, config, tls)
    return config_dir


def assert_no_paths(report: object, *paths: Path) -> None:
    text = json.dumps(report)
    for path in paths:
        assert str(path) not in text, (str(path), report)


def test_the_public_report_names_no_server_file_but_says_why_it_is_degraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state(tmp_path / "cache")
    tls = broken_reload(tmp_path / "tls", monkeypatch)
    config_dir = with_parts(state, tmp_path, tls)
    public = health_report(state, public=True)
    assert_no_paths(public, tmp_path)
    assert "certbot" not in json.dumps(public)  # certbot's words stay with the operator
    assert public["status"] == "degraded"
    shown = public["tls"]
    assert isinstance(shown, dict)
    # why, without the words: expiring, the files' pair refused (since when), the validity
    assert shown["expires_soon"] is True and shown["reload_refused"] is True
    assert shown["clients_refuse"] is False
    assert shown["reload_failing_since"] is not None and shown["not_after"] is not None
    assert "cert_path" not in shown and "last_error" not in shown and "warning" not in shown
    renewal = public["renewal"]
    assert isinstance(renewal, dict)
    assert renewal["refused"] is True and renewal["failures"] == 3
    assert renewal["failing_since"] == "2026-11-30T10:00:00Z"
    assert renewal["interrupted"] == {"at": "2026-11-28T10:00:00Z", "signal": "SIGTERM"}
    assert renewal["set_aside"] == {"at": "2026-11-29T10:00:00Z"}
    assert renewal["certificate"] == {"unreadable": True}
    assert "last_error" not in renewal
    # the operator's view is whole
    admin = health_report(state)
    assert admin["status"] == "degraded"
    text = json.dumps(admin)
    assert str(tls.cert_path) in text and str(tls.key_path) in text
    assert f"{config_dir}/renewal/{DOMAIN}.conf" in text and "scheduler.hour" in text


def test_a_refused_renewer_alone_degrades_both_views(tmp_path: Path) -> None:
    """The renewer's refusal (its ``refused`` text, a bool in public) is the only trouble."""
    state = make_state(tmp_path / "cache")
    tls = served_pair(tmp_path / "tls", issued_days_ago=1, days_left=89)
    with_parts(state, tmp_path, tls)
    public, admin = health_report(state, public=True), health_report(state)
    assert (public["status"], admin["status"]) == ("degraded", "degraded")
    assert_no_paths(public, tmp_path)
    tls_shown = public["tls"]
    assert isinstance(tls_shown, dict)
    assert (tls_shown["clients_refuse"], tls_shown["reload_refused"]) == (False, False)


def test_no_renewer_status_is_said_without_its_path(tmp_path: Path) -> None:
    state = make_state(tmp_path / "cache")
    tls = served_pair(tmp_path / "tls", issued_days_ago=1, days_left=89)
    config_dir = with_parts(state, tmp_path, tls)
    (config_dir / "status.json").unlink()
    public, admin = health_report(state, public=True), health_report(state)
    assert public["renewal"] == {"error": "no renewer status"}
    assert str(config_dir / "status.json") in json.dumps(admin["renewal"])
    assert public["status"] == admin["status"] == "ok"  # as before: not a reason to degrade


async def test_the_routes_public_health_and_admin_status_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In ``open`` mode with no allow list: ``/health`` to anyone, ``/status.json`` whole."""
    tls = broken_reload(tmp_path / "tls", monkeypatch)
    async with stack(tmp_path) as mirror:
        state = mirror_state(mirror.app)
        assert state.config.access.allow is None or not state.config.access.allow
        config_dir = with_parts(state, tmp_path, tls)
        public = await mirror.get("/health")
        _, admin_body = await mirror.admin_get("/status.json")
    assert public.status == 200
    for path in (tmp_path, config_dir):
        assert str(path).encode() not in public.body
    shown = json.loads(public.body)
    assert shown["status"] == "degraded" and shown["renewal"]["refused"] is True
    assert shown["tls"]["reload_refused"] is True
    admin = json.loads(admin_body)
    assert admin["status"] == "degraded"
    assert admin["tls"]["cert_path"] == str(tls.cert_path)
    assert str(tls.key_path) in admin["tls"]["last_error"]
    assert "scheduler.hour" in admin["renewal"]["refused"]
