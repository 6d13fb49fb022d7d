"""pytest's side of `lab.Unavailable`: a part this machine cannot run skips the test, or fails it
when DOCXY_REQUIRE_E2E=1 (CI) demands every end-to-end test.

Tests call `need_binary(name)` (and `need_root`, `need_static_busybox`) before using a part;
an `Unavailable` raised deeper, by a lab part inside a fixture or a test, is converted the same
way by the hooks in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from lab import Unavailable, need
from lab.bed.images import BUSYBOX

T = TypeVar("T")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with `reason`; fail instead when DOCXY_REQUIRE_E2E=1."""
    if os.environ.get("DOCXY_REQUIRE_E2E") == "1":
        pytest.fail(f"{reason} (DOCXY_REQUIRE_E2E=1)")
    pytest.skip(reason)


def _needed(check: Callable[[], T]) -> T:
    try:
        return check()
    except Unavailable as exc:
        skip_or_fail(str(exc))


def need_binary(name: str) -> str:
    """Path of `name` on PATH; skip the test without it (fail when DOCXY_REQUIRE_E2E=1)."""
    return _needed(lambda: need.binary(name))


DOCKER = ("dockerd", "docker", "containerd", "runc")
"""What a private dockerd (lab.clients.dockerd) runs on."""
CONTAINERD = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
"""What a private containerd pulling and running with ctr (lab.clients.containerd) runs on."""


def need_binaries(*names: str) -> None:
    """Skip the test unless every one of `names` is on PATH (fail when DOCXY_REQUIRE_E2E=1)."""
    for name in names:
        need_binary(name)


def need_root(reason: str) -> None:
    """Skip the test unless it runs as root (fail when DOCXY_REQUIRE_E2E=1)."""
    _needed(lambda: need.root(reason))


def need_static_busybox() -> Path:
    return _needed(lambda: need.static_busybox(BUSYBOX))
