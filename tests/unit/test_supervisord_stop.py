"""The appliance's stop fits in Docker's grace period (scripts/supervisord.conf, its header).

On SIGTERM supervisord stops one process group at a time, the highest ``priority`` first (ties:
the name, last first), and waits for each up to its ``stopwaitsecs`` before SIGKILL and the
next. Docker kills the whole container when its grace period is up: a mirror still draining
downloads, or a renewal still running, would be cut with it. The conf is read here with
supervisor's own parser and ordered as supervisord orders it, and the worst case is added up
against the grace period that compose.yaml, compose.host.yaml and the docs give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from supervisor.options import (  # type: ignore[import-untyped]
    ServerOptions,
    UnhosedConfigParser,
)

from docxy.config import load_config
from docxy.http.server import hypercorn_config
from tests.scriptbox import REPO

CONF = REPO / "scripts" / "supervisord.conf"
#: Per program, what supervisord may take beyond stopwaitsecs to see it gone: its main loop
#: polls with a 1 s timeout (measured: a killed listener reported stopped 1.0 s after SIGKILL).
REAP = 1
#: What the worst case must leave of the grace period: Docker's own stop, supervisord's exit.
MARGIN = 4
#: The mirror after its downloads' drain (hypercorn's graceful_timeout): the app's shutdown
#: (closing its upstream clients) and the interpreter's exit. 0.4 s measured with a request in
#: flight.
MIRROR_CLOSE = 2


@dataclass(frozen=True)
class Stop:
    name: str
    wait: int  # stopwaitsecs


def stop_order(conf: Path = CONF) -> list[Stop]:
    """The programs and listeners in the order supervisord stops them.

    supervisord keeps its groups as supervisor's config sorts them (priority, then name) and
    stops the last first (``Supervisor.ordered_stop_groups_phase_1``)."""
    parser = UnhosedConfigParser()
    parser.expansions = {
        "ENV_DOCXY_RUN_DIR": "/run/docxy",
        "ENV_DOCXY_SCRIPTS_DIR": "/usr/local/lib/docxy",
        "ENV_DOCXY_SUPERVISOR_RENEWER": "true",
        "here": str(conf.parent),
    }
    parser.read_string(conf.read_text())
    groups = ServerOptions().process_groups_from_parser(parser)
    stops = []
    for group in reversed(groups):
        (process,) = group.process_configs
        stops.append(Stop(group.name, int(process.stopwaitsecs)))
    return stops


def worst_stop(stops: list[Stop]) -> int:
    return sum(stop.wait + REAP for stop in stops)


#: Where Docker's grace period is given (compose) or the user is told to give it (the rest).
GRACE = {
    "compose.yaml": r"^\s*stop_grace_period:\s*(\d+)s\s*$",
    "compose.host.yaml": r"^\s*stop_grace_period:\s*(\d+)s\s*$",
    "Dockerfile": r"--stop-timeout\s+(\d+)",
    "README.md": r"--stop-timeout\s+(\d+)",
    "scripts/supervisord.conf": r"--stop-timeout\s+(\d+)",
    "tests/e2e/test_image_e2e.py": r'^STOP_GRACE = "(\d+)"',
}


def grace_periods() -> dict[str, set[int]]:
    """Each place that gives Docker's grace period, and the values it gives."""
    found = {}
    for name, pattern in GRACE.items():
        text = (REPO / name).read_text().replace("\n;", " ")  # the conf's comment lines
        found[name] = {int(seconds) for seconds in re.findall(pattern, text, re.M)}
    return found


def test_the_stop_order_is_the_renewer_the_mirror_then_the_listeners() -> None:
    """The renewer first (a renewal in progress needs the mirror's webroot until it ends), the
    listeners last; set with ``priority``, not left to the names' order."""
    order = [stop.name for stop in stop_order()]
    assert order[:2] == ["scheduler", "docxy"], order
    assert sorted(order[2:]) == ["fatal", "watchdog"], order


def test_the_worst_stop_fits_in_the_grace_period_with_a_margin() -> None:
    periods = grace_periods()
    assert all(periods.values()), f"a grace period not found: {periods}"
    values = set().union(*periods.values())
    assert len(values) == 1, f"the grace periods disagree: {periods}"
    (grace,) = values
    worst = worst_stop(stop_order())
    assert worst + MARGIN <= grace, (
        f"supervisord may take {worst} s to stop everything (stopwaitsecs, one program after "
        f"another): Docker kills the container after {grace} s"
    )


def test_the_docs_state_the_worst_stop_that_the_conf_adds_up_to() -> None:
    """Where the numbers are explained, the worst case said is the one they add up to."""
    worst = worst_stop(stop_order())
    for name in ("scripts/supervisord.conf", "compose.yaml", "Dockerfile", "README.md"):
        text = " ".join((REPO / name).read_text().replace("#", " ").replace(";", " ").split())
        assert f"{worst} s at worst" in text, name


def test_the_mirror_drains_downloads_within_its_stopwaitsecs() -> None:
    """The mirror's drain on SIGTERM (hypercorn's graceful_timeout) and its close come before
    supervisord's SIGKILL."""
    drain = hypercorn_config(load_config({}, None, {}), None).graceful_timeout
    (mirror,) = [stop for stop in stop_order() if stop.name == "docxy"]
    assert drain >= 5, drain  # downloads get some time: a stop is not meant to cut them at once
    assert drain + MIRROR_CLOSE <= mirror.wait, (drain, mirror.wait)


def test_raising_one_stopwaitsecs_alone_fails_the_budget(tmp_path: Path) -> None:
    """The sum above sees each program's number (this test's own check that it can fail)."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.read_text().replace("stopwaitsecs=5\n", "stopwaitsecs=15\n", 1))
    (grace,) = grace_periods()["compose.yaml"]
    assert worst_stop(stop_order(conf)) + MARGIN > grace
