"""The README's metrics table against what a live ``/metrics`` exports.

A mirror with every part that adds metrics (the cache, the shared tier, a TLS certificate and
the renewer's status) is scraped through the admin app; every ``docxy_*`` family it exports is
in the table with the labels the table gives, and every name the table lists is exported.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from docxy.config import SETTINGS
from docxy.http.server import register_health
from docxy.http.state import mirror_state
from docxy.tls import certs
from docxy.tls.context import ReloadableTLS, self_signed
from tests.unit.test_observe_routes import SHARED, blob_path, stack

README = Path(__file__).resolve().parents[2] / "README.md"


def table() -> dict[str, set[str]]:
    """Each metric name of the table → the label names its row gives."""
    section = README.read_text().split("\n## Metrics and the status page\n")[1]
    section = section.split("\n## ")[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names, labels = [cell.strip() for cell in line.strip().strip("|").split("|")][:2]
        for name in re.findall(r"`([a-z_*]+)`", names):
            rows[name] = set(re.findall(r"`([a-z_]+)`", labels))
    return rows


def exported(text: str) -> dict[str, set[str]]:
    """Each ``docxy_*`` family of a scrape (counters by their ``_total`` name) → its labels."""
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("docxy_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        families[name] = labels
    return families


async def test_the_readme_metrics_table_is_what_metrics_exports(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls", "mirror.test")
    renewer = tmp_path / "letsencrypt"
    renewer.mkdir(mode=0o755)
    status = {"last_run": "2026-11-30T03:00:00Z", "last_success": "2026-11-30T03:00:00Z"}
    (renewer / certs.STATUS_FILE).write_text(json.dumps({**status, "failures": 0}))
    async with stack(tmp_path, settings=SHARED) as mirror:
        providers = mirror_state(mirror.app).extras.setdefault("health", {})
        providers["tls"] = ReloadableTLS(cert, key).status  # as docxy.http.server.run does
        providers["renewal"] = lambda: certs.renewal_status(renewer)
        assert (await mirror.get("/v2/library/hello/manifests/latest")).status == 200
        assert (await mirror.get(blob_path())).status == 200
        code, text = await mirror.admin_get("/metrics")
    assert code == 200
    documented, found = table(), exported(text)
    created = sorted(name for name in found if name.endswith("_created"))
    assert created == [], "prometheus-client's creation-time series double what Prometheus stores"
    assert "docxy_shared_up" in found and "docxy_tls_cert_expiry_timestamp_seconds" in found
    assert sorted(set(found) - set(documented)) == [], "exported, not in the README's table"
    listed = {name for name in documented if name.startswith("docxy_")}
    assert sorted(listed - set(found)) == [], "in the README's table, not exported"
    wrong = {name: (documented[name], labels) for name, labels in found.items()}
    assert {name: pair for name, pair in wrong.items() if pair[0] != pair[1]} == {}


def keys_of(value: object) -> set[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


async def test_the_keys_the_readme_health_section_names_are_in_the_report(
    tmp_path: Path,
) -> None:
    """Each field the Health section names (``fills_in_flight``, ``uploads_dropped``, ...) is
    in the admin listener's ``/status.json``, the whole report, of a mirror with the cache and
    the shared tier on, and TLS with a renewer (``tls``, ``renewal``), or in the public
    ``/health`` (its own: ``unreadable``), which has ``status`` and ``version`` and no path of
    the server's. So is each dotted one the README names anywhere (``renewal.refused``,
    ``tls.warning``), a renewer refusing its settings included."""
    section = README.read_text().split("\n## Health\n")[1].split("\n## ")[0]
    named = set(re.findall(r"`([a-z_]+)`", section)) - {"ok", "degraded", "null"}
    named = {name for name in named if not name.startswith("docxy_")}  # metrics, not keys
    cert, key = self_signed(tmp_path / "tls", "mirror.test")
    renewer = tmp_path / "letsencrypt"
    renewer.mkdir(mode=0o755)
    status = {
        "last_run": "2026-11-30T03:00:00Z",
        "next_run": "2026-12-01T03:00:00Z",
        # a renewer holding on a bad [scheduler] setting, after a --once stopped by a signal
        "refused": "scheduler.interval: not a duration",
        "interrupted": {"at": "2026-11-30T02:00:00Z", "signal": "SIGTERM"},
        "failing_since": None,
        # written by a renewer (uid 4242) that cannot write certs.config_dir since (the test's:
        # 0755, not its): renewal.config_dir_unwritable (docxy.tls.certs.stranded_config_dir)
        "uid": 4242,
        "gids": [4242],
        # a lineage set aside earlier; the served files unreadable to the renewer
        "set_aside": {"at": "2026-11-29T02:00:00Z", "reason": "parse", "moved_to": str(renewer)},
        "certificate": {"cert_path": str(cert), "error": f"cannot read {cert}"},
    }
    (renewer / certs.STATUS_FILE).write_text(json.dumps({**status, "failures": 0}))
    async with stack(tmp_path, settings=SHARED) as mirror:
        state = mirror_state(mirror.app)
        # as docxy.http.server.run does, for a mirror with certs.domain and its paths
        config = replace(
            state.config,
            certs=replace(state.config.certs, domain="mirror.test", config_dir=renewer),
        )
        register_health(state, config, ReloadableTLS(cert, key, domain="mirror.test"))
        body = (await mirror.get("/health")).body
        code, text = await mirror.admin_get("/status.json")
    public = json.loads(body)
    assert code == 200 and {"status", "version"} <= set(public)
    assert str(tmp_path).encode() not in body
    assert "fill_bytes_in_flight" in named and "uploads_dropped" in named
    report = json.loads(text)
    assert sorted(named - keys_of(report) - keys_of(public)) == []
    paths = report_paths({part for part, value in report.items() if isinstance(value, dict)})
    assert {"renewal.refused", "tls.warning", "tls.expires_soon"} <= paths
    assert sorted(path for path in paths if not resolves(report, path)) == []


def report_paths(parts: set[str]) -> set[str]:
    """The dotted names anywhere in the README (``renewal.refused``, ``tls.warning``) that
    start with a part of the report (not ``status.json``) and are no setting
    (``tls.cert_path``, ``cache.dir``)."""
    found = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", README.read_text()))
    paths = set()
    for name in found:
        section, _, key = name.partition(".")
        if section in parts and key not in SETTINGS.get(section, {}):
            paths.add(name)
    return paths


def resolves(report: object, path: str) -> bool:
    for key in path.split("."):
        if not isinstance(report, dict) or key not in report:
            return False
        report = report[key]
    return True
