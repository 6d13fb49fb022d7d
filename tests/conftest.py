"""Shared fixtures: the Docker-Hub-like test bed and the mirror as a child process.

    bed           session-scoped lab.bed.Bed (token server, registry, front, CDN, images);
                  reset before every test that uses it (servers up, no faults, empty logs)
    start_mirror  factory: start_mirror(*extra_args, env=None) -> lab.mirror.Mirror
    mirror        start_mirror() with defaults
    mirror_client httpx.Client(base_url=mirror.url), no redirects followed

A failing test gets the logs of the mirrors it started appended to its report. A lab part this
machine cannot run (`lab.Unavailable`, raised in a fixture or a test) skips the test, or fails
it under DOCXY_REQUIRE_E2E=1 (tests/unavailable.py).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from lab import Unavailable
from lab.bed import Bed, start_bed
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror, launch_mirror, stop_mirror
from tests.unavailable import skip_or_fail

# Proxy settings of the machine running the tests: every request a test makes goes to loopback,
# and a test about proxies sets its own. Left in place, one would send the tests' own clients
# (httpx, curl, skopeo and the mirror they start) to a proxy that cannot reach 127.0.0.1.
PROXY_VARIABLES = tuple(
    case(name)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for case in (str.lower, str.upper)
)


def pytest_configure(config: pytest.Config) -> None:
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)


# Where a test keeps the mirrors it used, so a failing test's report can show their logs.
MIRRORS_KEY = pytest.StashKey[list[Mirror]]()


class StartMirror(Protocol):
    def __call__(self, *extra_args: str, env: Mapping[str, str] | None = None) -> Mirror: ...


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with start_bed(tmp_path_factory.mktemp("bed")) as started:
        yield started


@pytest.fixture(autouse=True)
def _reset_bed(request: pytest.FixtureRequest) -> None:
    """Every test that uses the bed starts from a healthy, quiet bed."""
    if "bed" in request.fixturenames:
        bed: Bed = request.getfixturevalue("bed")
        bed.reset()


@pytest.fixture
def start_mirror(bed: Bed, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartMirror]:
    started: list[Mirror] = []
    reported = request.node.stash.setdefault(MIRRORS_KEY, [])

    def start(*extra_args: str, env: Mapping[str, str] | None = None) -> Mirror:
        workdir = tmp_path / f"mirror{len(started)}"
        mirror = launch_mirror(bed.upstream_url, workdir, extra_args, env)
        started.append(mirror)
        reported.append(mirror)
        return mirror

    try:
        yield start
    finally:
        for mirror in started:
            stop_mirror(mirror)


@pytest.fixture
def mirror(start_mirror: StartMirror) -> Mirror:
    return start_mirror()


@pytest.fixture
def mirror_client(mirror: Mirror) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mirror.url, timeout=30, follow_redirects=False) as client:
        yield client


@pytest.fixture
def clean_docxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DOCXY_* setting from the machine running the tests leaks into a test.

    ``DOCXY_REQUIRE_E2E`` stays: it is the test run's own switch, not a mirror setting.
    """
    for name in list(os.environ):
        if name.startswith("DOCXY_") and name != "DOCXY_REQUIRE_E2E":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def egress() -> Iterator[EgressGuard]:
    """A refusing proxy for every client daemon: records any attempt to leave 127.0.0.1."""
    with EgressGuard() as guard:
        yield guard


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    try:
        yield
    except Unavailable as exc:
        skip_or_fail(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        yield
    except Unavailable as exc:
        skip_or_fail(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        for mirror in item.stash.get(MIRRORS_KEY, []):
            report.sections.append((f"mirror log (port {mirror.port})", mirror.log_text()))
    return report
